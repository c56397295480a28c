"""What a user passes as ``early_stopping=``: a name, a rule with its knobs, or a pruner.

Each rule is a small frozen object that checks its knobs against the fit
(:meth:`check`), is recorded in the run (:meth:`to_json`, part of the fit's identity) and
makes the fit's :class:`~cerebro.stopping.Stopper` (:meth:`make`).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import cloudpickle

from cerebro.errors import ParamsError
from cerebro.stopping._base import Stopper
from cerebro.stopping._halving import SyncHalving, bracket_sizes, rung_epochs
from cerebro.stopping._median import MedianRule

__all__ = [
    "ASHA",
    "EarlyStopping",
    "Hyperband",
    "MedianStopping",
    "OptunaPruner",
    "SuccessiveHalving",
    "parse_early_stopping",
]


def _knob(rule: str, name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{rule}: {name} must be an int, got {value!r}.")
    if value < least:
        raise ParamsError(f"{rule}: {name} must be at least {least}, got {value}.")


def _grace(rule: str, grace_period: Any, num_epochs: int) -> None:
    """A grace period is an int from 1 that leaves a decision before the last epoch."""
    _knob(rule, "grace_period", grace_period, 1)
    if grace_period >= num_epochs:
        raise ParamsError(
            f"{rule}: grace_period={grace_period} leaves no rung before the last epoch "
            f"(num_epochs={num_epochs}); lower grace_period or raise num_epochs."
        )


class EarlyStopping:
    """Base of the ``early_stopping=`` rules."""

    name: ClassVar[str]
    synchronous: ClassVar[bool] = False

    def check(self, num_epochs: int) -> None:
        """Raise a ``ParamsError`` naming the knob if this rule cannot stop any model of a
        fit of ``num_epochs`` epochs."""

    def rungs(self, num_epochs: int) -> list[int]:
        """The epochs (1-based) where this rule may stop a model."""
        raise NotImplementedError

    def make(self, num_epochs: int, num_models: int, mode: str) -> Stopper:
        """The stopper of a fit of ``num_models`` models of ``num_epochs`` epochs."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The rule as recorded in ``experiment.json`` and the fit's signature."""
        return {"type": self.name} | asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class _Halving(EarlyStopping):
    grace_period: int = 1
    reduction_factor: int = 3

    def check(self, num_epochs: int) -> None:
        _grace(self.name, self.grace_period, num_epochs)
        _knob(self.name, "reduction_factor", self.reduction_factor, 2)

    def rungs(self, num_epochs: int) -> list[int]:
        return rung_epochs(self.grace_period, self.reduction_factor, num_epochs)


@dataclass(frozen=True)
class SuccessiveHalving(_Halving):
    """Synchronous successive halving (NOTE [ synchronous rungs ]): at epochs
    ``grace_period * reduction_factor**k``, once all models reached it, the best
    ``1/reduction_factor`` train on. Same seed, same survivors."""

    name: ClassVar[str] = "sha"
    synchronous: ClassVar[bool] = True

    def make(self, num_epochs: int, num_models: int, mode: str) -> Stopper:
        return SyncHalving(self.rungs(num_epochs), [num_models], self.reduction_factor, mode)


@dataclass(frozen=True)
class Hyperband(_Halving):
    """Synchronous Hyperband: ``brackets`` successive halvings that start stopping at
    later and later rungs (default: one per rung, plus one that stops nothing)."""

    name: ClassVar[str] = "hyperband"
    synchronous: ClassVar[bool] = True
    brackets: int | None = None

    def check(self, num_epochs: int) -> None:
        super().check(num_epochs)
        most = len(self.rungs(num_epochs)) + 1
        if self.brackets is not None:
            _knob(self.name, "brackets", self.brackets, 1)
            if self.brackets > most:
                raise ParamsError(
                    f"hyperband: brackets={self.brackets}, but {num_epochs} epochs with "
                    f"grace_period={self.grace_period} and reduction_factor="
                    f"{self.reduction_factor} have {most - 1} rung(s), so at most {most} "
                    "brackets."
                )

    def make(self, num_epochs: int, num_models: int, mode: str) -> Stopper:
        rungs = self.rungs(num_epochs)
        n = self.brackets if self.brackets is not None else len(rungs) + 1
        sizes = bracket_sizes(num_models, n, self.reduction_factor)
        return SyncHalving(rungs, sizes, self.reduction_factor, mode)


@dataclass(frozen=True)
class ASHA(_Halving):
    """Asynchronous successive halving: Optuna's ``SuccessiveHalvingPruner``. A model at a
    rung trains on if it is in the best ``1/reduction_factor`` of the values that rung has
    seen so far, itself included; while the rung has fewer than ``reduction_factor``
    values, only if it is the best of them. It never waits, so it depends on timing."""

    name: ClassVar[str] = "asha"

    def make(self, num_epochs: int, num_models: int, mode: str) -> Stopper:
        import optuna

        from cerebro.stopping._pruner import PrunerStopper

        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.grace_period, reduction_factor=self.reduction_factor
        )
        return PrunerStopper(pruner, mode)


@dataclass(frozen=True)
class MedianStopping(EarlyStopping):
    """NOTE [ median rule ]: from epoch ``grace_period``, stop a model whose best value is
    worse than the median of what at least ``min_samples`` other models had at that
    epoch."""

    name: ClassVar[str] = "median"
    grace_period: int = 1
    min_samples: int = 3

    def check(self, num_epochs: int) -> None:
        _grace(self.name, self.grace_period, num_epochs)
        _knob(self.name, "min_samples", self.min_samples, 1)

    def rungs(self, num_epochs: int) -> list[int]:
        return list(range(self.grace_period, num_epochs))

    def make(self, num_epochs: int, num_models: int, mode: str) -> Stopper:
        return MedianRule(self.grace_period, self.min_samples, mode)


class OptunaPruner(EarlyStopping):
    """Any ``optuna.pruners.BasePruner``, each epoch reported as a step (1-based)."""

    name: ClassVar[str] = "pruner"

    def __init__(self, pruner: Any, key: str | None = None):
        self.pruner = pruner
        self.key = key if key is not None else _pickle_key(pruner)

    def rungs(self, num_epochs: int) -> list[int]:
        return list(range(1, num_epochs))

    def make(self, num_epochs: int, num_models: int, mode: str) -> Stopper:
        from cerebro.stopping._pruner import PrunerStopper

        return PrunerStopper(pickle.loads(cloudpickle.dumps(self.pruner)), mode)

    def to_json(self) -> dict[str, Any]:
        return {"type": f"pruner:{type(self.pruner).__name__}", "key": self.key}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OptunaPruner) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"OptunaPruner({self.pruner!r})"


def _pickle_key(obj: Any) -> str:
    """A pruner's identity: the hash of its pickle as given (as NOTE [ a sampler's
    identity ] in ``cerebro/_settings.py``)."""
    try:
        data = pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - one holding a lambda: cloudpickle takes it
        data = cloudpickle.dumps(obj)
    return hashlib.sha256(data).hexdigest()[:16]


_NAMES: dict[str, type[EarlyStopping]] = {
    c.name: c for c in (SuccessiveHalving, Hyperband, ASHA, MedianStopping)
}


def parse_early_stopping(value: Any, num_epochs: int) -> EarlyStopping | None:
    """``early_stopping=`` as a checked rule: None, a name (``"sha"``, ``"asha"``,
    ``"hyperband"``, ``"median"``: its defaults), a rule object, or an Optuna pruner."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in _NAMES:
            raise ParamsError(
                f"early_stopping must be one of {', '.join(map(repr, _NAMES))}, a rule such "
                "as cerebro.stopping.ASHA(grace_period=2), an optuna.pruners pruner or "
                f"None, got {value!r}."
            )
        rule: EarlyStopping = _NAMES[value]()
    elif isinstance(value, EarlyStopping):
        rule = value
    else:
        import optuna

        if not isinstance(value, optuna.pruners.BasePruner):
            raise TypeError(
                "early_stopping must be 'sha', 'asha', 'hyperband', 'median', a "
                "cerebro.stopping rule, an optuna.pruners.BasePruner or None, got "
                f"{type(value).__name__} ({value!r:.60})."
            )
        rule = OptunaPruner(value)
    rule.check(num_epochs)
    return rule


def from_json(d: dict[str, Any] | None, pruner: Any = None) -> EarlyStopping | None:
    """Read back :meth:`EarlyStopping.to_json` (a pruner instance is passed in)."""
    if d is None:
        return None
    kind = d["type"]
    if kind.startswith("pruner:"):
        return OptunaPruner(pruner, d["key"])
    knobs = {k: v for k, v in d.items() if k != "type"}
    return _NAMES[kind](**knobs)
