"""The report's early-stopping numbers: the rule in words and what happened at each rung.

Everything here is computed from the catalog's ``stopping`` log (every call to the fit's
stopper, in the order made; see NOTE [ stopping seam ] in ``cerebro/stopping/_base.py``)
and the rule the fit's signature records, by pure functions, so it can be checked without
a run. A log row is ``{"event", "model_id", "epoch", "value", "decision"}``: ``event``
``report`` (0-based ``epoch`` done, objective ``value``, ``decision`` ``continue``,
``stop`` or ``wait`` until a synchronous rung decides), ``end`` (``decision``: the
model's status) or ``no_more``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cerebro import _ranking
from cerebro.params import ask_order
from cerebro.report._data import RunData
from cerebro.statuses import DROPPED
from cerebro.stopping import bracket_sizes, rung_epochs

__all__ = [
    "Rung",
    "brackets",
    "cut_basis",
    "decision_epochs",
    "describe",
    "objective",
    "rungs",
]

HALVING = ("sha", "asha", "hyperband")


@dataclass(frozen=True)
class Rung:
    """What happened at one rung: the models that finished ``epoch`` (1-based) there.

    ``waiting`` models reported and wait for a synchronous rung to decide; ``left`` ones
    reported, then failed or diverged before it decided (they will never be decided).
    ``cut`` is the worst objective value among those that went on (each model's value at
    that epoch, or its best so far for the median rule: see :func:`cut_basis`): the
    threshold the rung applied; ``None`` while none went on, none had a finite value, or
    the rule has no such threshold (a pruner). ``bracket`` is the
    Hyperband bracket (0: the one that stops earliest), ``None`` for other rules.
    """

    epoch: int
    reported: int
    went_on: int
    stopped: int
    waiting: int
    cut: float | None
    left: int = 0
    bracket: int | None = None


def _knob(rule: Mapping[str, Any], name: str, default: int) -> int:
    v = rule.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _reports(log: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], Mapping[str, Any]]:
    """``{(model_id, epoch 1-based): report row}``, the latest row of each (a resumed fit
    may have reported an epoch again)."""
    out: dict[tuple[str, int], Mapping[str, Any]] = {}
    for row in log:
        if row.get("event") == "report" and row.get("epoch") is not None:
            out[(str(row["model_id"]), int(row["epoch"]) + 1)] = row
    return out


def decision_epochs(
    rule: Mapping[str, Any], num_epochs: int, log: Iterable[Mapping[str, Any]] = ()
) -> list[int]:
    """The epochs (1-based) where ``rule`` may stop a model, ascending.

    Halving rules (``sha``, ``asha``, ``hyperband``): their rungs,
    ``grace_period * reduction_factor**k`` below ``num_epochs``, reached or not. The
    median rule and pruners may stop at any epoch before the last: those epochs that
    some model reported (from ``grace_period`` for the median rule). A rule this version
    does not know: the epochs where the log has a ``stop`` or ``wait``.
    """
    kind = str(rule.get("type", ""))
    if kind in HALVING:
        return rung_epochs(
            _knob(rule, "grace_period", 1), _knob(rule, "reduction_factor", 3), num_epochs
        )
    seen = _reports(log)
    if kind == "median" or kind.startswith("pruner:"):
        first = _knob(rule, "grace_period", 1) if kind == "median" else 1
        return sorted({e for _, e in seen if first <= e < num_epochs})
    return sorted({e for (_, e), r in seen.items() if r.get("decision") in ("stop", "wait")})


def brackets(
    model_ids: Iterable[str], planned: int, rule: Mapping[str, Any], num_epochs: int
) -> dict[str, int]:
    """Hyperband's bracket of each model, as :class:`cerebro.stopping.SyncHalving` fills
    them: in ask order, ``bracket_sizes(planned, ...)`` models each, extras to the last
    one that has any. ``{}`` for any other rule."""
    if rule.get("type") != "hyperband":
        return {}
    rf = _knob(rule, "reduction_factor", 3)
    n = _knob(rule, "brackets", 0) or len(decision_epochs(rule, num_epochs)) + 1
    ids = sorted(model_ids, key=ask_order)
    sizes = bracket_sizes(max(planned, len(ids)), n, rf)
    nonempty = [b for b, size in enumerate(sizes) if size > 0]
    filled = [0] * len(sizes)
    out: dict[str, int] = {}
    for mid in ids:
        b = next((b for b in nonempty if filled[b] < sizes[b]), nonempty[-1])
        filled[b] += 1
        out[mid] = b
    return out


def cut_basis(rule: Mapping[str, Any]) -> str | None:
    """What a rung's cut is of: ``"value"`` (at that epoch: halving rules rank those),
    ``"best"`` (the best so far: what the median rule compares) or ``None`` (a pruner
    decides by rules of its own: no one threshold)."""
    kind = rule.get("type")
    return "value" if kind in HALVING else "best" if kind == "median" else None


def _best_so_far(
    seen: Mapping[tuple[str, int], Mapping[str, Any]], mode: str
) -> dict[tuple[str, int], float]:
    """Each report's best finite value up to and including its epoch, per model."""
    out: dict[tuple[str, int], float] = {}
    best: dict[str, float] = {}
    for m, e in sorted(seen, key=lambda k: k[1]):
        v = seen[(m, e)].get("value")
        if v is not None and math.isfinite(float(v)):
            b = best.get(m)
            best[m] = float(v) if b is None else (max if mode == "max" else min)(b, float(v))
        out[(m, e)] = best.get(m, math.nan)
    return out


def _cut(values: list[float], mode: str) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    return min(finite) if mode == "max" else max(finite)


def _rung(
    epoch: int,
    rows: list[Mapping[str, Any]],
    failed: set[str],
    mode: str,
    cut_of: Mapping[str, float] | None,
    bracket: int | None = None,
) -> Rung:
    """The rung at ``epoch`` from its report rows; ``cut_of``: the value each model's
    cut counts (``None``: no cut)."""
    decisions = [str(r.get("decision")) for r in rows]
    waits = [str(r["model_id"]) for r in rows if r.get("decision") == "wait"]
    went_on = [str(r["model_id"]) for r in rows if r.get("decision") == "continue"]
    values = [cut_of[m] for m in went_on if m in cut_of] if cut_of is not None else []
    return Rung(
        epoch=epoch,
        reported=len(rows),
        went_on=len(went_on),
        stopped=decisions.count("stop"),
        waiting=sum(1 for m in waits if m not in failed),
        cut=_cut(values, mode),
        left=sum(1 for m in waits if m in failed),
        bracket=bracket,
    )


def rungs(
    log: Sequence[Mapping[str, Any]],
    rule: Mapping[str, Any],
    num_epochs: int,
    mode: str,
    bracket_of: Mapping[str, int] | None = None,
) -> list[Rung]:
    """One :class:`Rung` per epoch where ``rule`` decides (:func:`decision_epochs`).

    Args:
        log: the fit's ``stopping`` rows, in the order made.
        rule: the rule as the signature records it (``{"type": "sha", ...}``).
        num_epochs: the fit's epochs.
        mode: ``"min"`` or ``"max"``, the direction of the rule's objective (``cut``).
        bracket_of: Hyperband's bracket per model (:func:`brackets`): one row per bracket
            and rung of that bracket (bracket ``b``'s rungs are the rule's from the
            ``b``-th on); without it every model counts at every rung.
    """
    seen = _reports(log)
    failed = {
        str(r["model_id"]) for r in log if r.get("event") == "end" and r.get("decision") in DROPPED
    }
    basis = cut_basis(rule)
    best = _best_so_far(seen, mode) if basis == "best" else {}

    def cut_of(e: int) -> dict[str, float] | None:
        if basis == "best":
            return {m: v for (m, at), v in best.items() if at == e}
        if basis == "value":
            return {
                m: float(r["value"])
                for (m, at), r in seen.items()
                if at == e and r.get("value") is not None
            }
        return None

    epochs = decision_epochs(rule, num_epochs, log)
    if not bracket_of:
        return [
            _rung(e, [r for (_, at), r in seen.items() if at == e], failed, mode, cut_of(e))
            for e in epochs
        ]
    out = []
    for b in sorted(set(bracket_of.values())):
        for e in epochs[b:]:
            rows = [r for (m, at), r in seen.items() if at == e and bracket_of.get(m) == b]
            out.append(_rung(e, rows, failed, mode, cut_of(e), bracket=b))
    return out


_NAMES = {
    "sha": (
        "Successive halving (synchronous): at each rung, once every model has reached it, "
        "the best 1/reduction_factor train on and the rest stop."
    ),
    "asha": (
        "ASHA (asynchronous successive halving): a model reaching a rung trains on if it is "
        "among the best 1/reduction_factor of the values that rung has seen so far; it "
        "never waits."
    ),
    "hyperband": (
        "Hyperband: brackets of synchronous successive halving that start stopping at later "
        "and later rungs (the last trains every model to the end)."
    ),
    "median": (
        "Median stopping: from epoch grace_period on, a model whose best value is worse than "
        "the median of at least min_samples other models at that epoch stops."
    ),
}


def describe(rule: Mapping[str, Any]) -> str:
    """The rule in one sentence, with its knobs: ``Successive halving ...
    (grace_period=1, reduction_factor=3).``"""
    kind = str(rule.get("type", "?"))
    if kind.startswith("pruner:"):
        return (
            f"Optuna pruner {kind.partition(':')[2]}: each epoch is reported to it as a "
            "step; it decides whether the model trains on."
        )
    text = _NAMES.get(kind, f"Early stopping rule {kind}.")
    knobs = [
        f"{k}={'default' if v is None else v}" for k, v in rule.items() if k not in ("type", "key")
    ]
    return text[:-1] + f" ({', '.join(knobs)})." if knobs else text


def objective(run: RunData) -> tuple[str, str]:
    """The objective and mode the fit's early stopping ranked by: the fit's own (those it
    was run with, else its default), whatever the report ranks by."""
    names = {f"{m['split']}_{m['name']}" for m in run.metrics}
    return _ranking.choose(None, None, names, run.run_dir, run.signature)
