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
    """Runs hops on worker slots ``0 .. workers-1``, each holding its own partitions."""

    workers: int

    def submit(self, worker: int, task: HopTask) -> None: ...

    def poll(self, timeout: float | None = None) -> list[EngineEvent]: ...

    def shutdown(self) -> None: ...
