"""Grid search: every point of the space's lists, in a stable order, all asked at once."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from cerebro.params import ModelConfig
from cerebro.search._base import Search
from cerebro.search._space import Space

__all__ = ["GridSearch", "grid_points"]


def grid_points(space: Space) -> list[ModelConfig]:
    """The cross product of each sub-space's lists, sub-spaces in order, ids ``m000``...

    The same space always gives the same ids (the order of the keys as given).
    """
    configs: list[ModelConfig] = []
    for part in space.parts:
        keys = list(part)
        for combo in itertools.product(*(part[k] for k in keys)):  # type: ignore[arg-type]
            hyperparams = dict(zip(keys, combo, strict=True))
            configs.append(ModelConfig(f"m{len(configs):03d}", hyperparams))
    return configs


class GridSearch(Search):
    """Every grid point, asked in order; results change nothing (today's ``run_fit``)."""

    def __init__(self, space: Space, max_live: int | None = None):
        self.configs = grid_points(space)
        self.max_live = max_live
        self._next = 0

    def ask(self) -> ModelConfig | None:
        if self._next >= len(self.configs):
            return None
        self._next += 1
        return self.configs[self._next - 1]

    @property
    def finished(self) -> bool:
        return self._next >= len(self.configs)

    def tell(self, model_id: str, value: float | None, status: str) -> None:
        pass

    def restore(self, models: Sequence[tuple[ModelConfig, str, float | None]]) -> None:
        self._next = max(self._next, len(models))
