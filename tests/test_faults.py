"""Real SIGKILLs of worker processes during a fit, a full disk, and the run-directory lock.

The engine-level cases (a killed worker loses no hop, the hop queued behind it, its
replacement set up in the background or failing to) are the engine contract suite's,
``test_engine_contract.py``, for every engine."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cerebro import CerebroError, Experiment, WorkerError
from toy import ToySpec, computed, worker_pids

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
