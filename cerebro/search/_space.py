"""Search spaces: the distributions a user writes, checked once, with the key in every error.

A space is ``{name: values}`` where values are a list (a grid axis; a categorical choice for
a sampler) or one of :func:`uniform`, :func:`loguniform`, :func:`randint`, :func:`choice`;
or a list of such dicts, each a sub-space, their union being the space (scikit-learn's
``ParameterGrid`` convention). Ranges mean what Optuna's ``suggest_*`` mean: both ends
included for :func:`randint`, ``log=True`` samples uniformly in the logarithm.

NOTE [ one range for every sampler ]
A distribution is turned into exactly one Optuna distribution (:meth:`Distribution.
to_optuna`) and every sampler, random included, draws from that: ``loguniform(1e-4, 1e-1)``
is [1e-4, 1e-1] whichever sampler is used (the Spark-based Cerebro gave its random and TPE
searches two different ranges for the same spelling).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cerebro.errors import ParamsError

__all__ = [
    "Choice",
    "Distribution",
    "FloatRange",
    "IntRange",
    "Space",
    "choice",
    "loguniform",
    "parse_space",
    "randint",
    "uniform",
]

_PRIMITIVE = (type(None), bool, int, float, str)


class Distribution:
    """Base of the searchable distributions (not a grid axis)."""

    def check(self, key: str) -> None:
        """Raise a ``ParamsError`` naming ``key`` if the distribution is malformed."""
        raise NotImplementedError

    def to_optuna(self) -> Any:
        """The Optuna distribution that every sampler draws from."""
        raise NotImplementedError

    def decode(self, value: Any) -> Any:
        """The hyperparameter value for what Optuna drew."""
        return value

    def to_json(self) -> dict[str, Any]:
        """A JSON form that :func:`from_json` reads back (saved for resume)."""
        raise NotImplementedError


def _number(key: str, what: str, v: Any, kind: type | tuple[type, ...]) -> None:
    if isinstance(v, bool) or not isinstance(v, kind):
        raise TypeError(f"param_grid[{key!r}]: {what} must be a number, got {v!r}.")
    if isinstance(v, float) and not math.isfinite(v):
        raise ParamsError(f"param_grid[{key!r}]: {what} must be finite, got {v!r}.")


@dataclass(frozen=True)
class FloatRange(Distribution):
    """A float in [low, high]; ``log`` samples uniformly in log space, ``step`` quantizes."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    def check(self, key: str) -> None:
        name = "loguniform" if self.log else "uniform"
        _number(key, "low", self.low, (int, float))
        _number(key, "high", self.high, (int, float))
        if not self.low < self.high:
            raise ParamsError(
                f"param_grid[{key!r}] = {name}({self.low!r}, {self.high!r}): low must be below "
                f"high; write {name}({min(self.low, self.high)!r}, "
                f"{max(self.low, self.high)!r}), or [{self.low!r}] for one value."
            )
        if self.log and self.low <= 0:
            raise ParamsError(
                f"param_grid[{key!r}] = {name}({self.low!r}, {self.high!r}): a log scale needs "
                "low > 0; use uniform(...) for a range that includes 0, or a small positive low "
                "such as 1e-6."
            )
        if self.step is not None:
            _number(key, "step", self.step, (int, float))
            if self.log:
                raise ParamsError(
                    f"param_grid[{key!r}]: step and log cannot be combined (as in Optuna); "
                    "drop one."
                )
            if self.step <= 0:
                raise ParamsError(
                    f"param_grid[{key!r}]: step must be positive, got {self.step!r}."
                )

    def to_optuna(self) -> Any:
        import optuna

        return optuna.distributions.FloatDistribution(
            float(self.low), float(self.high), log=self.log, step=self.step
        )

    def to_json(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "step": self.step,
                "log": self.log}  # fmt: skip


@dataclass(frozen=True)
class IntRange(Distribution):
    """An int in [low, high], both included (as Optuna's ``suggest_int``)."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def check(self, key: str) -> None:
        _number(key, "low", self.low, int)
        _number(key, "high", self.high, int)
        _number(key, "step", self.step, int)
        if not self.low <= self.high:
            raise ParamsError(
                f"param_grid[{key!r}] = randint({self.low!r}, {self.high!r}): low must not exceed "
                f"high (both ends are included); write randint({self.high!r}, {self.low!r})."
            )
        if self.step < 1:
            raise ParamsError(f"param_grid[{key!r}]: step must be at least 1, got {self.step!r}.")
        if self.log and self.low < 1:
            raise ParamsError(
                f"param_grid[{key!r}] = randint({self.low!r}, {self.high!r}, log=True): a log "
                "scale needs low >= 1."
            )
        if self.log and self.step != 1:
            raise ParamsError(
                f"param_grid[{key!r}]: step and log cannot be combined (as in Optuna); drop one."
            )

    def to_optuna(self) -> Any:
        import optuna

        return optuna.distributions.IntDistribution(
            self.low, self.high, log=self.log, step=self.step
        )

    def to_json(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "step": self.step,
                "log": self.log}  # fmt: skip


@dataclass(frozen=True)
class Choice(Distribution):
    """One of ``values``. Values Optuna cannot store (lists, dicts) are drawn by index."""

    values: tuple[Any, ...]

    def check(self, key: str) -> None:
        if not self.values:
            raise ParamsError(f"param_grid[{key!r}] = choice([]): give at least one value.")
        for v in self.values:
            try:
                json.dumps(v)
            except TypeError as e:
                raise TypeError(
                    f"param_grid[{key!r}] holds {v!r} ({type(v).__name__}), which cannot be "
                    "stored in the catalog; use numbers, strings, booleans, None or lists of "
                    "them."
                ) from e

    @property
    def _by_index(self) -> bool:
        return not all(isinstance(v, _PRIMITIVE) for v in self.values)

    def to_optuna(self) -> Any:
        import optuna

        values = tuple(range(len(self.values))) if self._by_index else self.values
        return optuna.distributions.CategoricalDistribution(values)

    def decode(self, value: Any) -> Any:
        return self.values[value] if self._by_index else value

    def to_json(self) -> dict[str, Any]:
        return {"type": "choice", "values": list(self.values)}


def uniform(
    low: float, high: float, *, step: float | None = None, log: bool = False
) -> FloatRange:
    """A float drawn uniformly from [low, high] (``log=True``: uniformly in its logarithm)."""
    return FloatRange(low, high, step, log)


def loguniform(low: float, high: float) -> FloatRange:
    """A float in [low, high], uniform in log space (learning rates, weight decay)."""
    return FloatRange(low, high, None, True)


def randint(low: int, high: int, *, step: int = 1, log: bool = False) -> IntRange:
    """An int in [low, high], both ends included as in Optuna (Ray Tune's excludes high)."""
    return IntRange(low, high, step, log)


def choice(values: Sequence[Any]) -> Choice:
    """One of ``values``, as a categorical for samplers (a plain list is the same)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"choice() takes a list of values, got {values!r}.")
    return Choice(tuple(values))


def from_json(d: Mapping[str, Any]) -> Distribution:
    """Read back :meth:`Distribution.to_json`."""
    kind = d.get("type")
    if kind == "float":
        return FloatRange(d["low"], d["high"], d.get("step"), bool(d.get("log")))
    if kind == "int":
        return IntRange(d["low"], d["high"], d.get("step", 1), bool(d.get("log")))
    if kind == "choice":
        return Choice(tuple(d["values"]))
    raise ValueError(f"not a saved distribution: {dict(d)!r}")


@dataclass(frozen=True)
class Space:
    """A checked space: one or more sub-spaces, each ``{name: list | Distribution}``."""

    parts: tuple[dict[str, list[Any] | Distribution], ...]

    @property
    def is_grid(self) -> bool:
        """Whether every axis is a plain list (so ``search="grid"`` can enumerate it)."""
        return all(isinstance(v, list) for p in self.parts for v in p.values())

    def to_json(self) -> list[dict[str, Any]]:
        """A JSON form for the run directory (``{"dist": ...}`` for a distribution)."""

        def axis(v: list[Any] | Distribution) -> Any:
            return {"dist": v.to_json()} if isinstance(v, Distribution) else v

        return [{k: axis(v) for k, v in p.items()} for p in self.parts]

    @staticmethod
    def from_json(parts: Sequence[Mapping[str, Any]]) -> Space:
        """Read back :meth:`to_json`."""
        return Space(
            tuple(
                {
                    k: (from_json(v["dist"]) if isinstance(v, dict) and "dist" in v else list(v))
                    for k, v in p.items()
                }
                for p in parts
            )
        )


def parse_space(space: Any, *, search: str = "grid") -> Space:
    """Check a user's space (or grid) and return it as a :class:`Space`.

    Raises:
        TypeError: not a dict (or a list of dicts), a key that is not a str, an axis that
            is neither a list nor a distribution.
        ParamsError: an empty space or axis, a malformed distribution, no ``batch_size``
            or a ``batch_size`` that cannot be a positive int, a distribution under
            ``search="grid"``.
    """
    if isinstance(space, Mapping):
        parts: Sequence[Any] = [space]
    elif isinstance(space, list | tuple) and space and all(isinstance(p, Mapping) for p in space):
        parts = space
    else:
        raise TypeError(
            f"param_grid must be a dict of lists {{name: [values] or a distribution}}, or a "
            f"list of such dicts, got {type(space).__name__} ({str(space)[:80]})."
        )
    out = []
    for i, part in enumerate(parts):
        where = "" if len(parts) == 1 else f" (sub-space {i})"
        out.append(_parse_part(part, search, where))
    return Space(tuple(out))


def _parse_part(part: Mapping[Any, Any], search: str, where: str) -> dict[str, Any]:
    if not part:
        raise ParamsError(f"param_grid{where} is empty; give at least {{'batch_size': [32]}}.")
    axes: dict[str, Any] = {}
    for key, values in part.items():
        if not isinstance(key, str):
            raise TypeError(f"param_grid keys must be strings, got {key!r}{where}.")
        if isinstance(values, Distribution):
            values.check(key)
            if search == "grid":
                raise ParamsError(
                    f"param_grid[{key!r}]{where} is {values!r}, a distribution, but search='grid' "
                    f"can only enumerate lists: pass search='random' or 'tpe' (with "
                    f"num_models=N), or give {key!r} a list of values."
                )
            axes[key] = values
            continue
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise TypeError(
                f"param_grid[{key!r}]{where} must be a list of values or a distribution "
                f"(uniform, loguniform, randint, choice), got {values!r}; write "
                f"{key!r}: [{values!r}] for a single value."
            )
        if len(values) == 0:
            raise ParamsError(
                f"param_grid[{key!r}]{where} is an empty list; give at least one value."
            )
        Choice(tuple(values)).check(key)
        axes[key] = list(values)
    _check_batch_size(axes.get("batch_size"), where)
    return axes


def _check_batch_size(axis: Any, where: str) -> None:
    if axis is None:
        raise ParamsError(
            f"param_grid{where} needs 'batch_size' (minibatch size, a positive integer): "
            "e.g. param_grid['batch_size'] = [32, 64]."
        )
    if isinstance(axis, IntRange):
        if axis.low < 1:
            raise ParamsError(f"param_grid['batch_size']{where} = {axis!r} must stay at least 1.")
        return
    values = axis.values if isinstance(axis, Choice) else axis
    if not isinstance(values, list | tuple):
        raise ParamsError(
            f"param_grid['batch_size']{where} must be a list, choice() or randint() of positive "
            f"integers, got {axis!r}."
        )
    for b in values:
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise ParamsError(
                f"param_grid['batch_size']{where} must hold positive integers, got {b!r}."
            )
