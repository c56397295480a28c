"""The local engine: persistent worker processes on this machine.

Each worker process comes from the experiment's :class:`WorkerPool` (started once, warm,
kept between steps) or is started for this engine alone; per engine it loads its
partitions once (memory-mapped), runs the spec's set-up hooks once, then runs hop after
hop. Workers × threads never exceeds the cores; with GPUs, worker ``i`` gets GPU
``i mod n``.
"""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import wait
from typing import Any

from cerebro.engine import EngineEvent, HopDone, HopFailed, WorkerLost
from cerebro.engine._pending import PendingError
from cerebro.engine._pool import WorkerPool
from cerebro.engine._process import Child, ChildDied, Output, RemoteError
from cerebro.engine.messages import GroupBroken, HopOutcome, HopTask, UserFailure
from cerebro.errors import UserCodeError, WorkerError
from cerebro.spec import MinibatchSpec
from cerebro.worker import run_hop, setup_worker

__all__ = ["LocalEngine", "default_devices", "threads_per_worker"]


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker so that workers × threads ≤ cores."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def default_devices(workers: int) -> list[str]:
    """``<accelerator>:i mod n`` per worker (``cuda:0``, ``xpu:1``...) when this machine has
    an accelerator, else ``cpu`` (``cerebro/worker/_devices.py``)."""
    from cerebro.worker._devices import accelerator, devices_for

    return devices_for(workers, accelerator())


class LocalEngine:
    """Worker processes on this machine, one per slot.

    Args:
        spec: the user's Minibatch spec (sent to each worker by value).
        data_dir: the ETL output folder.
        owned: for each worker, ``{split: [partition indices]}`` it holds.
        misc_dir: folder with the ``misc`` files, given to ``read_misc``.
        threads: torch threads per worker.
        devices: torch device per worker.
        max_restarts: how many times one slot may be restarted before the run stops.
        pool: take the processes from here and give them back at :meth:`shutdown`;
            None starts processes for this engine and stops them at shutdown.
        quiet: without ``pool``, do not show what the user's code prints (with one, the
            pool's ``output`` decides).
        ranks: devices (processes) per worker; None: one each. A worker of several is a
            process group that runs each hop data-parallel (``cerebro/worker/_group.py``).

    What the spec's hooks print in a worker reaches the driver's stdout or stderr,
    prefixed with the worker and the model: ``[worker 1 · m003] Loss: 0.42`` (NOTE [ a
    child's output ] in ``_process``); complete lines of a running hop show at each
    :meth:`poll`.
    """

    def __init__(
        self,
        spec: MinibatchSpec,
        data_dir: str,
        owned: list[dict[str, list[int]]],
        misc_dir: str,
        *,
        threads: int,
        devices: list[str],
        max_restarts: int = 3,
        pool: WorkerPool | None = None,
        quiet: bool = False,
        ranks: list[int] | None = None,
    ):
        self.workers = len(owned)
        self._spec = spec
        self._setup_args: list[tuple[Any, ...]] = [
            (spec, data_dir, owned[w], misc_dir, threads, devices[w]) for w in range(self.workers)
        ]
        for w, k in enumerate(ranks or []):
            if k > 1:  # a process group of k (NOTE [ a worker's process group ])
                self._setup_args[w] += (k,)
        self._env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self._max_restarts = max_restarts
        self.restarts = [0] * self.workers
        self.info: list[dict[str, Any]] = [{} for _ in range(self.workers)]
        # slot -> its hops in the order submitted: the first runs, the rest wait behind it
        # (all of them wait while the slot's replacement process sets up)
        self._tasks: dict[int, list[HopTask]] = {}
        self._setting_up: set[int] = set()  # slots whose replacement process is starting
        self._pending = PendingError()  # for the next poll to raise (Engine.poll)
        self._children: list[Child] = []
        self._pool = pool
        self._output = pool.output if pool is not None else Output(quiet=quiet)
        try:
            if pool is not None:
                self._children = pool.take(self.workers, "worker")
            else:
                self._children = [self._child(w) for w in range(self.workers)]
            for w, child in enumerate(self._children):
                try:
                    child.submit(setup_worker, *self._setup_args[w], label="set-up")
                    self._setting_up.add(w)
                except ChildDied as e:  # a pooled process that died while idle
                    self._restart(w, f"died while idle: {e}")
            while self._setting_up:  # every slot set up before the first hop
                for w in sorted(self._setting_up):
                    self._setup_answered(w)
        except BaseException:
            self.shutdown()
            raise

    def _child(self, w: int) -> Child:
        return Child(f"worker {w}", self._env, output=self._output)

    def _finish_setup(self, w: int, result: Any) -> dict[str, Any]:
        if isinstance(result, UserFailure):
            raise UserCodeError(
                result.message,
                function=result.function,
                where=f"worker {w} set-up",
                user_traceback=result.traceback,
            )
        if isinstance(result, RemoteError):
            raise WorkerError(
                f"worker {w} failed to start: {result.type_name}: "
                f"{result.message}\n{result.traceback}"
            )
        return dict(result)

    def _restart(self, w: int, reason: str, *, counted: bool = True) -> None:
        """Replace worker ``w`` with a fresh process and start its set-up.

        Returns at once: the set-up (process start, ``import torch``, the spec's hooks,
        mapping the partitions: seconds) runs while the other workers' hops go on, and
        :meth:`poll` collects it. A hop submitted to the slot meanwhile waits for it.
        ``counted``: the worker was not at fault (a user hook failed in a hop that broke
        its process group), so this start does not count towards ``max_restarts``.
        """
        if not counted:
            self.restarts[w] -= 1
        while True:
            self.restarts[w] += 1
            if self.restarts[w] > self._max_restarts:
                raise WorkerError(
                    f"worker {w} died {self.restarts[w]} times (last: {reason}); stopping "
                    "rather than looping. Check memory use (dmesg may show the OOM killer) "
                    "and the spec's native code; resume with `cerebro resume DIR` once fixed."
                )
            self._children[w].kill()
            child = self._child(w)
            self._children[w] = child
            try:
                child.submit(setup_worker, *self._setup_args[w], label="set-up")
            except ChildDied as e:
                reason = f"died while starting: {e}"
                continue
            self._setting_up.add(w)
            return

    def _setup_answered(self, w: int) -> None:
        """Collect slot ``w``'s set-up (blocking until it answers), then send its hops.

        Raises:
            UserCodeError: the spec's set-up hook failed.
            WorkerError: the process failed to start, or the slot died too often.
        """
        self._setting_up.discard(w)
        try:
            result = self._children[w].result()
        except ChildDied as e:
            self._restart(w, f"died while starting: {e}")
            return
        self.info[w] = self._finish_setup(w, result)
        for task in self._tasks.get(w, []):
            if not self._send(w, task):
                break

    def _send(self, w: int, task: HopTask) -> bool:
        """Send one hop to slot ``w``'s process; False if it had died and is being replaced."""
        child = self._children[w]
        try:
            child.submit(run_hop, task, label=_label(task))
        except ChildDied:
            if child.busy:
                return True  # died running a hop: poll reports it, and this one, as lost
            # Died while idle: replace it; the hops go to the new process once it is set up.
            self._restart(w, "died while idle")
            return False
        return True

    def kill_worker(self, worker: int) -> None:
        """Testing hook (NOTE [ killing a worker in a test ] in :mod:`cerebro.testing`):
        SIGKILL slot ``worker``'s process, as the OOM killer would; :meth:`poll` finds out
        as it does for any death."""
        os.kill(self._children[worker].pid, signal.SIGKILL)

    def submit(self, worker: int, task: HopTask) -> None:
        """Start ``task`` on ``worker``, or right after the hops already sent there (or once
        its replacement process is set up, if the slot is restarting)."""
        self._tasks.setdefault(worker, []).append(task)
        if worker not in self._setting_up:
            self._send(worker, task)

    def poll(self, timeout: float | None = None) -> list[EngineEvent]:
        """Wait up to ``timeout`` seconds for hops to end; return what happened.

        A replaced worker finishing its set-up also ends the wait (with no event): the hop
        queued for it has just been sent.
        """
        self._pending.raise_unless()  # found by the last poll, which had events to return
        busy = {self._children[w].conn: w for w, t in self._tasks.items() if t}
        busy.update((self._children[w].conn, w) for w in self._setting_up)
        if not busy:
            return []
        events: list[EngineEvent] = []
        ready = wait(list(busy), timeout)
        for conn in ready:
            w = busy[conn]  # type: ignore[index]
            try:
                if w in self._setting_up:
                    self._setup_answered(w)  # no event: a replacement is ready (or retried)
                else:
                    self._collect(w, events)
            except (UserCodeError, WorkerError) as e:
                self._pending.keep(e)  # the other slots' answers are still read
        for conn, w in busy.items():
            if conn not in ready and w < len(self._children):
                self._children[w].stream()  # what a long hop has printed so far
        self._pending.raise_unless(events)
        return events

    def _collect(self, w: int, events: list[EngineEvent]) -> None:
        """Turn slot ``w``'s answers that have arrived into events, oldest first."""
        child, tasks = self._children[w], self._tasks[w]
        while tasks:
            try:
                result = child.result()
            except ChildDied as e:
                lost, self._tasks[w] = tasks, []
                self._restart(w, str(e))
                for k, task in enumerate(lost):
                    why = f"worker process died: {e}"
                    if k:
                        why += " (this hop was queued behind the one it was running)"
                    events.append(WorkerLost(w, task, why, started=k == 0))
                return
            if isinstance(result, GroupBroken):
                self._group_broken(w, result, events)
                return
            events.append(_event(w, tasks.pop(0), result))
            if not (tasks and child.conn.poll(0)):
                return

    def _group_broken(self, w: int, broken: GroupBroken, events: list[EngineEvent]) -> None:
        """Slot ``w``'s hop broke its process group: replace the whole group, and report
        the hop as failed (the user's code) or lost, and the hops queued behind it as lost."""
        lost, self._tasks[w] = self._tasks[w], []
        self._restart(w, broken.reason, counted=broken.failure is None)
        if broken.failure is not None:
            events.append(HopFailed(w, lost[0], broken.failure))
        else:
            events.append(WorkerLost(w, lost[0], f"worker process group broke: {broken.reason}"))
        for task in lost[1:]:
            why = f"worker process group broke: {broken.reason} (this hop was queued behind it)"
            events.append(WorkerLost(w, task, why, started=False))

    def shutdown(self) -> None:
        """Stop every worker (or give it back to the pool); a hop in flight is abandoned."""
        children, self._children = self._children, []
        self._tasks.clear()
        if self._pool is not None:
            self._pool.give_back(children)
            return
        for child in children:
            if child.busy:
                child.kill()
            else:
                child.close_start()
        for child in children:
            if not child.busy:
                child.close(timeout=5)


def _label(task: HopTask) -> str:
    """How a hop's output is labelled: ``m003`` for a train hop, ``m003 val`` otherwise."""
    return task.model_id if task.kind == "train" else f"{task.model_id} {task.kind}"


def _event(w: int, task: HopTask, result: Any) -> EngineEvent:
    if isinstance(result, HopOutcome):
        return HopDone(w, task, result)
    if isinstance(result, UserFailure):
        return HopFailed(w, task, result)
    # RemoteError: an error outside the user's hooks (unpicklable, disk full...)
    assert isinstance(result, RemoteError)
    failure = UserFailure(
        "cerebro worker", f"{result.type_name}: {result.message}", result.traceback, system=True
    )
    return HopFailed(w, task, failure)
