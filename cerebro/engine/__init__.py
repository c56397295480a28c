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

from dataclasses import dataclass
from typing import Protocol

from cerebro.worker import HopOutcome, HopTask, UserFailure

__all__ = ["Engine", "EngineEvent", "HopDone", "HopFailed", "WorkerLost"]


@dataclass(frozen=True)
class HopDone:
    worker: int
    task: HopTask
    outcome: HopOutcome


@dataclass(frozen=True)
class HopFailed:
    """The user's code failed in this hop: the model's fault, not the worker's."""

    worker: int
    task: HopTask
    failure: UserFailure


@dataclass(frozen=True)
class WorkerLost:
    """The worker died while running ``task`` (``started``), or while ``task`` was queued
    behind the running one (not ``started``); a fresh worker is replacing it.

    The slot may be given a task at once: it runs as soon as the replacement holds the
    slot's data (the local engine reports the loss without waiting for that start-up).
    """

    worker: int
    task: HopTask
    reason: str
    started: bool = True


EngineEvent = HopDone | HopFailed | WorkerLost


class Engine(Protocol):
    """Runs hops on worker slots ``0 .. workers-1``, each holding its own partitions."""

    workers: int

    def submit(self, worker: int, task: HopTask) -> None: ...

    def poll(self, timeout: float | None = None) -> list[EngineEvent]: ...

    def shutdown(self) -> None: ...
