"""The fit's progress bar: one step per hop, and the line after it (epoch, models, best)."""

from __future__ import annotations

from typing import Any

from cerebro._fit_state import FitState
from cerebro.scheduler import Scheduler

__all__ = ["postfix", "step"]


def step(state: FitState, sched: Scheduler, progress: Any) -> None:
    """One more hop on the bar, with the slowest live model's epoch and the best so far."""
    if getattr(progress, "disable", False):
        return  # verbose=False: skip even computing the postfix
    progress.set_postfix_str(postfix(state, sched), refresh=False)
    progress.update(1)


def postfix(state: FitState, sched: Scheduler) -> str:
    """``epoch 2/5, best val_loss=0.1438 (min)``: the slowest live model's epoch (from 1)
    and the fit's best value so far, named with its metric and direction."""
    live = [m for m in state.configs if sched.remaining_hops(m) > 0]
    epoch = min((sched.epoch_of(m) for m in live), default=state.num_epochs - 1)
    text = f"epoch {epoch + 1}/{state.num_epochs}"
    if state.planned is not None:  # a search: models finished of those it will try
        text += f", models {len(sched.model_ids) - sched.live}/{state.planned}"
    if state.best is not None and state.objective is not None:
        text += f", best {state.objective}={state.best.value:.4g} ({state.mode})"
    # The tail: fewer models left to train than workers, so some workers idle.
    workers = len(sched.workers)
    active = sched.live - sched.paused
    more = state.planned is not None and len(sched.model_ids) < state.planned
    if not more and 0 < active < workers:
        text += f", tail: {active} model{'s' * (active > 1)} left for {workers} workers"
    if sched.paused:
        text += f", {sched.paused} waiting at a rung"
    return text
