"""Same results at any scale: a deterministic fit gives bit-identical models and metrics on
1, 2 or 3 workers over the same 6 partitions (NOTE [ same bits at any scale ])."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cerebro import Experiment
from toy import ToyETL, WideSpec, computed, hop_rows, kill_driver_after, worker_pids

GRID = {"lr": [0.05, 0.2], "hidden": [16384, 20000], "batch_size": [16]}


@pytest.fixture(scope="module")
def exps(
    tmp_path_factory: pytest.TempPathFactory, toy_csvs: dict[str, str]
) -> Iterator[dict[int, Experiment]]:
    """Warm experiments of 1, 2 and 3 workers on the toy data in 6 partitions (more than
    any of them has workers), each refitting in its own run directory."""
    root = tmp_path_factory.mktemp("same-bits")
    two = Experiment(dict(toy_csvs, output_dir=str(root / "w2")), workers=2, verbose=False)
    two.run_etl(ToyETL(), seed=1, partitions=6)
    data = {"etl_dir": str(two.data_dir)}
    out = {2: two}
    for w in (1, 3):
        out[w] = Experiment(dict(data, output_dir=str(root / f"w{w}")), workers=w, verbose=False)
    try:
        yield out
    finally:
        for e in out.values():
            e.close()


def tensors(run_dir: Path) -> dict[tuple[str, int | None], dict[str, torch.Tensor]]:
    """Every checkpoint the fit kept (each epoch's and each model's last), by (model,
    epoch), as flat ``{component.name: tensor}``."""
    con = sqlite3.connect(run_dir / "catalog.sqlite")
    try:
        paths = {
            (m, e): p for m, e, p in con.execute("SELECT model_id, epoch, path FROM checkpoints")
        }
        paths |= {(m, None): p for m, p in con.execute("SELECT model_id, checkpoint FROM models")}
    finally:
        con.close()
    out = {}
    for key, path in paths.items():
        state = torch.load(path, map_location="cpu", weights_only=False)
        out[key] = {f"{c}.{k}": v for c, sd in state["components"].items() for k, v in _flat(sd)}
    return out


def _flat(sd: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(sd, torch.Tensor):
        return [(prefix, sd)]
    if isinstance(sd, dict):
        return [x for k, v in sd.items() for x in _flat(v, f"{prefix}.{k}")]
    if isinstance(sd, list | tuple):
        return [x for i, v in enumerate(sd) for x in _flat(v, f"{prefix}.{i}")]
    return [(prefix, torch.tensor(float(sd)))] if isinstance(sd, int | float) else []


def _same(a: dict[Any, dict[str, torch.Tensor]], b: dict[Any, dict[str, torch.Tensor]]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys(), key
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)


class SlowWide(WideSpec):
    """WideSpec, each train minibatch 5 ms longer: time to kill a process mid-fit."""

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        time.sleep(0.005)
        return super().train(model_object, minibatch, hyperparams, device)


def _fit(exp: Experiment, spec: Any = None) -> Path:
    """The module's deterministic grid fit, afresh on ``exp``'s workers; its run dir."""
    exp.run_fit(spec or WideSpec(), GRID, overwrite=True, **FIT)
    return exp.output_dir


FIT = {"num_epochs": 2, "seed": 3, "deterministic": True}


@pytest.fixture(scope="module")
def reference(exps: dict[int, Experiment]) -> tuple[Any, dict[Any, dict[str, torch.Tensor]]]:
    """What one worker computes: every hop's and epoch's metrics, every checkpoint."""
    out = _fit(exps[1])
    return computed(out / "catalog.sqlite"), tensors(out)


def test_one_two_and_three_workers_train_the_same_bits(
    exps: dict[int, Experiment], reference: Any
) -> None:
    expected, weights = reference
    assert len(weights) == 4 * 3  # 4 models: 2 epochs' checkpoints and the last
    for workers in (2, 3):
        out = _fit(exps[workers])
        # every hop's per-minibatch metrics, every epoch metric, every tensor
        assert computed(out / "catalog.sqlite") == expected
        _same(weights, tensors(out))


def test_a_killed_worker_changes_no_bit(exps: dict[int, Experiment], reference: Any) -> None:
    catalog = exps[3].catalog_path
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            rows = hop_rows(catalog)
            # this fit's (the catalog holds the last fit's hops until this one starts)
            started = any(r["status"] == "running" for r in rows)
            if started and sum(r["status"] == "done" for r in rows) >= 10:
                # one of this fit's workers (the other experiments' are alive too)
                ours = {r["pid"] for r in rows if r["status"] == "done"} & set(worker_pids())
                if ours:
                    os.kill(min(ours), signal.SIGKILL)
                    killed.append(min(ours))
            time.sleep(0.01)

    t = threading.Thread(target=killer)
    t.start()
    out = _fit(exps[3], SlowWide())
    t.join()
    assert killed
    assert "lost" in {r["status"] for r in hop_rows(catalog)}
    assert computed(out / "catalog.sqlite") == reference[0]
    _same(reference[1], tensors(out))


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from test_same_bits import FIT, GRID, SlowWide
from cerebro import Experiment
Experiment({params!r}, workers=2, verbose=False).run_fit(SlowWide(), GRID, **FIT)
"""


def test_a_killed_driver_resumed_changes_no_bit(
    exps: dict[int, Experiment], reference: Any, tmp_path: Path
) -> None:
    params = {"etl_dir": str(exps[2].data_dir), "output_dir": str(tmp_path / "run")}
    script = DRIVER.format(tests=str(Path(__file__).parent), params=params)
    kill_driver_after(script, tmp_path / "run", hops=20)
    catalog = tmp_path / "run" / "catalog.sqlite"
    Experiment.resume(tmp_path / "run", verbose=False)
    assert computed(catalog) == reference[0]
    _same(reference[1], tensors(tmp_path / "run"))


def test_the_default_partition_count_follows_the_data_not_the_workers(tmp_path: Path) -> None:
    from cerebro.etl import count_lines, default_partitions

    assert [default_partitions(rows, 2) for rows in (240, 20_000, 20_001, 10**8)] == [2, 2, 3, 64]
    assert default_partitions(35_000, 1) == default_partitions(35_000, 4) == 4
    assert default_partitions(35_000, 8) == 8  # each worker needs one
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(2500)))
    assert count_lines(csv) == 2501


def _tpe() -> dict[str, Any]:
    """TPE past its random start-up after 2 trials, in generations of 2."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=4, n_startup_trials=2)
    return {"search": sampler, "num_models": 6, "max_live_models": 2}


def _random_sha() -> dict[str, Any]:
    return {"search": "random", "num_models": 6, "early_stopping": "sha"}


@pytest.mark.parametrize("search", [_tpe, _random_sha], ids=["tpe", "random+sha"])
def test_searches_and_synchronous_halving_keep_the_bits(
    exps: dict[int, Experiment], search: Any
) -> None:
    from cerebro.search import loguniform

    space = {"lr": loguniform(0.01, 0.5), "hidden": [16384], "batch_size": [16]}
    runs = []
    for workers in (1, 3):
        exp = exps[workers]
        result = exp.run_fit(
            WideSpec(), space, num_epochs=4, seed=2, deterministic=True, overwrite=True,
            **search(),
        )  # fmt: skip
        table = result.table[["lr", "status", "epochs"]]
        runs.append((table, computed(exp.catalog_path), tensors(exp.output_dir)))
    (table, done, weights), (other_table, other_done, other_weights) = runs
    assert table.equals(other_table) and done == other_done
    _same(weights, other_weights)


def test_a_deterministic_adaptive_search_asks_in_generations_of_a_fixed_size() -> None:
    from cerebro._settings import DETERMINISTIC_GENERATION, FitSettings
    from cerebro.search import loguniform

    space = {"lr": loguniform(0.01, 0.5), "batch_size": [16]}
    tpe = FitSettings.check(space, 2, search="tpe", num_models=4, deterministic=True)
    assert {tpe.max_live(w) for w in (1, 3, 64)} == {DETERMINISTIC_GENERATION}
    rnd = FitSettings.check(space, 2, search="random", num_models=4, deterministic=True)
    assert rnd.max_live(3) == 6  # random draws ignore results: no generations needed
