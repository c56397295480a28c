"""Real SIGKILLs of worker processes during a fit, and the run-directory lock."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cerebro import CerebroError, Experiment, MinibatchSpec, UserCodeError, WorkerError
from cerebro.engine import HopDone, WorkerLost
from cerebro.engine.local import LocalEngine
from toy import (
    GatedSpec,
    SlowSpec,
    ToySpec,
    computed,
    done_hops,
    hop_task,
    poll_until,
    queue_behind_held,
    wait_for,
    worker_pids,
)

GRID = {"lr": [0.05, 0.01], "batch_size": [16, 32]}


class FillsDisk(ToySpec):
    """While the file ``full`` exists, a worker's disk is full after its first 20 train
    minibatches: it sets itself a file-size limit of 1000 bytes (RLIMIT_FSIZE), so the
    checkpoint of the hop it is running cannot be written. Once ``full`` is gone, its
    next train minibatch lifts the limit again: the space was freed."""

    def __init__(self, full: Path) -> None:
        self.full, self.minibatches = str(full), 0

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        self.minibatches += 1  # in this worker process
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        full = self.minibatches > 20 and os.path.exists(self.full)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000 if full else hard, hard))
        return super().train(model_object, minibatch, hyperparams, device)


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory, toy_data: dict[str, str]
) -> tuple[dict[str, str], Any]:
    """The session's toy data, and the uninterrupted fit that the full-disk test must
    reproduce (what it computed)."""
    root = tmp_path_factory.mktemp("faults")
    with Experiment(dict(toy_data, output_dir=str(root / "ref")), workers=2, verbose=False) as e:
        e.run_fit(FillsDisk(root / "never"), GRID, num_epochs=2)
    return toy_data, computed(e.catalog_path)


@pytest.fixture(scope="module")
def data(prepared: tuple[dict[str, str], Any]) -> dict[str, str]:
    return prepared[0]


def test_killed_worker_is_replaced_and_no_hop_is_lost(
    data: dict[str, str], tmp_path: Path
) -> None:
    exp = Experiment(dict(data, output_dir=str(tmp_path / "run")), workers=2, verbose=False)
    kills: list[tuple[int, float]] = []

    def killer() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and len(kills) < 2:
            if done_hops(exp.catalog_path) >= 8 + 12 * len(kills):
                pids = worker_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    kills.append((pids[0], time.time()))
            time.sleep(0.02)

    t = threading.Thread(target=killer)
    t.start()
    result = exp.run_fit(SlowSpec(0.005), GRID, num_epochs=3)
    t.join()
    assert len(kills) == 2
    con = sqlite3.connect(exp.catalog_path)
    con.row_factory = sqlite3.Row
    rows = con.execute("SELECT * FROM hops ORDER BY hop_id").fetchall()
    con.close()
    key = ("model_id", "kind", "partition", "epoch")
    done = Counter(tuple(r[k] for k in key) for r in rows if r["status"] == "done")
    assert set(done.values()) == {1} and len(done) == 4 * 2 * 2 * 3  # every hop once
    lost = [r for r in rows if r["status"] == "lost"]
    # Each kill loses the hop it hit (a kill between two hops loses nothing at all) and
    # the hop queued behind it, if any, which the loss names as such.
    ran = [r for r in lost if "queued behind" not in r["error"]]
    assert 1 <= len(ran) <= 2 and len(lost) <= 4
    attributed = 0
    for pid, when in kills:
        (slot,) = {r["worker"] for r in rows if r["pid"] == pid}
        # the slot's next hop ran in a new process, after the loss was recorded
        after = [r for r in rows if r["worker"] == slot and r["pid"] and r["start"] > when]
        first = min(after, key=lambda r: r["start"])
        assert first["pid"] != pid
        mine = [r for r in lost if r["worker"] == slot and when <= r["end"] <= first["start"]]
        assert len(mine) <= 2
        # each loss noticed from the process's exit, whose status the error names
        assert all(f"worker {slot} (exit status signal 9)" in r["error"] for r in mine)
        attributed += len(mine)
    assert attributed == len(lost)  # each loss recorded between its kill and the rerun
    assert len({r["pid"] for r in rows if r["pid"]}) >= 3  # replacement processes ran hops
    assert set(result.table["status"]) == {"done"}


def _engine(data: dict[str, str], spec: MinibatchSpec) -> LocalEngine:
    owned = [{"train": [0], "val": [0]}, {"train": [1], "val": [1]}]
    return LocalEngine(
        spec, str(Path(data["etl_dir"])), owned, "", threads=1, devices=["cpu", "cpu"]
    )


@pytest.mark.timeout(120)  # the old, blocking restart hangs on the gate
def test_lost_worker_is_reported_at_once_and_replaced_in_the_background(
    data: dict[str, str], tmp_path: Path
) -> None:
    spec = GatedSpec(tmp_path)
    engine = _engine(data, spec)
    try:
        old = engine.pids()[0]
        for name in ("gate", "hold"):  # the replacement's set-up and the held hop wait
            (tmp_path / name).touch()
        engine.submit(0, hop_task(0, hold=True))
        wait_for(tmp_path / "inside")
        os.kill(old, signal.SIGKILL)
        # The loss is reported while the replacement is still setting up...
        [lost] = poll_until(engine, 1)
        assert isinstance(lost, WorkerLost) and lost.worker == 0
        new = engine.pids()[0]
        assert new != old and engine.info[0]["pid"] == old  # set-up not done yet
        # ...the slot takes its hop back at once, and the other worker's hops go on.
        engine.submit(0, hop_task(0))
        engine.submit(1, hop_task(1))
        [other] = poll_until(engine, 1)
        assert isinstance(other, HopDone) and other.worker == 1
        assert engine.info[0]["pid"] == old
        (tmp_path / "gate").unlink()  # now the replacement finishes starting and runs it
        [done] = poll_until(engine, 1)
        assert isinstance(done, HopDone) and done.worker == 0
        assert done.outcome.pid == new == engine.info[0]["pid"]
        assert engine.restarts == [1, 0]
    finally:
        engine.shutdown()
    assert not worker_pids()


@pytest.mark.timeout(120)
def test_a_hop_queued_behind_a_running_one_runs_next_and_dies_with_it(
    data: dict[str, str], tmp_path: Path
) -> None:
    spec = GatedSpec(tmp_path)
    engine = _engine(data, spec)
    first, second = hop_task(0, hold=True), replace(hop_task(0), model_id="q")
    try:
        # Sent while the slot runs a hop, it runs right after it; each answers in turn.
        queue_behind_held(engine, tmp_path, first, second)
        (tmp_path / "hold").unlink()
        a, b = poll_until(engine, 2)
        assert (a.task, b.task) == (first, second)
        assert isinstance(a, HopDone) and isinstance(b, HopDone)
        assert a.outcome.end <= b.outcome.start and a.outcome.pid == b.outcome.pid
        # A kill loses both: the running hop "started", the queued one not.
        queue_behind_held(engine, tmp_path, first, second)
        (tmp_path / "gate").touch()  # the replacement waits in its set-up
        os.kill(engine.pids()[0], signal.SIGKILL)
        a, b = poll_until(engine, 2)
        assert isinstance(a, WorkerLost) and isinstance(b, WorkerLost)
        assert (a.task, a.started, b.task, b.started) == (first, True, second, False)
        assert "queued behind" in b.reason and "queued" not in a.reason
        # Both sent again to the slot while its replacement sets up: both run, in order.
        (tmp_path / "hold").unlink()
        engine.submit(0, first)
        engine.submit(0, second)
        (tmp_path / "gate").unlink()
        a, b = poll_until(engine, 2)
        assert isinstance(a, HopDone) and isinstance(b, HopDone)
        assert (a.task, b.task) == (first, second) and a.outcome.pid == engine.pids()[0]
    finally:
        engine.shutdown()
    assert not worker_pids()


@pytest.mark.timeout(120)  # the old, blocking restart hangs on the gate
def test_replacement_whose_set_up_fails_stops_with_the_hook_named(
    data: dict[str, str], tmp_path: Path
) -> None:
    spec = GatedSpec(tmp_path)
    engine = _engine(data, spec)
    try:
        (tmp_path / "hold").touch()
        engine.submit(0, hop_task(0, hold=True))
        wait_for(tmp_path / "inside")
        (tmp_path / "fail").touch()  # the replacement's initialize_worker raises
        os.kill(engine.pids()[0], signal.SIGKILL)
        [lost] = poll_until(engine, 1)
        assert isinstance(lost, WorkerLost)
        engine.submit(0, hop_task(0))
        with pytest.raises(UserCodeError, match="no licence server") as info:
            poll_until(engine, 1)
        assert "GatedSpec.initialize_worker" in str(info.value)
        assert "worker 0 set-up" in str(info.value)
    finally:
        engine.shutdown()
    assert not worker_pids()


class CrashingSpec(ToySpec):
    """lr=0.01 models crash their worker natively (as a segfault would)."""

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        if hyperparams["lr"] == 0.01:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().train(model_object, minibatch, hyperparams, device)


def test_model_that_kills_its_worker_is_failed_not_retried_forever(
    data: dict[str, str], tmp_path: Path
) -> None:
    exp = Experiment(dict(data, output_dir=str(tmp_path / "run")), workers=2, verbose=False)
    grid = {"lr": [0.05, 0.01, 0.02, 0.03], "batch_size": [32]}
    result = exp.run_fit(CrashingSpec(), grid, num_epochs=2)
    table = result.table.set_index("model_id")
    assert table.loc["m001", "status"] == "failed"
    assert "killed the worker process 2 times" in table.loc["m001", "error"]
    assert "signal 9" in table.loc["m001", "error"]
    # The hops queued behind its hops died with them, but are not blamed: those models
    # trained to the end.
    assert set(table.drop(index="m001")["status"]) == {"done"}
    con = sqlite3.connect(exp.catalog_path)
    queued = con.execute(
        "SELECT DISTINCT model_id FROM hops WHERE status='lost' AND error LIKE '%queued behind%'"
    ).fetchall()
    con.close()
    assert queued and "m001" not in {m for (m,) in queued}


class AlwaysCrash(ToySpec):
    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        os.kill(os.getpid(), signal.SIGKILL)
        return {}


def test_worker_that_keeps_dying_stops_the_run(data: dict[str, str], tmp_path: Path) -> None:
    exp = Experiment(dict(data, output_dir=str(tmp_path / "run")), workers=2, verbose=False)
    grid = {"lr": [0.1, 0.2, 0.3, 0.4, 0.5], "batch_size": [32]}
    with pytest.raises(WorkerError, match="died 4 times .*stopping rather than looping"):
        exp.run_fit(AlwaysCrash(), grid, num_epochs=1)
    con = sqlite3.connect(exp.catalog_path)
    status = con.execute("SELECT status FROM fits").fetchone()[0]
    con.close()
    assert status == "stopped"
    assert not worker_pids()  # nothing left running


HOLDER = """
import sys, time
from cerebro._rundir import RunLock
RunLock(sys.argv[1]).__enter__()
print("locked", flush=True)
time.sleep(60)
"""


def test_second_process_is_refused_and_dead_holder_releases(
    data: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    exp = Experiment(dict(data, output_dir=str(out)), workers=2, verbose=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    try:
        with pytest.raises(CerebroError, match=rf"{out} is in use by process {holder.pid}"):
            exp.run_fit(ToySpec(), {"lr": [0.05], "batch_size": [32]}, num_epochs=1)
    finally:
        holder.kill()
        holder.wait()
    result = exp.run_fit(ToySpec(), {"lr": [0.05], "batch_size": [32]}, num_epochs=1)
    assert set(result.table["status"]) == {"done"}


def test_full_disk_keeps_the_finished_hops_and_resume_completes_the_fit(
    prepared: tuple[dict[str, str], Any], tmp_path: Path
) -> None:
    data, uninterrupted = prepared
    full = tmp_path / "full"
    full.touch()
    out = tmp_path / "run"
    exp = Experiment(dict(data, output_dir=str(out)), workers=2, verbose=False)
    with pytest.raises(CerebroError, match="disk may be full.*Completed hops are kept"):
        exp.run_fit(FillsDisk(full), GRID, num_epochs=2)
    con = sqlite3.connect(exp.catalog_path)
    kept = con.execute("SELECT * FROM hops WHERE status='done' ORDER BY hop_id").fetchall()
    trained = Counter(
        m for (m,) in con.execute("SELECT model_id FROM hops WHERE status='done' AND kind='train'")
    )
    models = con.execute("SELECT model_id, train_hops, checkpoint FROM models").fetchall()
    (status,) = con.execute("SELECT status FROM fits").fetchone()
    con.close()
    assert status == "stopped"
    # Part-way: the worker that filled its disk had finished at least 2 hops (20
    # minibatches, at most 8 a hop), and the catalog holds every hop done, each model's
    # checkpoint the state after its last one.
    assert 2 <= len(kept) < 4 * 2 * 2 * 2
    for model_id, train_hops, checkpoint in models:
        assert train_hops == trained[model_id]
        if train_hops:
            assert Path(checkpoint).name == f"step-{train_hops:05d}.pt"
            assert Path(checkpoint).is_file()
    assert not list((out / "models").rglob("*.tmp-*"))  # no half-written checkpoint left

    full.unlink()  # space freed (the workers lift their limit): the same call resumes
    with exp:
        result = exp.run_fit(FillsDisk(full), GRID, num_epochs=2)
    assert set(result.table["status"]) == {"done"}
    con = sqlite3.connect(exp.catalog_path)
    after = con.execute("SELECT * FROM hops WHERE status='done' ORDER BY hop_id").fetchall()
    con.close()
    assert after[: len(kept)] == kept  # the hops done before are kept as they were
    # and the fit computed what one that never ran out of space computes
    assert computed(exp.catalog_path) == uninterrupted
