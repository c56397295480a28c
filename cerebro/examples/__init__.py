"""Bundled example experiments, runnable with ``cerebro example NAME``.

Each example is an experiment file (a module defining ``etl_spec``, ``minibatch_spec``,
``params``, ``param_grid`` and ``num_epochs``) whose data comes from an installed package,
so nothing is downloaded.

Example:
    >>> sorted(EXAMPLES)
    ['digits', 'mnist']
    >>> example_path("digits").endswith("digits.py")
    True
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXAMPLES", "example_path"]

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
