"""An in-memory engine: hops are run by a function of the test, in this process."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cerebro.engine import EngineEvent, HopDone, HopFailed, WorkerLost
from cerebro.engine._pending import PendingError
from cerebro.engine.messages import HopOutcome, HopTask, UserFailure
from cerebro.errors import WorkerError

__all__ = ["Crash", "FakeEngine", "HopResult", "done"]


@dataclass(frozen=True)
class Crash:
    """What a :class:`FakeEngine` ``run`` function returns for a hop whose worker dies
    running it, as a segfault or the OOM killer would end a worker process."""

    reason: str = "the worker process died (FakeEngine: Crash)"


HopResult = HopOutcome | UserFailure | Crash | None
"""What ``run`` returns: the hop's outcome, the user's failure, a :class:`Crash`, or None
while the hop is still running (it is asked again at the next poll)."""


def done(task: HopTask, loss: float = 0.5) -> HopOutcome:
    """A hop that went well: one minibatch of 4 rows with ``loss`` (the default ``run``)."""
    now = time.time()
    return HopOutcome({"loss": [loss]}, [4], 4, now, now, 0.0, 0.0, 0.0)


class FakeEngine:
    """An :class:`~cerebro.engine.Engine` that runs hops in this process, for tests of the
    code that drives an engine (a controller, a loop over events) and of fault handling
    without processes, as httpx's ``MockTransport`` stands in for the network.

    A submitted hop is in flight from :meth:`submit` until the :meth:`poll` that reports
    it; each poll calls ``run(worker, task)`` for each slot's hops in the order submitted,
    and reports every hop ``run`` has finished, so that several hops (a queued one and the
    one ahead of it, two slots' hops) end in the same poll. The fake never blocks: a hop
    that is still running (``run`` returned None) or that waits for a replacement's set-up
    is asked again at the next poll.

    Args:
        workers: how many worker slots.
        run: ``run(worker, task)`` -> :data:`HopResult`. Default: every hop is
            :func:`done`.
        setup: ``setup(worker)`` -> bool, called when a slot's worker starts (at
            construction, and for each replacement) until it returns True, once per poll;
            the slot's hops wait until then. What it raises, :meth:`poll` (or the
            constructor) raises, as a real engine raises a failed set-up hook's
            :class:`~cerebro.errors.UserCodeError` (after the events of that poll, as
            :meth:`Engine.poll` says). Default: ready at once.
        max_restarts: how many times one slot may be replaced before :meth:`poll` raises
            :class:`~cerebro.errors.WorkerError`, as the real engines do.

    Attributes:
        submitted: every ``(worker, task)`` given to :meth:`submit`, in order.
        most_in_flight: the most hops one slot has held at once (running and queued).

    Example:
        >>> from cerebro.testing import Crash, FakeEngine, done
        >>> engine = FakeEngine(2, run=lambda w, t: Crash() if t.model_id == "m1" else done(t))
    """

    def __init__(
        self,
        workers: int = 2,
        run: Callable[[int, HopTask], HopResult] | None = None,
        *,
        setup: Callable[[int], bool] | None = None,
        max_restarts: int = 3,
    ):
        self.workers = workers
        self.submitted: list[tuple[int, HopTask]] = []
        self.most_in_flight = 0
        self._run = run or (lambda w, task: done(task))
        self._setup = setup or (lambda w: True)
        self._max_restarts = max_restarts
        self._restarts = [0] * workers
        self._tasks: list[list[HopTask]] = [[] for _ in range(workers)]
        self._setting_up = set(range(workers))
        self._lost: list[EngineEvent] = []  # killed by kill_worker, reported at the next poll
        self._closed = False
        self._pending = PendingError()  # for the next poll to raise (Engine.poll)
        for w in range(workers):
            self._set_up(w)

    def submit(self, worker: int, task: HopTask) -> None:
        """Queue ``task`` on ``worker``; it runs at the next poll, after the slot's earlier
        hops."""
        if self._closed:
            raise RuntimeError("FakeEngine.submit after shutdown()")
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker should be in 0..{self.workers - 1}, but got {worker}")
        self._tasks[worker].append(task)
        self.submitted.append((worker, task))
        self.most_in_flight = max(self.most_in_flight, len(self._tasks[worker]))

    def poll(self, timeout: float | None = None) -> list[EngineEvent]:
        """Run each slot's hops in order until one is still running; return what ended.

        A poll after :meth:`kill_worker` reports only the hops it lost. ``timeout`` is
        ignored: the fake never waits.
        """
        self._pending.raise_unless()  # found by the last poll, which had events to return
        events, self._lost = self._lost, []
        if events:  # a kill is reported first; the replacement sets up from the next poll
            return events
        for w in range(self.workers):
            try:
                self._poll_slot(w, events)
            except Exception as e:  # noqa: BLE001 - raised once the other slots are read
                self._pending.keep(e)
        self._pending.raise_unless(events)
        return events

    def _poll_slot(self, w: int, events: list[EngineEvent]) -> None:
        if w in self._setting_up and not self._set_up(w):
            return
        tasks = self._tasks[w]
        while tasks:
            result = self._run(w, tasks[0])
            if result is None:
                break
            if isinstance(result, Crash):
                events += self._lose(w, result.reason)
                break
            task = tasks.pop(0)
            if isinstance(result, UserFailure):
                events.append(HopFailed(w, task, result))
            else:
                events.append(HopDone(w, task, result))

    def shutdown(self) -> None:
        """Drop every hop in flight; later polls report nothing."""
        self._closed = True
        for tasks in self._tasks:
            tasks.clear()
        self._lost.clear()

    def kill_worker(self, worker: int) -> None:
        """Testing hook (:mod:`cerebro.testing`): slot ``worker``'s worker dies now; the next
        poll reports its hops as lost and its replacement starts setting up."""
        self._lost += self._lose(worker, "the worker process was killed (FakeEngine)")

    def _lose(self, w: int, reason: str) -> list[EngineEvent]:
        """Slot ``w`` died: its hops are lost (the first was running), a replacement starts."""
        lost, self._tasks[w] = self._tasks[w], []
        self._restarts[w] += 1
        if self._restarts[w] > self._max_restarts:
            raise WorkerError(
                f"worker {w} died {self._restarts[w]} times (last: {reason}); stopping "
                "rather than looping."
            )
        self._setting_up.add(w)
        queued = " (this hop was queued behind the one it was running)"
        return [
            WorkerLost(w, task, reason + (queued if k else ""), started=k == 0)
            for k, task in enumerate(lost)
        ]

    def _set_up(self, w: int) -> bool:
        if self._closed or not self._setup(w):
            return False
        self._setting_up.discard(w)
        return True
