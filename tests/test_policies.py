"""The dynamic scheduling policies ``lrf`` and ``random`` through ``run_fit`` and resume.

Under ``lrf`` and ``random`` the order in which a model visits the partitions depends on
which worker happens to be free, so two runs with the same seed need not train the same
models (only ``fixed`` promises bit-identical runs). What must hold for them is that each
model trains exactly once on every partition per epoch, that a killed run resumes without
redoing a completed hop, and that the result is the one an uninterrupted run gives: every
hop the catalog records is what the model, trained without interruption in the order the
catalog shows, gives on that hop. :func:`_check_against_replay` replays each model's hops
in that order in this process and compares every hop's per-minibatch metrics and the final
checkpoints with the run's. And the policy asked for is the one that schedules: the first
hops of a fit, and the first after a resume, are the decisions of a scheduler of that policy.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cerebro import Experiment, FitResult
from cerebro._fit_state import derive_seed
from cerebro.engine.local import threads_per_worker
from cerebro.engine.messages import HopOutcome, HopTask
from cerebro.scheduler import Hop, Scheduler
from cerebro.worker import run_hop, setup_worker
from toy import ToySpec, hop_rows

GRID = {"lr": [0.05, 0.01], "batch_size": [32, 64]}
EPOCHS = 2
SEED = 3
MODELS = [f"m{i:03d}" for i in range(4)]
TOTAL = len(MODELS) * EPOCHS * 2 * 2  # models x epochs x (train, val) x partitions
KILL_AT = 8  # completed hops before the driver is killed

DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from cerebro import Experiment
from test_policies import HaltableSpec, GRID, EPOCHS, SEED
exp = Experiment({params!r}, workers=2, verbose=False)
exp.run_fit(
    HaltableSpec({folder!r}), GRID, num_epochs=EPOCHS, seed=SEED, policy={policy!r},
    overwrite=True,
)
"""


class HaltableSpec(ToySpec):
    """The toy spec, whose ``train`` waits while the file ``folder/halt`` exists: the test
    creates it once the catalog has enough completed hops, so the kill lands mid-hop and
    the fit cannot finish first, however fast the machine is."""

    def __init__(self, folder: str):
        self.halt = os.path.join(folder, "halt")

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        time.sleep(0.002)
        while os.path.exists(self.halt):
            time.sleep(0.01)
        return super().train(model_object, minibatch, hyperparams, device)


@pytest.fixture(scope="module")
def warm(
    tmp_path_factory: pytest.TempPathFactory, toy_data: dict[str, str]
) -> Iterator[tuple[Experiment, str]]:
    """An experiment whose workers stay warm for every fit of the module, on the session's
    toy data (2 partitions); and that data's folder."""
    root = tmp_path_factory.mktemp("policies")
    with Experiment(dict(toy_data, output_dir=str(root / "warm")), workers=2, verbose=False) as e:
        e.start()
        yield e, toy_data["etl_dir"]


def _done_count(catalog: Path, after: float) -> int:
    """Completed hops of the fits created after the time ``after``."""
    db = sqlite3.connect(catalog)
    try:
        sql = (
            "SELECT COUNT(*) FROM hops JOIN fits USING (fit_id) "
            "WHERE hops.status='done' AND fits.created > ?"
        )
        return int(db.execute(sql, (after,)).fetchone()[0])
    finally:
        db.close()


def _fit_created(catalog: Path) -> float:
    db = sqlite3.connect(catalog)
    try:
        return float(db.execute("SELECT MAX(created) FROM fits").fetchone()[0])
    finally:
        db.close()


def _check_exactly_once(rows: list[sqlite3.Row], result: FitResult) -> None:
    """Every model trained and validated exactly once on each partition in every epoch, each
    epoch's train hops before its val hops, and one hop of a model at a time."""
    done = [r for r in rows if r["status"] == "done"]
    count = Counter((r["model_id"], r["kind"], r["partition"], r["epoch"]) for r in done)
    expected = {
        (m, k, p, e)
        for m in MODELS
        for k in ("train", "val")
        for p in (0, 1)
        for e in range(EPOCHS)
    }
    assert set(count) == expected and set(count.values()) == {1}, count
    assert all(r["worker"] == r["partition"] for r in done)  # partitions never move
    for m in MODELS:
        mine = sorted((r for r in done if r["model_id"] == m), key=lambda r: r["start"])
        assert [(r["epoch"], r["kind"]) for r in mine] == [
            (e, k) for e in range(EPOCHS) for k in ("train", "train", "val", "val")
        ]
        assert all(a["end"] <= b["start"] for a, b in zip(mine, mine[1:], strict=False))
    assert set(result.table["status"]) == {"done"}
    assert set(result.table["epochs"]) == {EPOCHS}


def _check_policy_decided(
    rows: list[sqlite3.Row], policy: str, replayed: list[sqlite3.Row]
) -> None:
    """The fit's first hops (after resume: its first new ones) are the first decisions of
    a ``policy`` scheduler seeded with the fit's seed, after the replay of the completed
    hops (``replayed``): the policy asked for is the one that schedules, then and after
    resume. (Each policy decides differently here, ``fixed`` included.)"""
    s = Scheduler(
        MODELS,
        num_epochs=EPOCHS,
        train_owner={0: 0, 1: 1},
        val_owner={0: 0, 1: 1},
        policy=policy,
        seed=SEED,
    )
    for r in replayed:
        s.replay(Hop(r["model_id"], r["epoch"], r["kind"], r["partition"]))
    decided = [(a.worker, a.hop) for a in s.assign() + s.assign_next()]
    started = [
        (r["worker"], Hop(r["model_id"], r["epoch"], r["kind"], r["partition"])) for r in rows
    ]
    assert decided and started[: len(decided)] == decided


def _check_against_replay(
    rows: list[sqlite3.Row], catalog: Path, data_dir: str, scratch: Path
) -> None:
    """Replay every model's hops in the order the catalog records them, one after another
    in this process, and compare each hop's per-minibatch metrics and each model's final
    checkpoint with the run's: the run is what an uninterrupted run in that order gives."""
    done = [r for r in rows if r["status"] == "done"]
    db = sqlite3.connect(catalog)
    try:
        models = {
            m: (json.loads(hp), ck)
            for m, hp, ck in db.execute("SELECT model_id, hyperparams, checkpoint FROM models")
        }
    finally:
        db.close()
    scratch.mkdir()
    state: dict[str, Any] = {}
    threads = torch.get_num_threads()
    try:
        info = setup_worker(
            state,
            ToySpec(),
            data_dir,
            {"train": [0, 1], "val": [0, 1]},
            str(scratch),
            threads_per_worker(2),
            "cpu",
        )
        assert isinstance(info, dict), info
        for index, m in enumerate(MODELS):  # index: the model's rank among the sorted ids
            hp, final_ckpt = models[m]
            ckpt = None
            mine = [r for r in done if r["model_id"] == m]  # hop_id order = start order
            for n, r in enumerate(mine):
                e, p, kind = r["epoch"], r["partition"], r["kind"]
                out = str(scratch / m / f"{n}.pt") if kind == "train" else None
                task = HopTask(
                    model_id=m,
                    hyperparams=hp,
                    kind=kind,
                    partition=p,
                    epoch=e,
                    in_ckpt=ckpt,
                    out_ckpt=out,
                    init_seed=derive_seed(SEED, "init", index),
                    shuffle_seed=derive_seed(SEED, "shuffle", index, e, p),
                )
                outcome = run_hop(state, task)
                assert isinstance(outcome, HopOutcome), outcome
                recorded = json.loads(r["metrics"])
                assert outcome.metrics == recorded["values"], (m, e, kind, p)
                assert outcome.batch_sizes == recorded["sizes"]
                ckpt = out or ckpt
            assert ckpt is not None
            final = torch.load(final_ckpt, weights_only=False)
            mine_final = torch.load(ckpt, weights_only=False)
            for comp in ("model", "optimizer"):
                a, b = final["components"][comp], mine_final["components"][comp]
                assert _flat(a) == _flat(b), (m, comp)
            assert torch.equal(final["rng"], mine_final["rng"])
    finally:
        torch.set_num_threads(threads)


def _flat(state_dict: Any) -> list[Any]:
    """A state dict (nested dicts, lists, tensors) as comparable plain values."""
    if isinstance(state_dict, torch.Tensor):
        return state_dict.tolist()
    if isinstance(state_dict, dict):
        return [(k, _flat(v)) for k, v in sorted(state_dict.items(), key=lambda kv: str(kv[0]))]
    if isinstance(state_dict, list | tuple):
        return [_flat(v) for v in state_dict]
    return state_dict


@pytest.fixture(params=["lrf", "random"])
def policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_dynamic_policy_fit_and_resume(
    policy: str, warm: tuple[Experiment, str], tmp_path: Path
) -> None:
    # -- an uninterrupted fit: every model exactly once on every partition per epoch
    exp, data_dir = warm
    clean = exp.run_fit(
        ToySpec(), GRID, num_epochs=EPOCHS, seed=SEED, policy=policy, overwrite=True
    )
    clean_rows = hop_rows(exp.catalog_path)
    _check_exactly_once(clean_rows, clean)
    assert {r["status"] for r in clean_rows} == {"done"}
    _check_policy_decided(clean_rows, policy, [])
    # the replay in this process reproduces the uninterrupted run (the check used below)
    _check_against_replay(clean_rows, exp.catalog_path, data_dir, tmp_path / "r1")

    # -- a driver (and its workers) killed once KILL_AT hops are in the catalog: another
    # process, in the same run dir (overwrite=True replaces the uninterrupted fit), so that
    # the resume below runs on this experiment's warm workers
    folder = tmp_path / "gate"
    folder.mkdir()
    params = exp.params.as_dict()
    script = DRIVER.format(
        tests=str(Path(__file__).parent), params=params, folder=str(folder), policy=policy
    )
    catalog = exp.catalog_path
    clean_fit = _fit_created(catalog)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.time() + 120
        while _done_count(catalog, clean_fit) < KILL_AT and time.time() < deadline:
            assert proc.poll() is None, "the driver ended before it could be killed"
            time.sleep(0.01)
        (folder / "halt").touch()  # hops in flight now wait inside train
        time.sleep(0.3)  # any hop past its last minibatch gets recorded
        assert proc.poll() is None, "the fit finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-hop
        proc.wait()
    before = hop_rows(catalog)
    assert _fit_created(catalog) > clean_fit  # the driver's fit replaced the clean one
    done_before = {r["hop_id"]: r["metrics"] for r in before if r["status"] == "done"}
    assert KILL_AT <= len(done_before) < TOTAL
    assert any(r["status"] == "running" for r in before)  # killed inside a hop
    _check_policy_decided(before, policy, [])

    # -- resumed with the same policy: no completed hop reruns, every hop once
    (folder / "halt").unlink()
    resumed = exp.run_fit(  # the same call as the killed driver's
        HaltableSpec(str(folder)),
        GRID,
        num_epochs=EPOCHS,
        seed=SEED,
        policy=policy,
        overwrite=True,
    )
    rows = hop_rows(catalog)
    _check_exactly_once(rows, resumed)
    after = {r["hop_id"]: r for r in rows}
    for hop_id, metrics in done_before.items():  # kept as they were, not run again
        assert after[hop_id]["status"] == "done" and after[hop_id]["metrics"] == metrics
    running_before = {r["hop_id"] for r in before if r["status"] == "running"}
    assert {h for h, r in after.items() if r["status"] != "done"} == running_before
    assert all(after[h]["status"] == "lost" for h in running_before)  # cut short by the kill
    assert min(set(after) - {r["hop_id"] for r in before}) > max(r["hop_id"] for r in before)
    old_done = [r for r in before if r["status"] == "done"]
    _check_policy_decided(
        [r for r in rows if r["hop_id"] > before[-1]["hop_id"]], policy, old_done
    )

    # -- and its result is that of an uninterrupted run in the catalog's hop order
    _check_against_replay(rows, catalog, data_dir, tmp_path / "r2")
