"""Early stopping on the driver: report each epoch to the stopper, record, then act.

See NOTE [ stopping seam ] in ``cerebro/stopping/_base.py``. Every call to the stopper is
recorded in the catalog (table ``stopping``) together with the epoch or model end it came
from and the decisions it led to; only then does the scheduler hear of them (stop, pause at
a synchronous rung, resume). A resumed fit replays the recorded calls into a fresh stopper
(:func:`restore`), so it holds the same rungs and decides as an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cerebro.catalog import Catalog, StopRecord
from cerebro.errors import CerebroError
from cerebro.params import ask_order
from cerebro.scheduler import Scheduler
from cerebro.statuses import FINAL, ModelStatus

if TYPE_CHECKING:
    from cerebro._fit_state import FitState

__all__ = ["apply", "end", "epoch", "no_more", "restore", "settle", "stuck", "waiting"]


def epoch(
    state: FitState, model_id: str, epoch: int, result: dict[str, dict[str, float]], last: bool
) -> StopRecord:
    """Report a model's finished epoch (0-based ``epoch``); the record to store with it."""
    rec = StopRecord()
    assert state.stopper is not None
    value = math.nan
    if state.objective is not None:
        split, _, name = state.objective.partition("_")
        value = float(result.get(split, {}).get(name, math.nan))
    decision = state.stopper.report(model_id, epoch + 1, value)
    if last:
        decision = "continue"  # its last epoch: it ends done whatever the rule says
    rec.events.append(("report", model_id, epoch, value, decision))
    if decision == "stop":
        _stopped(state, rec, model_id)
    if last:
        state.stopper.end(model_id, ModelStatus.DONE)
        rec.events.append(("end", model_id, None, None, ModelStatus.DONE))
    _resolutions(state, rec)
    return rec


def end(state: FitState, model_id: str, status: ModelStatus, error: str | None) -> StopRecord:
    """A model failed or diverged: it leaves its rung (which may now decide)."""
    rec = StopRecord(status=[(model_id, status, error)])
    assert state.stopper is not None
    state.stopper.end(model_id, status)
    rec.events.append(("end", model_id, None, None, status))
    _resolutions(state, rec)
    return rec


def no_more(catalog: Catalog, state: FitState, sched: Scheduler, progress: Any = None) -> None:
    """The search will ask no more: rungs waiting for models not yet asked decide now."""
    if state.stopper is None or state.no_more:
        return
    state.no_more = True
    state.stopper.no_more_models()
    rec = StopRecord(events=[("no_more", None, None, None, None)])
    _resolutions(state, rec)
    catalog.record_stopping(state.fit_id, rec)
    apply(state, sched, rec, progress)


def _resolutions(state: FitState, rec: StopRecord) -> None:
    assert state.stopper is not None
    for model_id, decision in state.stopper.resolved():
        rec.resolved.append((model_id, decision))
        if decision == "stop":
            _stopped(state, rec, model_id)


def _stopped(state: FitState, rec: StopRecord, model_id: str) -> None:
    """The stopper stopped ``model_id``: it ends (a pruner's trial becomes pruned)."""
    assert state.stopper is not None
    rec.stopped.append(model_id)
    state.stopper.end(model_id, ModelStatus.STOPPED)
    rec.events.append(("end", model_id, None, None, ModelStatus.STOPPED))


def apply(state: FitState, sched: Scheduler, rec: StopRecord, progress: Any = None) -> None:
    """Act on a stored record: stop, pause or resume models in the scheduler."""
    for event, model_id, _, _, decision in rec.events:
        if event == "report" and decision == "wait":
            assert model_id is not None
            sched.pause(model_id)
            state.freed = True  # a waiting model leaves room for another to be asked
    for model_id, decision in rec.resolved:
        if decision == "continue":
            sched.resume(model_id)
    for model_id in rec.stopped:
        _stop(state, sched, model_id, progress)


def _stop(state: FitState, sched: Scheduler, model_id: str, progress: Any) -> None:
    state.skipped += sched.remaining_hops(model_id)
    sched.stop_model(model_id)
    state.stopped.add(model_id)
    state.ended.append((model_id, ModelStatus.STOPPED))
    state.rerank()
    if progress is not None and getattr(progress, "total", None) is not None:
        progress.total = state.total_hops - state.skipped
        progress.refresh()


def restore(catalog: Catalog, state: FitState) -> None:
    """Resume: a fresh stopper fed every recorded call, in the order they were made."""
    stopper = state.stopper
    assert stopper is not None
    for row in sorted(catalog.models(state.fit_id), key=lambda r: ask_order(r["model_id"])):
        stopper.add(row["model_id"])
    for row in catalog.stopping_log(state.fit_id):
        if row["event"] == "report":
            value = math.nan if row["value"] is None else float(row["value"])
            stopper.report(row["model_id"], row["epoch"] + 1, value)
        elif row["event"] == "end":
            stopper.end(row["model_id"], row["decision"])
        elif row["event"] == "no_more":
            stopper.no_more_models()
            state.no_more = True
    stopper.resolved()  # decided before the kill: the catalog has them already


def waiting(log: Iterable[Mapping[str, Any]]) -> set[str]:
    """Models whose last report in the stopping ``log`` (rows of the catalog's table)
    waits for its rung to decide."""
    last: dict[str, Any] = {}
    for row in log:
        if row["event"] == "report":
            last[str(row["model_id"])] = row["decision"]
    return {m for m, d in last.items() if d == "wait"}


def settle(catalog: Catalog, state: FitState, sched: Scheduler) -> None:
    """Resume, after the hops were replayed: stopped models end, waiting ones wait."""
    held = waiting([dict(r) for r in catalog.stopping_log(state.fit_id)])
    for row in catalog.models(state.fit_id):
        model_id = row["model_id"]
        if row["status"] == ModelStatus.STOPPED:
            state.skipped += sched.remaining_hops(model_id)
            sched.stop_model(model_id)
            state.stopped.add(model_id)
        elif model_id in held and row["status"] not in FINAL:
            sched.pause(model_id)
    state.rerank()


def stuck(sched: Scheduler) -> CerebroError:
    """The error for models waiting at a rung that nothing can complete (a bug)."""
    return CerebroError(
        f"{sched.paused} model(s) wait at a rung of the early-stopping rule, but no model "
        "runs and the search asks no more: the rung cannot decide. This is a bug in "
        "Cerebro; resume with `cerebro resume DIR` after reporting it."
    )
