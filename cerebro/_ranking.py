"""What "best" means: the one ranking of models, and the objective it uses by default.

NOTE [ one meaning of best ]
Every place that names a best model (``FitResult.best`` and ``.table``, the fit's progress
bar, ``cerebro status``, the report, ``model_tag="best"``) ranks through this module:

- a model's value is the best value of the objective at ANY of its recorded epochs (so a
  model that overfits late keeps the epoch where it was best, and its checkpoint);
- ``mode`` ``"min"`` or ``"max"``; non-finite values never count;
- ties: the earliest epoch, then the lowest model id;
- a model early stopping stopped is never the best (:func:`contenders`): it did not train
  to the end, so its value is not comparable; ``FitResult(..., include_stopped=True)``
  lets it be. Its own best value is still shown wherever models are listed.

Without an ``objective``, a *validation* metric ranks whenever the fit has one (see
:func:`default_objective`); a train metric only when there is no validation split. Whoever
shows a best model also shows the objective and mode it used.

Epochs here are the catalog's, 0-based; surfaces a user reads show ``epoch + 1``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cerebro.statuses import ModelStatus

__all__ = [
    "Best",
    "better",
    "check_mode",
    "choose",
    "contenders",
    "default_objective",
    "describe",
    "rank",
    "saved_ranking",
    "split_objective",
]

MODES = ("min", "max")


@dataclass(frozen=True)
class Best:
    """One model's best value of the objective and the (0-based) epoch it was reached."""

    model_id: str
    epoch: int
    value: float


def split_objective(objective: str) -> tuple[str, str]:
    """``"val_epoch_loss"`` -> ``("val", "epoch_loss")``."""
    split, _, name = objective.partition("_")
    return split, name


def default_objective(names: Iterable[str]) -> str:
    """The metric that ranks models when the user named none.

    ``names`` are ``"<split>_<name>"`` keys the fit recorded. The first split of ``val``,
    ``train`` that has metrics decides; within it: ``<split>_loss``, else the first name
    (sorted) that contains ``loss`` (``val_epoch_loss``), else the first name. With no
    metric at all: ``val_loss``.
    """
    names = set(names)
    for split in ("val", "train"):
        mine = sorted(n for n in names if n.startswith(split + "_"))
        if not mine:
            continue
        if f"{split}_loss" in mine:
            return f"{split}_loss"
        loss = [n for n in mine if "loss" in split_objective(n)[1]]
        return loss[0] if loss else mine[0]
    return sorted(names)[0] if names else "val_loss"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


def _key(b: Best, mode: str) -> tuple[float, int, str]:
    return (b.value if mode == "min" else -b.value, b.epoch, b.model_id)


def rank(metrics: Iterable[Mapping[str, Any]], objective: str, mode: str) -> list[Best]:
    """Every model that has a finite value of ``objective``, best first.

    Args:
        metrics: per-epoch rows with ``model_id``, ``epoch``, ``split``, ``name`` and
            ``value`` (the catalog's ``metrics`` table; ``split`` ``"test"`` rows rank a
            ``test_*`` objective the same way).
        objective: ``"<split>_<name>"``.
        mode: ``"min"`` or ``"max"``.

    Returns:
        One :class:`Best` per model (its best epoch, ties: earliest), sorted by value, then
        epoch, then model id.
    """
    check_mode(mode)
    split, name = split_objective(objective)
    per_model: dict[str, Best] = {}
    for m in metrics:
        v = m["value"]
        if m["split"] != split or m["name"] != name or v is None:
            continue
        v = float(v)
        if not math.isfinite(v):
            continue
        b = Best(str(m["model_id"]), int(m["epoch"]), v)
        old = per_model.get(b.model_id)
        if old is None or _key(b, mode) < _key(old, mode):
            per_model[b.model_id] = b
    return sorted(per_model.values(), key=lambda b: _key(b, mode))


def contenders(
    ranked: Iterable[Best], models: Iterable[Mapping[str, Any]], include_stopped: bool = False
) -> list[Best]:
    """Of ``ranked``, those that may be the best: not a model whose catalog ``status`` is
    ``"stopped"`` (unless ``include_stopped``)."""
    if include_stopped:
        return list(ranked)
    out = {str(m["model_id"]) for m in models if m["status"] == ModelStatus.STOPPED}
    return [b for b in ranked if b.model_id not in out]


def better(a: Best, b: Best | None, mode: str) -> bool:
    """Whether ``a`` ranks before ``b`` (any ``a`` beats no ``b``)."""
    return b is None or _key(a, mode) < _key(b, mode)


def describe(objective: str, mode: str) -> str:
    """How models were ranked, for a user: ``"val_loss (min)"``."""
    return f"{objective} ({mode})"


def choose(
    objective: str | None, mode: str | None, names: Iterable[str], run_dir: Any, signature: Any
) -> tuple[str, str]:
    """The ``(objective, mode)`` that rank a fit: those given, else those the fit was run
    with (:func:`saved_ranking`), else :func:`default_objective` of ``names`` and ``"min"``.

    A mode the fit was run with goes only with its own objective.
    """
    saved_objective, saved_mode = (None, None)
    if objective is None or mode is None:
        saved_objective, saved_mode = saved_ranking(run_dir, signature)
    if objective is None:
        objective = saved_objective or default_objective(names)
    elif objective != saved_objective:
        saved_mode = None
    return objective, check_mode(mode or saved_mode or "min")


def saved_ranking(run_dir: Any, signature: Any) -> tuple[str | None, str | None]:
    """The ``objective`` and ``mode`` the fit with ``signature`` was run with, if known.

    ``run_fit`` records its arguments in ``DIR/experiment.json``; they count only when
    that record is of this very fit (same grid, epochs, seed and policy), so that
    ``cerebro status`` and ``model_tag="best"`` rank as the run itself did.
    """
    import json

    from cerebro._rundir import load_experiment

    session = load_experiment(run_dir) or {}
    fit = session.get("fit")
    try:
        sig = json.loads(signature) if isinstance(signature, str) else signature
    except ValueError:
        return None, None
    if not isinstance(fit, dict) or not isinstance(sig, dict):
        return None, None
    same = (
        fit.get("param_grid") == sig.get("grid")
        and fit.get("num_epochs") == sig.get("num_epochs")
        and fit.get("seed") == sig.get("seed")
        and fit.get("policy") == sig.get("policy")
    )
    if not same:
        return None, None
    objective, mode = fit.get("objective"), fit.get("mode")
    return (
        objective if isinstance(objective, str) else None,
        mode if mode in MODES else None,
    )
