"""The median stopping rule, with epochs as its clock.

NOTE [ median rule ]
After epoch ``e >= grace_period``, a model stops when its best value so far is worse than
the median of the values the other models reported at epoch ``e``, once at least
``min_samples`` others have. Every model that reached epoch ``e`` counts, running or ended:
on MOP all models train side by side, so waiting for finished ones (as Optuna's
``MedianPruner`` does) would stop nothing until the end. Ray Tune's rule compares running
means at the same wall-clock time, which depends on the machine; epochs do not.
"""

from __future__ import annotations

import math
import statistics

from cerebro.stopping._base import Decision, Stopper

__all__ = ["MedianRule"]


class MedianRule(Stopper):
    """NOTE [ median rule ] for objective direction ``mode``."""

    def __init__(self, grace_period: int, min_samples: int, mode: str):
        self._grace = grace_period
        self._min = min_samples
        self._sign = 1.0 if mode == "min" else -1.0
        self._at: dict[int, dict[str, float]] = {}  # epochs -> model -> value (signed)
        self._best: dict[str, float] = {}  # model -> best signed value so far

    def report(self, model_id: str, epochs: int, value: float) -> Decision:
        v = self._sign * value if math.isfinite(value) else math.inf
        self._best[model_id] = min(self._best.get(model_id, math.inf), v)
        others = [x for m, x in self._at.get(epochs, {}).items() if m != model_id]
        self._at.setdefault(epochs, {})[model_id] = v
        if epochs < self._grace or len(others) < self._min:
            return "continue"
        return "stop" if self._best[model_id] > statistics.median(others) else "continue"
