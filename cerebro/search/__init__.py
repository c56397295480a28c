"""Search spaces and searches: the grid, or any Optuna sampler asked while a fit runs.

Example:
    >>> from cerebro.search import choice, loguniform, randint
    >>> space = {"lr": loguniform(1e-4, 1e-1), "hidden": randint(32, 256, step=32),
    ...          "act": choice(["relu", "tanh"]), "batch_size": [32, 64]}
    >>> parse_space(space, search="tpe").is_grid
    False
"""

from __future__ import annotations

from cerebro.search._base import Search
from cerebro.search._grid import GridSearch, grid_points
from cerebro.search._space import (
    Choice,
    Distribution,
    FloatRange,
    IntRange,
    Space,
    choice,
    loguniform,
    parse_space,
    randint,
    uniform,
)

__all__ = [
    "Choice",
    "Distribution",
    "FloatRange",
    "GridSearch",
    "IntRange",
    "Search",
    "Space",
    "choice",
    "grid_points",
    "loguniform",
    "parse_space",
    "randint",
    "uniform",
]
