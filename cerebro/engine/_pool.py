"""Worker processes that outlive one step of an experiment.

Starting a fresh worker costs seconds of CPU (the interpreter, ``import torch``, and the
lazy import of torch's compiler stack that the first optimizer triggers: about 2.4 s on one
core), more than a whole small fit. Children are forked from a fork server that paid it
once (NOTE [ the zygote ] in ``_process``), which makes a start cheap, but a worker still
holds what it loaded for a step (partitions, the spec's set-up, cached models), and a
fork server is not always there (``CEREBRO_FORK_SERVER=0``, not Linux). An
:class:`~cerebro.Experiment` therefore keeps its
worker processes in a :class:`WorkerPool` from its first ``run_etl``/``run_fit``/``start``
until ``close()``: the ETL, every fit and every test or predict run on the same warm
processes, as the original's long-running workers did. Each step still sends its own
set-up call (spec, partitions), so nothing of one step's state leaks into the next.

NOTE [ pool processes start warm ]
``start`` only launches processes and does not wait for them. A forked one is warm from
the start; the fork request is answered when the fork server gets to it, the first time
once it has imported torch, while the driver goes on (e.g. reading CSVs). A ``Popen`` one
imports torch and builds a throw-away optimizer (``_child.py --warm``) meanwhile.
"""

from __future__ import annotations

import threading

from cerebro.engine._process import Child, Output
from cerebro.errors import CerebroError

__all__ = ["WorkerPool"]


class WorkerPool:
    """Idle child processes, lent to one step at a time and given back after it.

    Args:
        threads: torch threads a child starts with (``OMP_NUM_THREADS``); each step's
            set-up call sets its own with ``torch.set_num_threads``.
        quiet: do not show what the user's code prints in these processes (the
            ``output.quiet`` switch, which every child taken from here shares).
    """

    def __init__(self, threads: int, *, quiet: bool = False):
        self._env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.output = Output(quiet=quiet)
        self._idle: list[Child] = []
        self._lock = threading.Lock()
        self.closed = False

    def _launch(self) -> Child:
        return Child("pooled process", self._env, warm=True, output=self.output)

    def start(self, n: int) -> list[Child]:
        """Launch processes until ``n`` are idle; returns at once (they warm up alone)
        with the processes it launched (see :meth:`discard_unused`)."""
        launched = []
        with self._lock:
            self._check_open()
            self._idle = [c for c in self._idle if c.alive()]
            while len(self._idle) < n:
                launched.append(self._launch())
                self._idle.append(launched[-1])
        return launched

    def discard_unused(self, children: list[Child]) -> None:
        """Kill those of ``children`` that were never taken: a step that failed before it
        needed its workers (a bad CSV) stops them while they are still importing torch,
        so the error costs no seconds of CPU and the program can exit at once. Processes
        that served a step stay warm for the next one."""
        with self._lock:
            cold = [c for c in children if c in self._idle and not c.used]
            self._idle = [c for c in self._idle if c not in cold]
        for child in cold:
            child.kill()

    def take(self, n: int, name: str) -> list[Child]:
        """``n`` live processes, named ``"<name> 0"``..., warm ones first."""
        with self._lock:
            self._check_open()
            live = [c for c in self._idle if c.alive()]
            for c in self._idle:
                if not c.alive():
                    c.kill()  # reap it
            taken, self._idle = live[:n], live[n:]
            while len(taken) < n:
                taken.append(self._launch())
        for i, child in enumerate(taken):
            child.name = f"{name} {i}"
            child.used = True
        return taken

    def give_back(self, children: list[Child]) -> None:
        """Keep the idle, live ones; a child still running a call is killed."""
        keep = []
        for child in children:
            if child.busy or not child.alive() or self.closed:
                child.kill()
            else:
                keep.append(child)
        with self._lock:
            self._idle.extend(keep)

    def wait_ready(self) -> None:
        """Block until every idle process has finished starting (answers a call)."""
        with self._lock:
            children = list(self._idle)
        for child in children:
            child.call(_ready)

    def close(self) -> None:
        """Stop every idle process, all at once (each exit takes ~0.7 s of torch teardown)."""
        with self._lock:
            children, self._idle = self._idle, []
            self.closed = True
        for child in children:
            child.close_start()
        for child in children:
            child.close()

    def _check_open(self) -> None:
        if self.closed:
            raise CerebroError(
                "these workers were stopped (Experiment.close() or the end of its "
                "with-block); create a new Experiment."
            )


def _ready(state: dict[str, object]) -> bool:
    return True
