"""Warm workers: processes kept between an experiment's steps, and models kept in a worker."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from cerebro import CerebroError, Experiment
from cerebro.engine.messages import HopOutcome, HopTask, TaskKind, UserFailure
from cerebro.model_cache import ModelCache, default_budget
from cerebro.worker import run_hop, setup_worker
from toy import ToyETL, ToySpec, make_task, worker_pids, write_toy_csvs

GRID = {"lr": [0.05, 0.01], "batch_size": [16, 32]}
HP = {"lr": 0.05, "batch_size": 16}


def _task(kind: TaskKind = "train", **fields: Any) -> HopTask:
    """A hop of model m000 (``HP``, init seed 7) on these workers."""
    return make_task(HP, kind, **({"model_id": "m000", "init_seed": 7} | fields))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("warm")
    params = write_toy_csvs(root / "csv")
    params["output_dir"] = str(root / "etl")
    with Experiment(params, workers=2, verbose=False) as e:
        e.run_etl(ToyETL(), seed=1)
    return dict(params, etl_dir=str(e.data_dir))


def _hop_pids(exp: Experiment) -> set[int]:
    con = sqlite3.connect(exp.catalog_path)
    try:
        return {r[0] for r in con.execute("SELECT pid FROM hops WHERE status='done'")}
    finally:
        con.close()


# --- the pool: one set of processes serves every step ---------------------------------------


def test_etl_and_every_fit_run_on_the_same_worker_processes(
    data: dict[str, str], tmp_path: Path
) -> None:
    params = dict(data, output_dir=str(tmp_path / "run"))
    del params["etl_dir"]
    before = set(worker_pids())
    exp = Experiment(params, workers=2, verbose=False)
    exp.run_etl(ToyETL(), seed=1)
    pool = set(worker_pids()) - before
    assert len(pool) == 2  # started by run_etl and kept
    first = exp.run_fit(ToySpec(), GRID, num_epochs=2)
    assert _hop_pids(exp) == pool
    second = exp.run_fit(ToySpec(), {"lr": [0.1], "batch_size": [8]}, 1, overwrite=True)
    assert _hop_pids(exp) == pool
    assert set(exp.run_test(ToySpec(), "best")) == {"test_loss", "test_acc"}
    assert set(worker_pids()) - before == pool  # no process was started after the ETL
    assert set(first.table["status"]) == set(second.table["status"]) == {"done"}
    exp.close()
    assert not set(worker_pids()) & pool
    with pytest.raises(CerebroError, match="closed"):
        exp.run_fit(ToySpec(), GRID, num_epochs=2)


def test_with_block_and_start_leave_no_process_behind(
    data: dict[str, str], tmp_path: Path
) -> None:
    before = set(worker_pids())
    with Experiment(dict(data, output_dir=str(tmp_path / "run")), workers=2, verbose=False) as e:
        e.start()
        warm = set(worker_pids()) - before
        assert len(warm) == 2
        e.run_fit(ToySpec(), GRID, num_epochs=1)
        assert _hop_pids(e) == warm
    assert not set(worker_pids()) & warm
    with pytest.raises(CerebroError, match="was closed"):
        e.start()


def test_a_bad_csv_stops_the_workers_it_launched_and_keeps_warm_ones(
    data: dict[str, str], tmp_path: Path
) -> None:
    """The ETL starts its workers as it reads the CSVs; an error in them (before any worker
    was needed) kills those still importing torch, so it costs no CPU and nothing lingers.
    Workers that served a step stay warm."""
    params = write_toy_csvs(tmp_path / "csv")
    good = Path(params["train_main"]).read_text()
    Path(params["train_main"]).write_text(good.replace("id,", "label,", 1))  # two labels
    before = set(worker_pids())
    exp = Experiment(dict(params, output_dir=str(tmp_path / "run")), workers=2, verbose=False)
    with pytest.raises(ValueError, match="label"):
        exp.run_etl(ToyETL(), seed=1)
    assert set(worker_pids()) == before  # none left: killed cold, not closed warm later
    Path(params["train_main"]).write_text(good)
    exp.run_etl(ToyETL(), seed=1)  # fixed: fresh workers, and they stay
    warm = set(worker_pids()) - before
    assert len(warm) == 2
    Path(params["val_main"]).write_text("")
    with pytest.raises(ValueError):
        exp.run_etl(ToyETL(), seed=1)
    assert set(worker_pids()) - before == warm  # the warm ones were kept
    exp.close()


def test_closed_experiment_refuses_work_even_if_it_never_started_workers(
    data: dict[str, str], tmp_path: Path
) -> None:
    e = Experiment(dict(data, output_dir=str(tmp_path / "run")), workers=2, verbose=False)
    e.close()
    before = set(worker_pids())
    with pytest.raises(CerebroError, match=r"from_dir\("):
        e.run_fit(ToySpec(), GRID, num_epochs=1)
    assert set(worker_pids()) == before


def test_pooled_worker_killed_while_idle_is_replaced(data: dict[str, str], tmp_path: Path) -> None:
    """A worker that dies between two steps (OOM killer, an operator) costs nothing."""
    before = set(worker_pids())
    with Experiment(dict(data, output_dir=str(tmp_path / "run")), workers=2, verbose=False) as e:
        e.start()
        victim = min(set(worker_pids()) - before)
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.2)
        result = e.run_fit(ToySpec(), GRID, num_epochs=2)
        assert set(result.table["status"]) == {"done"}
        pids = _hop_pids(e)
        assert victim not in pids and len(pids) == 2


# --- the model cache: a model that comes back to a worker is not reloaded -------------------


def _worker_state(
    data: dict[str, str], tmp_path: Path, part: int = 0, spec: ToySpec | None = None
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    misc = tmp_path / "misc"
    misc.mkdir(exist_ok=True)
    info = setup_worker(
        state,
        spec or ToySpec(),
        str(Path(data["etl_dir"])),
        {"train": [part], "val": [part]},
        str(misc),
        1,
        "cpu",
    )
    assert not isinstance(info, UserFailure)
    return state


def _hops(state: dict[str, Any], ckpt_dir: Path) -> list[HopOutcome]:
    """Train, validate, train again, validate: one model's hops on one worker."""
    out: list[HopOutcome] = []
    prev = None
    for epoch in range(2):
        ckpt = str(ckpt_dir / f"e{epoch}.pt")
        for task in (
            _task(epoch=epoch, in_ckpt=prev, out_ckpt=ckpt, shuffle_seed=100 + epoch),
            _task("val", epoch=epoch, in_ckpt=ckpt, shuffle_seed=0),
        ):
            r = run_hop(state, task)
            assert isinstance(r, HopOutcome), r
            out.append(r)
        prev = ckpt
    return out


def test_cached_model_gives_bit_identical_results(
    data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = _worker_state(data, tmp_path)
    with_cache = _hops(warm, tmp_path / "a")
    assert warm["models"].hits == 3 and warm["models"].misses == 0  # val, train, val
    monkeypatch.setenv("CEREBRO_MODEL_CACHE_MB", "0")
    cold = _worker_state(data, tmp_path)
    without = _hops(cold, tmp_path / "b")
    assert cold["models"].hits == 0 and len(cold["models"]) == 0
    assert [h.metrics for h in with_cache] == [h.metrics for h in without]  # dropout included
    a = torch.load(tmp_path / "a" / "e1.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "e1.pt", weights_only=False)
    for name, sd in a["components"]["model"].items():
        assert torch.equal(sd, b["components"]["model"][name])
    assert torch.equal(a["rng"], b["rng"])


class CountsInTheDict(ToySpec):
    """Keeps a counter in the components dict: each hop must start without it."""

    def train(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        model_object["calls"] = model_object.get("calls", 0) + 1
        out = super().train(model_object, minibatch, hyperparams, device)
        return dict(out, calls=model_object["calls"])


def test_keys_added_by_the_users_hooks_do_not_survive_the_hop(
    data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = []
    for budget in ("1024", "0"):
        monkeypatch.setenv("CEREBRO_MODEL_CACHE_MB", budget)
        state = _worker_state(data, tmp_path)
        state["spec"] = CountsInTheDict()
        runs.append(_hops(state, tmp_path / budget))
    cached, uncached = runs
    assert [h.metrics for h in cached] == [h.metrics for h in uncached]
    assert cached[2].metrics["calls"][0] == 1.0  # a fresh dict, although the model was kept


def test_cache_misses_when_the_checkpoint_changed(data: dict[str, str], tmp_path: Path) -> None:
    """The model trained on another worker since: its file is newer than what is kept."""
    state = _worker_state(data, tmp_path)
    ckpt = str(tmp_path / "e0.pt")
    assert isinstance(
        run_hop(
            state,
            _task(out_ckpt=ckpt, shuffle_seed=1),
        ),
        HopOutcome,
    )
    other = _worker_state(data, tmp_path)  # a second worker rewrites the same file
    assert isinstance(
        run_hop(
            other,
            _task(out_ckpt=ckpt, init_seed=8),
        ),
        HopOutcome,
    )
    r = run_hop(
        state,
        _task("val", in_ckpt=ckpt, shuffle_seed=0),
    )
    assert isinstance(r, HopOutcome)
    assert state["models"].misses == 1 and state["models"].hits == 0
    again = run_hop(
        other,
        _task("val", in_ckpt=ckpt, init_seed=8, shuffle_seed=0),
    )
    assert isinstance(again, HopOutcome) and r.metrics == again.metrics  # both read the file


class Accumulates(ToySpec):
    """Steps only on some minibatches, so a hop can end with gradients pending; counts its
    builds."""

    builds = 0

    def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
        Accumulates.builds += 1
        return super().create_model_components(hyperparams)

    def train(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        loss, acc = self._step(model_object, minibatch)
        loss.backward()
        if int(minibatch[1].sum()) % 2 == 0:
            model_object["optimizer"].step()
            model_object["optimizer"].zero_grad()
        return {"loss": loss.item(), "acc": acc}


def test_a_model_trained_elsewhere_reloads_into_the_one_held_bit_identically(
    data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers take turns as in MOP; a miss loads the file into the components the
    worker still holds instead of building new ones, and changes nothing."""

    def fit(budget: str) -> tuple[list[Any], dict[str, Any], int, int]:
        monkeypatch.setenv("CEREBRO_MODEL_CACHE_MB", budget)
        Accumulates.builds = 0
        workers = [_worker_state(data, tmp_path, p, Accumulates()) for p in (0, 1)]
        prev, metrics = None, []
        for epoch in range(3):
            for p in (0, 1):
                out = str(tmp_path / budget / f"e{epoch}p{p}.pt")
                s = 10 * epoch + p
                hop = _task(partition=p, epoch=epoch, in_ckpt=prev, out_ckpt=out, shuffle_seed=s)
                metrics.append(run_hop(workers[p], hop))
                prev = out
            for p in (1, 0):
                task = _task("val", partition=p, epoch=epoch, in_ckpt=prev, shuffle_seed=0)
                metrics.append(run_hop(workers[p], task))
        assert all(isinstance(m, HopOutcome) for m in metrics), metrics
        misses = sum(w["models"].misses for w in workers)
        return (
            [m.metrics for m in metrics],
            torch.load(prev, weights_only=False),
            Accumulates.builds,
            misses,
        )

    held, held_ckpt, held_builds, held_misses = fit("1024")
    fresh, fresh_ckpt, fresh_builds, _ = fit("0")
    # one build per worker: the second's first hop is a miss with nothing held, and the
    # other five misses reload into what the worker holds; without the cache all 12 build
    assert held_builds == 2 and held_misses == 6 and fresh_builds == 12
    assert held == fresh  # dropout, momentum and the pending gradients included
    for name, sd in held_ckpt["components"]["model"].items():
        assert torch.equal(sd, fresh_ckpt["components"]["model"][name])
    assert torch.equal(held_ckpt["rng"], fresh_ckpt["rng"])


class FailsWhenArmed(ToySpec):
    """Once armed, fails on its third minibatch: after two steps changed the model."""

    armed = False
    calls = 0

    def train(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        if self.armed:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("boom")
        return super().train(model_object, minibatch, hyperparams, device)


def test_failed_hop_leaves_nothing_in_the_cache(data: dict[str, str], tmp_path: Path) -> None:
    state = _worker_state(data, tmp_path)
    state["spec"] = spec = FailsWhenArmed()
    ckpt = str(tmp_path / "e0.pt")
    assert isinstance(
        run_hop(
            state,
            _task(out_ckpt=ckpt, shuffle_seed=1),
        ),
        HopOutcome,
    )
    assert len(state["models"]) == 1
    spec.armed = True
    failed = run_hop(
        state,
        _task(epoch=1, in_ckpt=ckpt, out_ckpt=str(tmp_path / "e1.pt")),
    )
    assert isinstance(failed, UserFailure) and "boom" in failed.message
    assert len(state["models"]) == 0  # the half-trained components are gone


def test_cache_keeps_within_its_byte_budget(tmp_path: Path) -> None:
    model = torch.nn.Linear(100, 10)  # 1,010 floats = 4,040 bytes
    files = []
    for i in range(3):
        f = tmp_path / f"m{i}.pt"
        f.write_bytes(b"x")
        files.append(str(f))
    cache = ModelCache(budget_bytes=9000)
    for i, f in enumerate(files):
        cache.put(f"m{i}", f, {"model": model}, torch.get_rng_state())
    assert len(cache) == 2 and cache.bytes == 8080  # the oldest went out
    assert cache.take("m0", files[0]) is None
    assert cache.take("m2", files[2]) is not None
    small = ModelCache(budget_bytes=1000)  # a model bigger than the whole budget is not kept
    small.put("m0", files[0], {"model": model}, torch.get_rng_state())
    assert len(small) == 0 and small.bytes == 0


def test_cache_size_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEREBRO_MODEL_CACHE_MB", "2")
    assert default_budget() == 2 * 2**20
    monkeypatch.setenv("CEREBRO_MODEL_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="CEREBRO_MODEL_CACHE_MB must be a number"):
        default_budget()
    monkeypatch.setenv("CEREBRO_MODEL_CACHE_MB", "-5")
    with pytest.raises(ValueError, match="CEREBRO_MODEL_CACHE_MB must be 0 or more"):
        default_budget()


def test_a_hop_that_names_no_thread_count_gets_the_workers_own_again(
    data: dict[str, str], tmp_path: Path
) -> None:
    """A deterministic fit's hops run with threads_per_hop threads; the next fit on the
    same warm worker, without deterministic mode, gets the worker's share back."""
    before = torch.get_num_threads()
    try:
        state: dict[str, Any] = {}
        (tmp_path / "misc").mkdir()
        etl_dir, misc = str(Path(data["etl_dir"])), str(tmp_path / "misc")
        setup_worker(state, ToySpec(), etl_dir, {"train": [0]}, misc, 3, "cpu")
        ckpt = str(tmp_path / "a.pt")
        det = _task(out_ckpt=ckpt, shuffle_seed=1, threads=1, deterministic=True)
        assert isinstance(run_hop(state, det), HopOutcome)
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        plain = _task(epoch=1, in_ckpt=ckpt, out_ckpt=str(tmp_path / "b.pt"))
        assert isinstance(run_hop(state, plain), HopOutcome)
        assert torch.get_num_threads() == 3 and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(False)
