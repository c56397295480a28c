"""Live models: the fit asks its search for models while hops run, and tells it each end.

See NOTE [ search seam ] in ``cerebro/search/_base.py``. Everything here runs on the
driver between hops; it writes the catalog only when a model ends or joins.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from cerebro import _early_stopping
from cerebro.catalog import Catalog
from cerebro.params import ModelConfig, ask_order
from cerebro.scheduler import Scheduler
from cerebro.search import Search

if TYPE_CHECKING:
    from cerebro._fit_state import FitState

__all__ = ["add_models", "refresh", "restore"]


def add_models(catalog: Catalog, state: FitState, sched: Scheduler, search: Search) -> int:
    """Ask for models while fewer than ``search.max_live`` are live; returns how many.

    Each asked model is recorded in the catalog (all of one round in one transaction)
    before it can run, so a resumed fit knows every model that was asked.
    """
    asked: list[ModelConfig] = []
    limit = search.max_live
    active = sched.live - sched.paused  # a model waiting at a rung holds no slot
    while limit is None or active + len(asked) < limit:
        config = search.ask()
        if config is None:
            break
        asked.append(config)
    if asked:
        catalog.add_models(state.fit_id, [(c.model_id, c.hyperparams) for c in asked])
        for config in asked:
            state.add(config)
            sched.add_model(config.model_id)
            if state.stopper is not None:
                state.stopper.add(config.model_id)
    if search.finished:
        _early_stopping.no_more(catalog, state, sched, state.progress)
    return len(asked)


def refresh(catalog: Catalog, state: FitState, sched: Scheduler, search: Search) -> None:
    """Tell the search every model that ended since the last call, then refill."""
    state.freed = False
    while state.ended:
        model_id, status = state.ended.pop(0)
        best = state.model_best.get(model_id)
        search.tell(model_id, None if best is None else best.value, status)
    add_models(catalog, state, sched, search)


def restore(catalog: Catalog, state: FitState, search: Search) -> None:
    """Resume: hand the search the models the catalog holds, with their ends and values."""
    rows = sorted(catalog.models(state.fit_id), key=lambda r: ask_order(r["model_id"]))
    models = []
    for r in rows:
        best = state.model_best.get(r["model_id"])
        config = ModelConfig(r["model_id"], json.loads(r["hyperparams"]))
        models.append((config, r["status"], None if best is None else best.value))
    search.restore(models)
    state.ended.clear()  # restore told the search every end the catalog holds
