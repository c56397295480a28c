"""Where hops run. The controller talks to an :class:`Engine`; the scheduler knows none.

NOTE [ engine contract ]
``submit(worker, task)`` starts one hop on a worker slot, or, if the slot is running one,
queues it to start the moment that one ends (the scheduler's NOTE [ Next hops ]): a slot
runs its hops in the order submitted. ``poll(timeout)`` returns the events that happened
(a hop finished, a user function failed, a worker was lost and is being replaced), each
slot's in the order submitted; ``shutdown()`` stops every worker. A lost worker's hops
(the running one and any queued behind it) are each reported once as :class:`WorkerLost`
and never also as done, so the controller can re-run them.
"""

from __future__ import annotations

from typing import Protocol

from cerebro.engine.messages import EngineEvent, HopDone, HopFailed, HopTask, WorkerLost

__all__ = ["Engine", "EngineEvent", "HopDone", "HopFailed", "WorkerLost"]


class Engine(Protocol):
    """Runs hops on worker slots ``0 .. workers-1``, each holding its own partitions.

    Every engine passes the same suite, ``tests/test_engine_contract.py`` (the local and
    Ray engines, and :class:`cerebro.testing.FakeEngine`); each method's docstring is its
    part of NOTE [ engine contract ].
    """

    @property
    def workers(self) -> int:
        """How many worker slots; fixed for the engine's life. Each slot's worker runs the
        spec's set-up hooks (``initialize_worker``, ``read_misc``) once when it starts, not
        per hop, and so does each worker that replaces a lost one."""
        ...

    def submit(self, worker: int, task: HopTask) -> None:
        """Give ``task`` to slot ``worker`` and return at once.

        The hop starts at once if the slot is idle; otherwise it starts the moment the
        hops submitted there before it have ended (or once the slot's replacement worker
        is set up): a slot runs its hops one at a time, in the order submitted. Any number
        may wait (the controller queues at most one behind the running hop). Every hop
        submitted is reported by :meth:`poll` exactly once.
        """
        ...

    def poll(self, timeout: float | None = None) -> list[EngineEvent]:
        """Wait up to ``timeout`` seconds (None: no limit) for hops to end; return what
        happened since the last poll, possibly nothing (a wait may end early with no
        event, e.g. when a replacement worker finishes setting up).

        Each submitted hop comes back once, as exactly one of :class:`HopDone`,
        :class:`HopFailed` (the user's code failed, or a system error such as a full disk
        marked ``system``: the worker lives on) or :class:`WorkerLost`; one slot's events
        come in the order its hops were submitted. When a worker dies, the hop it ran
        (``started``) and each hop queued behind it (not ``started``) are reported as
        :class:`WorkerLost` and never also as done, so the caller may submit them again; a
        fresh worker replaces it in the background, and the slot takes hops at once.

        Raises:
            UserCodeError: a replacement worker's set-up hook failed.
            WorkerError: a slot died too often, or its replacement cannot start.
            Either is raised by the poll that finds it only when that poll has no event
            to return; otherwise its events come back and the next poll raises, so a hop
            that finished on another slot at the same moment is never lost.
        """
        ...

    def shutdown(self) -> None:
        """Stop every worker, abandoning the hops in flight (they are not reported).

        Called once the caller is done, also after :meth:`poll` raised; returns within
        seconds even while a hop runs. No worker of the engine is left running after it.
        """
        ...
