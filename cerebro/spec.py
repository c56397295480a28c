"""The two classes a user subclasses: :class:`ETLSpec` and :class:`MinibatchSpec`.

They are the whole contract between a data scientist and Cerebro (the "Minibatch spec" page
of the original system, with the loose ends decided in DESIGN.md §2). A subclass is checked
by :func:`check_spec` before any work starts, so a misspelled or mis-declared method fails
in a second with one clear message instead of deep inside a worker an hour later.
"""

from __future__ import annotations

import hashlib
import inspect
import types
from collections.abc import Mapping, Sequence
from typing import Any

from cerebro.errors import SpecError

__all__ = ["ETLSpec", "MinibatchMetrics", "MinibatchSpec", "check_spec", "defines_hook"]


class ETLSpec:
    """How one raw CSV row becomes tensors.

    Cerebro calls these hooks inside its ETL worker processes: :meth:`initialize_worker` and
    :meth:`read_misc` once per process, then :meth:`row_prep` once per row of every split.
    The object travels to the processes by value (cloudpickle), so it may be defined in a
    notebook cell or a script's ``__main__``.

    Example:
        >>> import torch
        >>> class ToyETL(ETLSpec):
        ...     def row_prep(self, row, mode, object_dir):
        ...         x = torch.tensor([row["a"], row["b"]], dtype=torch.float32)
        ...         return x, (None if mode == "predict" else torch.tensor(row["label"]))
        >>> ToyETL().row_prep({"a": 1, "b": 2, "label": 0}, "train", None)[0]
        tensor([1., 2.])
    """

    def initialize_worker(self) -> None:
        """One-time set-up in each ETL process (load a tokenizer, seed a library...)."""

    def read_misc(self, misc_path: str) -> None:
        """Read the ``misc`` files of ``params``; called once per process after set-up.

        Args:
            misc_path: folder holding every file listed under ``params["misc"]``.
        """

    def set_features(self) -> list[str] | list[bool]:
        """Names of the CSV columns whose values are paths of object files (images, ...).

        Or, as the original Cerebro had it, one bool per CSV column in header order (``id``
        included), True for such a column: e.g. ``[False, False, True, False, False]``. The
        bools are matched against the train CSV's header; other splits use the same
        columns by name.

        The paths are relative to the split's ``*_dir`` in ``params``. Before any row is
        processed, Cerebro checks that each names a regular file inside that folder (links
        resolved; absolute paths and ``..`` or links out of it are refused), and
        :meth:`row_prep` gets it normalized. Default: no such columns.
        """
        return []

    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> tuple[Any, Any]:
        """Turn one row into ``(input, label)``.

        Args:
            row: the CSV row as ``{column: value}`` (numbers already parsed); an
                object-file column holds a checked path relative to ``object_dir``: open
                ``os.path.join(object_dir, row[column])``.
            mode: ``"train"``, ``"val"``, ``"test"`` or ``"predict"``.
            object_dir: the split's ``*_dir`` from ``params`` (``None`` when not given).

        Returns:
            ``(input, label)``: each a tensor, or a tuple/list/dict of tensors. ``label`` is
            ``None`` in predict mode.
        """
        raise NotImplementedError


class MinibatchMetrics(dict):  # type: ignore[type-arg]
    """``{metric: [one value per minibatch]}`` for one model, one epoch, one mode.

    A plain dict for the user's :meth:`MinibatchSpec.metrics_agg`, with the size of each
    minibatch in :attr:`batch_sizes` so that the default aggregate can weight by it.
    """

    def __init__(self, values: Mapping[str, Sequence[float]], batch_sizes: Sequence[int]):
        super().__init__({k: list(v) for k, v in values.items()})
        self.batch_sizes: list[int] = list(batch_sizes)


class MinibatchSpec:
    """How to build, train, evaluate and use one model configuration.

    Who calls what, where and how often:

    * :meth:`initialize_worker`, then :meth:`read_misc`: once in each worker process.
    * :meth:`create_model_components`: in a worker, at the start of every hop (the model's
      trained state is loaded into what it returns), so keep it cheap and deterministic.
    * :meth:`train`: once per minibatch of a train partition; :meth:`valtest` once per
      minibatch of a validation or test partition; :meth:`predict` once per minibatch of the
      predict split. ``minibatch`` is ``(inputs, labels)`` (``(inputs, row_ids)`` for
      predict), ``batch_size`` rows or fewer for the last one.
    * :meth:`metrics_agg`: in the controller, once per model, epoch and mode.

    ``hyperparams`` always holds ``batch_size``; every other key is the user's.
    """

    def initialize_worker(self) -> None:
        """One-time set-up in each worker process."""

    def read_misc(self, misc_path: str) -> None:
        """Read the ``misc`` files of ``params``; called once per worker after set-up."""

    def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
        """Build the model objects for one configuration.

        Returns:
            ``{name: object}`` with at least the key ``"optimizer"``. Objects with a
            ``state_dict`` (modules, optimizers, LR schedulers) have their state carried
            from hop to hop; modules are moved to the worker's device first.
        """
        raise NotImplementedError

    def train(
        self,
        model_object: dict[str, Any],
        minibatch: Any,
        hyperparams: dict[str, Any],
        device: Any,
    ) -> dict[str, Any]:
        """Train on one minibatch and return its metrics ``{name: scalar}``.

        Returning ``(model_object, metrics)``, the form of the deployed original, works too.
        """
        raise NotImplementedError

    def valtest(
        self,
        model_object: dict[str, Any],
        minibatch: Any,
        hyperparams: dict[str, Any],
        device: Any,
    ) -> dict[str, Any]:
        """Evaluate one minibatch without updating the model; return ``{name: scalar}``.

        The original's spelling ``val_test`` works too: define either, and this default
        calls ``val_test``. (Nothing is written onto your class, so the same class and
        instance serve any number of calls.)
        """
        val_test = getattr(type(self), "val_test", None)
        if val_test is None:
            raise NotImplementedError
        return val_test(self, model_object, minibatch, hyperparams, device)  # type: ignore[no-any-return]

    def predict(
        self,
        model_object: dict[str, Any],
        minibatch: Any,
        hyperparams: dict[str, Any],
        device: Any,
    ) -> tuple[Sequence[Any], Sequence[float]]:
        """Return ``(classes, confidences)``, one of each per row of the minibatch."""
        raise NotImplementedError

    def metrics_agg(
        self, mode: str, hyperparams: dict[str, Any], metrics: dict[str, list[float]]
    ) -> dict[str, float]:
        """Reduce one epoch's per-minibatch metrics to one value each.

        Args:
            mode: ``"train"``, ``"val"`` or ``"test"``.
            hyperparams: the model's configuration.
            metrics: ``{name: [value per minibatch]}`` of this epoch only (a
                :class:`MinibatchMetrics`, whose ``batch_sizes`` gives each minibatch's size).

        Returns:
            ``{name: float}``. Default: the mean weighted by minibatch size.
        """
        sizes = getattr(metrics, "batch_sizes", None)
        out: dict[str, float] = {}
        for name, values in metrics.items():
            if not values:
                continue
            if sizes is not None and len(sizes) == len(values) and sum(sizes) > 0:
                total = sum(v * n for v, n in zip(values, sizes, strict=True))
                out[name] = float(total / sum(sizes))
            else:
                out[name] = float(sum(values) / len(values))
        return out


# The hooks of each base class with the parameters a subclass must accept, in order.
_HOOKS: dict[type, dict[str, tuple[str, ...]]] = {
    ETLSpec: {
        "initialize_worker": (),
        "read_misc": ("misc_path",),
        "set_features": (),
        "row_prep": ("row", "mode", "object_dir"),
    },
    MinibatchSpec: {
        "initialize_worker": (),
        "read_misc": ("misc_path",),
        "create_model_components": ("hyperparams",),
        "train": ("model_object", "minibatch", "hyperparams", "device"),
        "valtest": ("model_object", "minibatch", "hyperparams", "device"),
        "predict": ("model_object", "minibatch", "hyperparams", "device"),
        "metrics_agg": ("mode", "hyperparams", "metrics"),
    },
}
_REQUIRED: dict[type, tuple[str, ...]] = {
    ETLSpec: ("row_prep",),
    MinibatchSpec: ("create_model_components", "train", "valtest"),
}
# Other names a subclass may give a hook (the original's spellings): name -> the hook.
_ACCEPTED: dict[type, dict[str, str]] = {MinibatchSpec: {"val_test": "valtest"}, ETLSpec: {}}
# Near-misses that are flagged as misspellings of a hook, not taken for it.
_ALIASES = {"val_test": "valtest", "initialize_workers": "initialize_worker"}


def _hook_names(cls: type, kind: type) -> dict[str, str]:
    """``{hook: the name cls defines it under}`` for each hook ``cls`` itself defines.

    Raises:
        SpecError: ``cls`` defines a hook under both of its names.
    """
    own = _defined_names(cls)
    names = {hook: hook for hook in _HOOKS[kind] if hook in own}
    for other, hook in _ACCEPTED[kind].items():
        if other in own:
            if hook in own:
                raise SpecError(
                    f"{cls.__name__} defines both {hook} and {other} (two names of one hook); "
                    f"keep one."
                )
            names[hook] = other
    return names


def defines_hook(spec: object, hook: str) -> bool:
    """Whether the user's spec class defines ``hook`` (under any of its names) rather than
    inheriting the base class's default; for the optional hooks, such as ``predict``."""
    kind = MinibatchSpec if isinstance(spec, MinibatchSpec) else ETLSpec
    return hook in _hook_names(type(spec), kind)


def _defined_names(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in (ETLSpec, MinibatchSpec, object):
            break
        names.update(vars(klass))
    return names


def _accepts(func: Any, expected: tuple[str, ...]) -> str | None:
    """Return why ``func`` (bound) cannot be called with ``expected`` positionally, or None."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None  # builtins / C callables: trust them
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    kw_required = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if len(positional) < len(expected) or len(required) > len(expected) or kw_required:
        got = "(" + ", ".join(p.name for p in params) + ")"
        return f"takes {got} but Cerebro calls it as ({', '.join(expected)})"
    return None


def check_spec(spec: object, kind: type) -> None:
    """Check a user's spec instance against the contract of ``kind`` before any work starts.

    Raises:
        TypeError: ``spec`` is a class rather than an instance, or not a ``kind`` subclass.
        SpecError: a required hook is missing, a hook is not callable, a method name looks
            like a misspelled hook, or a hook's signature does not fit how Cerebro calls it.
    """
    if isinstance(spec, type):
        raise TypeError(
            f"expected an instance of your {kind.__name__} subclass, got the class "
            f"{spec.__name__}; pass {spec.__name__}() instead."
        )
    if not isinstance(spec, kind):
        raise TypeError(
            f"expected a subclass instance of cerebro.{kind.__name__}, got "
            f"{type(spec).__name__}; declare it as `class {type(spec).__name__}"
            f"({kind.__name__}): ...`."
        )
    cls = type(spec)
    own = _defined_names(cls)
    hooks = _HOOKS[kind]
    named = _hook_names(cls, kind)
    for name in _REQUIRED[kind]:
        if name not in named:
            near = _near_miss(name, own, cutoff=0.75)
            hint = f" (found {near!r}: a misspelling?)" if near else ""
            raise SpecError(f"{cls.__name__} must define {kind.__name__}.{name}(){hint}.")
    for name in sorted(own):
        if name.startswith("_") or name in hooks or name in _ACCEPTED[kind]:
            continue
        near = _near_miss(name, set(hooks))
        # Flag only same-length-ish names: `predictor` or `trainer` are the user's own.
        if near and near not in own and abs(len(near) - len(name)) <= 1:
            raise SpecError(
                f"{cls.__name__}.{name} looks like a misspelling of the hook {near!r}; "
                f"Cerebro would never call it. Rename it to {near}."
            )
    for hook, expected in hooks.items():
        name = named.get(hook, hook)
        func = getattr(spec, name, None)
        if not callable(func):
            raise SpecError(f"{cls.__name__}.{name} must be a method, got {type(func).__name__}.")
        why = _accepts(func, expected)
        if why:
            raise SpecError(f"{cls.__name__}.{name} {why}; fix its signature.")


def _near_miss(name: str, candidates: set[str], cutoff: float = 0.85) -> str | None:
    import difflib

    if name in _ALIASES and _ALIASES[name] in candidates:
        return _ALIASES[name]
    match = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=cutoff)
    return match[0] if match and match[0] != name else None


def code_fingerprint(spec: ETLSpec | MinibatchSpec) -> str:
    """A hash of a spec's code (methods, by bytecode) and simple attributes.

    Only the user's classes count, up to :class:`ETLSpec` or :class:`MinibatchSpec`: a
    new version of Cerebro's base classes is not a change of the user's code. The ETL
    fingerprints its spec with it (to reuse its output), a fit its Minibatch spec (to tell
    a resume with edited code from one with the same code).

    Code objects, not source text: a spec unpickled by value (``resume``) has no source
    file to read but the very same code, so it must hash the same.
    """
    h = hashlib.sha256(type(spec).__qualname__.encode())
    for klass in type(spec).__mro__:
        if klass in (ETLSpec, MinibatchSpec):
            break
        for name, value in sorted(vars(klass).items()):
            func = getattr(value, "__func__", value)
            code = getattr(func, "__code__", None)
            if code is not None:
                h.update(name.encode() + _code_bytes(code))
            elif not name.startswith("__"):
                h.update(f"{name}={_simple(value)}".encode())
    for name, value in sorted(vars(spec).items()):
        h.update(f"{name}={_simple(value)}".encode())
    return h.hexdigest()[:16]


def _code_bytes(code: types.CodeType) -> bytes:
    """Bytecode, names and constants of ``code`` and its nested functions (marshal's output
    depends on interning and reference counts, so it is not stable across processes)."""
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        parts.append(
            _code_bytes(const) if isinstance(const, types.CodeType) else repr(const).encode()
        )
    return b"\0".join(parts)


def _simple(value: Any) -> str:
    if isinstance(value, str | int | float | bool | type(None)):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_simple(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k!r}:{_simple(v)}" for k, v in sorted(value.items())) + "}"
    return type(value).__qualname__
