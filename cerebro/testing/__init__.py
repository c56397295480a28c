"""Helpers for tests of engines, and of the code that drives one.

For Cerebro's own tests and for users who write an :class:`~cerebro.engine.Engine` of their
own (another cluster manager, a queue): :class:`FakeEngine` is an in-memory engine whose
hops a function of the test runs, so that a loop over engine events, and its fault
handling, can be tested without starting a process (cf. httpx's ``MockTransport``).

NOTE [ killing a worker in a test ]
The engine contract suite (``tests/test_engine_contract.py``, cf. optuna's
``testing/pytest_storages.py``) runs every engine through the same cases, and kills workers
through one testing hook that is not part of the :class:`~cerebro.engine.Engine` protocol:
``engine.kill_worker(worker)`` ends slot ``worker``'s worker at once, as the OOM killer
would, and the engine finds out as it does for any death. :class:`FakeEngine`,
``LocalEngine`` and ``RayEngine`` (an actor on this machine) offer it; an engine of yours
that offers it too (:class:`KillableEngine`) can run the suite. A test kills when the run
has reached a state it can see (a hop inside its ``train``, a number of hops done), never
after a sleep.

Importing this module imports neither torch nor Ray.
"""

from __future__ import annotations

from typing import Protocol

from cerebro.engine import Engine
from cerebro.testing._fake import Crash, FakeEngine, HopResult, done

__all__ = ["Crash", "FakeEngine", "HopResult", "KillableEngine", "done"]


class KillableEngine(Engine, Protocol):
    """An :class:`~cerebro.engine.Engine` with the testing hook that the contract suite
    uses (NOTE [ killing a worker in a test ])."""

    def kill_worker(self, worker: int) -> None:
        """End slot ``worker``'s worker now, as a SIGKILL would: the hop it runs and those
        queued behind it are lost (reported by a later :meth:`poll`) and a replacement
        starts. Returns at once."""
        ...
