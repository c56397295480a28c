"""The error a poll found while it had events to return (the rule of ``Engine.poll``).

A replacement's failed set-up or a slot that died too often is raised by the poll that
finds it only when that poll has no event to return; otherwise its events go back first
and the next poll raises, so a hop another slot finished at the same moment is not lost.
Every engine (local, Ray, the fake) keeps one of these.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["PendingError"]


class PendingError:
    """At most one error waiting to be raised: the first one found."""

    def __init__(self) -> None:
        self._error: BaseException | None = None

    def keep(self, error: BaseException) -> None:
        """Remember ``error`` (unless an earlier one waits) while the poll reads on."""
        if self._error is None:
            self._error = error

    def raise_unless(self, events: Sequence[object] = ()) -> None:
        """Raise the waiting error, if any, unless there are ``events`` to return first."""
        if self._error is not None and not events:
            error, self._error = self._error, None
            raise error
