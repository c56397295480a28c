"""Synchronous successive halving and Hyperband: rungs that decide once all have reported.

NOTE [ synchronous rungs ]
Models belong to brackets in ask order (successive halving: one bracket of every model the
fit will train). A bracket's rungs sit at ``grace_period * reduction_factor**k`` epochs
(those before ``num_epochs``). A model that reaches a rung waits there, training nothing,
while the workers train the other models, until the rung is complete: every model of the
bracket has been asked (or the search asks no more) and every one still in it has reported
at that rung. Then the best ``max(1, n // reduction_factor)`` of the ``n`` that reported
continue and the rest stop; ties go to the model asked first and a NaN value ranks last. A
model that fails on the way leaves its bracket and is not waited for. So the survivors are
a function of the values alone, never of which model reported first.

Hyperband (Li et al., 2018) runs brackets ``s = S..0``: bracket ``s`` has its first rung
``s`` rungs before the end (bracket ``S`` is successive halving; bracket ``0`` trains every
model to the end), and gets ``ceil((S + 1) / (s + 1) * eta**s)`` parts of the models, the
fit's models being split in that proportion, most aggressive bracket first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cerebro.statuses import DROPPED
from cerebro.stopping._base import Decision, Stopper

__all__ = ["SyncHalving", "bracket_sizes", "rung_epochs"]


def rung_epochs(grace_period: int, reduction_factor: int, num_epochs: int) -> list[int]:
    """Epochs (1-based) where rungs decide: ``grace * rf**k`` for those ``< num_epochs``."""
    out, r = [], grace_period
    while r < num_epochs:
        out.append(r)
        r *= reduction_factor
    return out


def bracket_sizes(models: int, brackets: int, reduction_factor: int) -> list[int]:
    """How many of ``models`` go to each Hyperband bracket, most aggressive first: in
    proportion to Hyperband's ``n_s`` (largest remainders round up, ties to the first)."""
    top = brackets - 1
    weights = [math.ceil((top + 1) / (s + 1) * reduction_factor**s) for s in range(top, -1, -1)]
    exact = [models * w / sum(weights) for w in weights]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(brackets), key=lambda i: (sizes[i] - exact[i], i))
    for i in by_remainder[: models - sum(sizes)]:
        sizes[i] += 1
    return sizes


@dataclass
class _Bracket:
    size: int
    rungs: list[int]
    members: list[str] = field(default_factory=list)
    alive: dict[str, None] = field(default_factory=dict)  # not stopped, failed or diverged
    values: list[dict[str, float]] = field(default_factory=list)  # per rung: model -> value
    decided: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.values = [{} for _ in self.rungs]
        self.decided = [False for _ in self.rungs]


class SyncHalving(Stopper):
    """NOTE [ synchronous rungs ] for brackets of ``sizes`` models, bracket ``b``'s rungs
    being ``rungs[b:]`` (``len(sizes) == 1``: successive halving).

    Args:
        rungs: rung epochs (see :func:`rung_epochs`), at least one.
        sizes: models per bracket, in ask order; models beyond their sum join the last.
        reduction_factor: keep the best ``1/reduction_factor`` at each rung.
        mode: ``"min"`` or ``"max"``.
    """

    def __init__(self, rungs: list[int], sizes: list[int], reduction_factor: int, mode: str):
        self._rf = reduction_factor
        self._sign = 1.0 if mode == "min" else -1.0
        self._brackets = [_Bracket(n, rungs[b:]) for b, n in enumerate(sizes) if n > 0]
        self._of: dict[str, _Bracket] = {}
        self._order: dict[str, int] = {}
        self._no_more = False
        self._resolved: list[tuple[str, Decision]] = []

    def add(self, model_id: str) -> None:
        b = next((b for b in self._brackets if len(b.members) < b.size), self._brackets[-1])
        b.members.append(model_id)
        b.alive[model_id] = None
        self._of[model_id] = b
        self._order[model_id] = len(self._order)

    def report(self, model_id: str, epochs: int, value: float) -> Decision:
        b = self._of[model_id]
        if epochs not in b.rungs:
            return "continue"
        k = b.rungs.index(epochs)
        b.values[k][model_id] = value
        self._decide(b)
        for i, (m, decision) in enumerate(self._resolved):
            if m == model_id:  # decided at once: the caller hears it as the answer
                del self._resolved[i]
                return decision
        return "wait"

    def end(self, model_id: str, status: str) -> None:
        b = self._of.get(model_id)
        if b is not None and model_id in b.alive and status in DROPPED:
            del b.alive[model_id]
            self._decide(b)

    def no_more_models(self) -> None:
        self._no_more = True
        for b in self._brackets:
            self._decide(b)

    def resolved(self) -> list[tuple[str, Decision]]:
        out, self._resolved = self._resolved, []
        return out

    def _decide(self, b: _Bracket) -> None:
        """Decide every rung of ``b`` that is complete, lowest first."""
        if len(b.members) < b.size and not self._no_more:
            return
        for k in range(len(b.rungs)):
            if b.decided[k]:
                continue
            if any(m not in b.values[k] for m in b.alive):
                return
            b.decided[k] = True
            reported = sorted(b.values[k], key=lambda m: self._key(m, b.values[k][m]))
            keep = max(1, len(reported) // self._rf)
            for i, m in enumerate(reported):
                if m not in b.alive:
                    continue  # failed after reporting: its value still counted
                if i >= keep:
                    del b.alive[m]
                self._resolved.append((m, "continue" if i < keep else "stop"))

    def _key(self, model_id: str, value: float) -> tuple[float, int]:
        v = self._sign * value if math.isfinite(value) else math.inf
        return (v, self._order[model_id])
