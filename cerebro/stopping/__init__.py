"""Early stopping at epoch boundaries: successive halving, ASHA, Hyperband, median, pruners.

Pass one to ``run_fit(..., early_stopping=...)``: a name with its defaults (``"sha"``,
``"asha"``, ``"hyperband"``, ``"median"``), a rule with its knobs, or any Optuna pruner.

Example:
    >>> from cerebro.stopping import SuccessiveHalving
    >>> SuccessiveHalving(grace_period=1, reduction_factor=3).rungs(num_epochs=9)
    [1, 3]
"""

from __future__ import annotations

from cerebro.stopping._base import Decision, Stopper
from cerebro.stopping._config import (
    ASHA,
    EarlyStopping,
    Hyperband,
    MedianStopping,
    OptunaPruner,
    SuccessiveHalving,
    parse_early_stopping,
)
from cerebro.stopping._halving import SyncHalving, bracket_sizes, rung_epochs

__all__ = [
    "ASHA",
    "Decision",
    "EarlyStopping",
    "Hyperband",
    "MedianStopping",
    "OptunaPruner",
    "Stopper",
    "SuccessiveHalving",
    "SyncHalving",
    "bracket_sizes",
    "parse_early_stopping",
    "rung_epochs",
]
