"""The fit loop's bookkeeping with a scripted engine: which hop is recorded when.

The engine here (:class:`cerebro.testing.FakeEngine`) ends hops as the test's function
says, so that two hops can end in the same poll (rare with real processes, and exactly
where ordering bugs hide). Everything else is real: the scheduler, a SQLite catalog on
disk, the user's spec.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from tqdm import tqdm

from cerebro._controller import run_loop
from cerebro._fit_state import FitState
from cerebro.catalog import Catalog
from cerebro.engine.messages import HopTask, UserFailure
from cerebro.errors import UserCodeError
from cerebro.params import expand_grid
from cerebro.scheduler import Scheduler
from cerebro.testing import Crash, FakeEngine, HopResult, done
from toy import controller_fit


def _failing(fail: set[str]) -> FakeEngine:
    """Each poll ends every submitted hop; the hops of the models in ``fail`` raise."""

    def run(worker: int, task: HopTask) -> HopResult:
        if task.model_id in fail:
            return UserFailure("ToySpec.train", "boom", "tb")
        return done(task)

    return FakeEngine(2, run)


def _crashing(crash: set[str]) -> FakeEngine:
    """Each poll ends every hop submitted so far, each worker's in order, so a queued hop
    ends in the same poll as the hop ahead of it (NOTE [ Next hops ]). A hop of a model in
    ``crash`` kills its worker: it and the hops queued behind it are lost."""
    return FakeEngine(2, lambda w, task: Crash("killed") if task.model_id in crash else done(task))


def _fit(
    tmp_path: Path, on_error: str, models: int = 2, epochs: int = 1
) -> tuple[Catalog, FitState, Scheduler]:
    configs = expand_grid({"lr": [0.1 * (i + 1) for i in range(models)], "batch_size": [4]})
    return controller_fit(tmp_path, configs, epochs, on_error)


class _NoBar:
    disable = True


def test_a_hop_finished_beside_a_failure_that_stops_the_fit_is_recorded(
    tmp_path: Path,
) -> None:
    catalog, state, sched = _fit(tmp_path, on_error="stop")
    with pytest.raises(UserCodeError, match="boom"):
        run_loop(catalog, state, sched, _failing({"m001"}), _NoBar())
    hops = catalog.hops(state.fit_id)
    # m000's first hop ended in the same poll as m001's failure: it is kept as done.
    assert sorted((h["model_id"], h["status"]) for h in hops) == [
        ("m000", "done"),
        ("m001", "failed"),
    ]
    catalog.close()


def test_every_hop_is_recorded_once_and_the_epoch_aggregated(tmp_path: Path) -> None:
    catalog, state, sched = _fit(tmp_path, on_error="continue")
    run_loop(catalog, state, sched, _failing(set()), _NoBar())
    hops = catalog.hops(state.fit_id)
    assert len(hops) == 2 * 4 and {h["status"] for h in hops} == {"done"}
    assert {r["model_id"]: r["status"] for r in catalog.models(state.fit_id)} == {
        "m000": "done",
        "m001": "done",
    }
    assert len(catalog.metrics(state.fit_id)) == 2 * 2  # train_loss and val_loss per model
    catalog.close()


def test_queued_hops_ending_in_the_poll_of_the_hop_ahead_are_recorded_in_order(
    tmp_path: Path,
) -> None:
    catalog, state, sched = _fit(tmp_path, on_error="stop", models=5, epochs=2)
    engine = _crashing(set())
    run_loop(catalog, state, sched, engine, _NoBar())
    # hops were queued (never more than one behind the running one), and ended with the hop
    # ahead of them
    assert engine.most_in_flight == 2
    hops = catalog.hops(state.fit_id)
    assert len(hops) == 5 * 2 * 4 and {h["status"] for h in hops} == {"done"}
    assert {r["status"] for r in catalog.models(state.fit_id)} == {"done"}
    assert len(catalog.metrics(state.fit_id)) == 5 * 2 * 2
    for m in state.configs:  # each hop read the checkpoint the train hop before it wrote
        last = None
        for task in (t for _, t in engine.submitted if t.model_id == m):
            assert task.in_ckpt == last
            last = task.out_ckpt or last
    catalog.close()


def test_a_hop_lost_while_queued_behind_a_killing_hop_is_not_blamed(tmp_path: Path) -> None:
    catalog, state, sched = _fit(tmp_path, on_error="continue", models=5)
    run_loop(catalog, state, sched, _crashing({"m001"}), _NoBar())
    status = {r["model_id"]: r["status"] for r in catalog.models(state.fit_id)}
    assert status.pop("m001") == "failed"
    assert set(status.values()) == {"done"}
    lost = [h for h in catalog.hops(state.fit_id) if h["status"] == "lost"]
    assert {h["model_id"] for h in lost} - {"m001"}  # others were lost behind it...
    assert {hop.model_id for hop in state.deaths} == {"m001"}  # ...and not counted
    catalog.close()


def test_the_progress_bar_names_its_metric_and_counts_epochs_from_1(tmp_path: Path) -> None:
    catalog, state, sched = _fit(tmp_path, on_error="continue", epochs=2)
    out = io.StringIO()
    bar = tqdm(total=sched.total_hops(), file=out, mininterval=0, ascii=True)
    run_loop(catalog, state, sched, _failing(set()), bar)
    bar.close()
    text = out.getvalue()
    assert "epoch 1/2, best val_loss=0.5 (min)" in text
    assert "16/16" in text and "epoch 2/2, best val_loss=0.5 (min)" in text
    catalog.close()


def test_models_left_waiting_at_a_rung_nothing_can_complete_is_an_error(
    tmp_path: Path,
) -> None:
    """A stopper that never decides (a bug) must not end the fit as if it were done."""
    from cerebro.errors import CerebroError
    from cerebro.stopping import Stopper

    class NeverDecides(Stopper):
        def report(self, model_id: str, epochs: int, value: float) -> Any:
            return "wait"

    catalog, state, sched = _fit(tmp_path, on_error="stop", epochs=2)
    state.stopper = NeverDecides()
    with pytest.raises(CerebroError, match="2 model.s. wait at a rung .* cannot decide"):
        run_loop(catalog, state, sched, _failing(set()), _NoBar())
    assert sched.paused == 2
    catalog.close()
