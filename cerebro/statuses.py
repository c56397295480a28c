"""The statuses a fit, a model and a hop go through: the one list of them.

They are ``StrEnum`` members, so each is also the plain string the catalog stores and the
result table shows (``ModelStatus.STOPPED == "stopped"``): a catalog written before this
module existed reads the same, and a user filters ``table[table.status == "stopped"]``.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DROPPED", "ENDED_EARLY", "FINAL", "LIVE", "FitStatus", "HopStatus", "ModelStatus"]


class ModelStatus(StrEnum):
    """Where one model of a fit is.

    The catalog stores the first six; ``WAITING`` and ``INTERRUPTED`` are what a reader
    (``cerebro status``, the report, the result table) shows for a stored ``RUNNING``
    model that is held at a synchronous rung of early stopping, or whose driver died.
    """

    PENDING = "pending"  # asked for, no hop started yet
    RUNNING = "running"  # has hops left to run
    DONE = "done"  # trained every epoch
    FAILED = "failed"  # the user's code raised or returned something unusable
    DIVERGED = "diverged"  # a metric became NaN or infinite
    STOPPED = "stopped"  # early stopping ended it; it keeps its metrics and checkpoints
    WAITING = "waiting"  # shown only: at a rung, waiting for the rest of its bracket
    INTERRUPTED = "interrupted"  # shown only: its driver died; ``resume`` continues it


DROPPED = frozenset({ModelStatus.FAILED, ModelStatus.DIVERGED})
"""Models that ended by an error: never ranked, never the best."""

ENDED_EARLY = DROPPED | {ModelStatus.STOPPED}
"""Models that ended before ``num_epochs``: no more hops will come."""

FINAL = ENDED_EARLY | {ModelStatus.DONE}
"""Models that will never run another hop of this fit."""

LIVE = frozenset({ModelStatus.PENDING, ModelStatus.RUNNING, ModelStatus.WAITING})
"""Models that still have hops to come."""


class FitStatus(StrEnum):
    """Where a fit is: ``RUNNING`` until its driver ends it (or dies, leaving it so).

    The catalog stores the first three; ``INTERRUPTED`` is what a reader shows for a
    stored ``RUNNING`` fit whose driver is dead.
    """

    RUNNING = "running"
    DONE = "done"  # every model ended
    STOPPED = "stopped"  # the driver left on an error or Ctrl-C; ``resume`` continues it
    INTERRUPTED = "interrupted"  # shown only: its driver died; ``resume`` continues it


class HopStatus(StrEnum):
    """One hop's record in the catalog."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # the user's code failed in it
    DIVERGED = "diverged"  # a metric in it was NaN or infinite
    LOST = "lost"  # its worker or the driver died during it; it runs again
