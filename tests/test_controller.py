"""The fit loop's bookkeeping with a scripted engine: which hop is recorded when.

The engine here replays events chosen by the test, so that two hops can end in the same
poll (rare with real processes, and exactly where ordering bugs hide). Everything else is
real: the scheduler, a SQLite catalog on disk, the user's spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cerebro._controller import FitState, run_loop
from cerebro.catalog import Catalog
from cerebro.engine import HopDone, HopFailed
from cerebro.errors import UserCodeError
from cerebro.params import expand_grid
from cerebro.scheduler import Scheduler
from cerebro.worker import HopOutcome, HopTask, UserFailure
from toy import ToySpec


class ScriptedEngine:
    """Runs nothing: each poll ends every submitted hop; ``fail`` names models that raise."""

    workers = 2

    def __init__(self, fail: set[str]):
        self.fail = fail
        self.running: dict[int, HopTask] = {}

    def submit(self, worker: int, task: HopTask) -> None:
        assert worker not in self.running, "a busy worker got a second hop"
        self.running[worker] = task

    def poll(self, timeout: float | None = None) -> list[Any]:
        events: list[Any] = []
        for w, task in sorted(self.running.items()):
            if task.model_id in self.fail:
                events.append(HopFailed(w, task, UserFailure("ToySpec.train", "boom", "tb")))
            else:
                outcome = HopOutcome({"loss": [0.5]}, [4], 4, 0.0, 0.0, 0.0, 0.0, 0.0)
                events.append(HopDone(w, task, outcome))
        self.running.clear()
        return events

    def shutdown(self) -> None:
        pass


def _fit(tmp_path: Path, on_error: str) -> tuple[Catalog, FitState, Scheduler]:
    configs = expand_grid({"lr": [0.1, 0.2], "batch_size": [4]})
    catalog = Catalog(tmp_path / "catalog.sqlite")
    fit_id = catalog.create_fit(
        "sig", {"models": 2, "workers": 2}, [(c.model_id, c.hyperparams) for c in configs]
    )
    sched = Scheduler(
        [c.model_id for c in configs],
        num_epochs=1,
        train_owner={0: 0, 1: 1},
        val_owner={0: 0, 1: 1},
        policy="fixed",
    )
    state = FitState(
        fit_id,
        ToySpec(),
        {c.model_id: c for c in configs},
        tmp_path / "models",
        1,
        1,
        on_error,
    )
    state.checkpoint = dict.fromkeys(state.configs)
    state.train_hops = dict.fromkeys(state.configs, 0)
    return catalog, state, sched


class _NoBar:
    disable = True


def test_a_hop_finished_beside_a_failure_that_stops_the_fit_is_recorded(
    tmp_path: Path,
) -> None:
    catalog, state, sched = _fit(tmp_path, on_error="stop")
    with pytest.raises(UserCodeError, match="boom"):
        run_loop(catalog, state, sched, ScriptedEngine(fail={"m001"}), _NoBar())
    hops = catalog.hops(state.fit_id)
    # m000's first hop ended in the same poll as m001's failure: it is kept as done.
    assert [(h["model_id"], h["status"]) for h in hops] == [
        ("m000", "done"),
        ("m001", "failed"),
    ]
    catalog.close()


def test_every_hop_is_recorded_once_and_the_epoch_aggregated(tmp_path: Path) -> None:
    catalog, state, sched = _fit(tmp_path, on_error="continue")
    run_loop(catalog, state, sched, ScriptedEngine(fail=set()), _NoBar())
    hops = catalog.hops(state.fit_id)
    assert len(hops) == 2 * 4 and {h["status"] for h in hops} == {"done"}
    assert {r["model_id"]: r["status"] for r in catalog.models(state.fit_id)} == {
        "m000": "done",
        "m001": "done",
    }
    assert len(catalog.metrics(state.fit_id)) == 2 * 2  # train_loss and val_loss per model
    catalog.close()
