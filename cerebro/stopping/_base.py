"""The seam between a fit and its early stopping: report each epoch, hear continue or stop.

NOTE [ stopping seam ]
After each epoch's validation the controller reports the model's objective (``report``,
with the epochs it has trained, 1-based: the resource is epochs, never seconds). The stopper
answers ``"continue"``, ``"stop"`` or ``"wait"``: a synchronous rung (``sha``,
``hyperband``) holds a model until every model of its rung has reported, then decides them
all at once (:meth:`Stopper.resolved`). The controller also says when a model joins
(``add``, in ask order), ends (``end``) and when the search will ask no more
(``no_more_models``), since a synchronous rung may be waiting for models not asked yet.

A stopper is pure logic: no I/O, no clock. Its state is a function of that sequence of
calls, which the catalog records (table ``stopping``) in the same transaction as the epoch
it came from, so a resumed fit replays the calls and has the same rungs and decisions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

__all__ = ["Decision", "Stopper"]

Decision = Literal["continue", "stop", "wait"]


class Stopper(ABC):
    """Decides at epoch boundaries which models train on (see NOTE [ stopping seam ])."""

    def add(self, model_id: str) -> None:  # noqa: B027 - most stoppers need no notice
        """Model ``model_id`` joined the fit (called in ask order)."""

    @abstractmethod
    def report(self, model_id: str, epochs: int, value: float) -> Decision:
        """The model finished epoch ``epochs`` (1-based) with objective ``value`` (NaN:
        none). Returns what the model does next (ignored after its last epoch)."""

    def end(self, model_id: str, status: str) -> None:  # noqa: B027
        """The model ended: ``done`` (all epochs), ``stopped``, ``failed`` or ``diverged``."""

    def no_more_models(self) -> None:  # noqa: B027
        """The search will ask no more models."""

    def resolved(self) -> list[tuple[str, Decision]]:
        """Models that waited and are now decided (``continue`` or ``stop``), since the
        last call, in a fixed order."""
        return []
