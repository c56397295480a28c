"""Any Optuna pruner as a stopper (``"asha"`` is Optuna's ``SuccessiveHalvingPruner``).

Each model is a trial of a study kept in memory (its own, not the search's, so a grid can be
pruned as well as a sampler's models), created in ask order; an epoch is reported as the
trial's step ``epochs`` and the pruner's ``prune`` answers at once. The pruner sees what it
would see in Optuna: finished trials as complete, pruned or failed. Asynchronous: what it
answers depends on what the other models reported before, so on timing.
"""

from __future__ import annotations

import logging
from typing import Any

from cerebro.statuses import ModelStatus
from cerebro.stopping._base import Decision, Stopper

__all__ = ["PrunerStopper"]


class PrunerStopper(Stopper):
    """``pruner`` (an ``optuna.pruners.BasePruner``) deciding for objective direction
    ``mode``."""

    def __init__(self, pruner: Any, mode: str):
        import optuna

        logging.getLogger("optuna").setLevel(logging.WARNING)  # no line per trial
        self.study = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            study_name="cerebro-stopping",  # fixed: HyperbandPruner hashes it into brackets
            sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=pruner,
            direction="minimize" if mode == "min" else "maximize",
        )
        self._trials: dict[str, Any] = {}
        self._last: dict[str, float] = {}

    def add(self, model_id: str) -> None:
        self._trials[model_id] = self.study.ask()

    def report(self, model_id: str, epochs: int, value: float) -> Decision:
        trial = self._trials[model_id]
        trial.report(value, epochs)
        self._last[model_id] = value
        return "stop" if trial.should_prune() else "continue"

    def end(self, model_id: str, status: str) -> None:
        import optuna

        trial = self._trials.pop(model_id, None)
        if trial is None:
            return
        last = self._last.get(model_id)
        if status == ModelStatus.DONE and last is not None:
            self.study.tell(trial, last)
        elif status == ModelStatus.STOPPED:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
