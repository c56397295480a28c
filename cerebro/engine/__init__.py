"""Where hops run. The controller talks to an :class:`Engine`; the scheduler knows none.

NOTE [ engine contract ]
``submit(worker, task)`` starts one hop on an idle worker slot; ``poll(timeout)`` returns
the events that happened (a hop finished, a user function failed, a worker was lost and
is being replaced); ``shutdown()`` stops every worker. A lost worker's hop is reported once
as :class:`WorkerLost` and never also as done, so the controller can re-run it.
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
    """The worker died while running ``task``; a fresh worker is replacing it.

    The slot may be given a task at once: it runs as soon as the replacement holds the
    slot's data (the local engine reports the loss without waiting for that start-up).
    """

    worker: int
    task: HopTask
    reason: str


EngineEvent = HopDone | HopFailed | WorkerLost


class Engine(Protocol):
    """Runs hops on worker slots ``0 .. workers-1``, each holding its own partitions."""

    workers: int

    def submit(self, worker: int, task: HopTask) -> None: ...

    def poll(self, timeout: float | None = None) -> list[EngineEvent]: ...

    def shutdown(self) -> None: ...
