"""The seam between a fit and where its models come from: ask for models, tell their ends.

NOTE [ search seam ]
The controller asks the search for a model whenever it has room for one more live model
(:attr:`Search.max_live`) and tells it each model's end (done, failed, diverged) with the
model's objective, which the search may use to choose the next ones. The fit ends when
the search is :attr:`~Search.finished` and no model is live. A model's id, hence its seed
(a function of the fit seed and the model's index, see ``_fit_state.derive_seed``), is
fixed by the order of asks alone, never by how many models exist or finished first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from cerebro.params import ModelConfig

__all__ = ["Search"]


class Search(ABC):
    """Where a fit's models come from: the grid, or a sampler asked while the fit runs."""

    #: Most models training at once; None: no bound (every model asked at the start).
    max_live: int | None = None

    @abstractmethod
    def ask(self) -> ModelConfig | None:
        """The next model to train, or None when none may be asked now (or ever)."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """No model will be asked any more."""

    @abstractmethod
    def tell(self, model_id: str, value: float | None, status: str) -> None:
        """Model ``model_id`` ended with ``status`` (``done``, ``stopped`` by early
        stopping, ``failed``, ``diverged``) and the best ``value`` of the objective it
        reached (None if it has none)."""

    def report(self, model_id: str, epochs: int, value: float) -> None:  # noqa: B027
        """Model ``model_id`` finished epoch ``epochs`` (1-based) with objective ``value``
        (an Optuna trial's intermediate value: its curve, and a pruned trial's value)."""

    @abstractmethod
    def restore(self, models: Sequence[tuple[ModelConfig, str, float | None]]) -> None:
        """Resume: the models the catalog holds, in ask order, with their status and value.

        Asks already made are not made again; ends the search was not told of (a driver
        killed in between) are told now.
        """
