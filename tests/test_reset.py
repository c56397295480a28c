"""``Experiment.reset()``: the workers stop (and free what they held), the run on disk stays,
and the same object goes on with fresh workers: what restarting the original's notebook
kernel was for, without losing the notebook."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cerebro import CerebroError, Experiment
from toy import ToyETL, ToySpec, worker_pids

GRID = {"lr": [0.05], "batch_size": [32]}


def _hop_pids(catalog: Path, fit_id: int) -> set[int]:
    db = sqlite3.connect(catalog)
    pids = {r[0] for r in db.execute("SELECT pid FROM hops WHERE fit_id=?", (fit_id,))}
    db.close()
    return pids


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock" and p.suffix not in (".sqlite-wal", ".sqlite-shm")
    }


def test_reset_stops_the_workers_keeps_the_run_and_the_next_call_starts_new_ones(
    toy_params: dict[str, str],
) -> None:
    exp = Experiment(toy_params, workers=2, verbose=False)
    exp.reset()  # before any worker: nothing to do
    exp.run_etl(ToyETL(), seed=1)
    first = exp.run_fit(ToySpec(), GRID, 1)
    before = worker_pids()
    assert len(before) == 2 and _hop_pids(exp.catalog_path, first.fit_id) <= set(before)
    kept = _files(exp.output_dir)

    exp.reset()
    assert worker_pids() == []  # really stopped: their memory is back
    assert _files(exp.output_dir) == kept  # data, catalog, checkpoints: all still there
    exp.reset()  # twice is fine

    # the finished fit is read back from disk (no worker needed) ...
    assert exp.run_fit(ToySpec(), GRID, 1).table.equals(first.table)
    assert worker_pids() == []
    # ... and a new fit trains on fresh worker processes
    second = exp.run_fit(ToySpec(), {"lr": [0.01], "batch_size": [32]}, 1, overwrite=True)
    assert set(second.table["status"]) == {"done"}
    fresh = worker_pids()
    pids = _hop_pids(exp.catalog_path, second.fit_id)
    assert len(fresh) == 2 and pids <= set(fresh) and not set(fresh) & set(before)
    exp.close()
    assert worker_pids() == []


def test_reset_after_close_raises(toy_params: dict[str, str]) -> None:
    exp = Experiment(toy_params, workers=2, verbose=False)
    exp.close()
    with pytest.raises(CerebroError, match=r"this Experiment was closed .*create a new one"):
        exp.reset()


def test_reset_of_a_ray_experiment_that_started_nothing_is_a_no_op(
    toy_params: dict[str, str],
) -> None:
    exp = Experiment(toy_params, workers=2, engine="ray", verbose=False)
    exp.reset()  # no Ray started for it, no actor parked: nothing to free
    exp.close()
