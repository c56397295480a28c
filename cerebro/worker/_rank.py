"""Entry point of rank ``r > 0`` of a several-device worker (NOTE [ a worker's process
group ] in ``_group``): ``python -m cerebro.worker._rank FD PARENT_PID``.

It reads from the socket FD its place (rank, world size, the store's file), joins the
process group, then serves what rank 0 sends until the socket closes: a set-up (each
step's: the spec, the partitions, as a one-device worker's) or a hop, whose share it
runs. It dies with rank 0 (``PR_SET_PDEATHSIG`` on Linux; elsewhere its socket's end, or
the group's next collective, stops it).
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import faulthandler
import os
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection


def _die_with(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # rank 0 died before the line above ran
        os._exit(1)


def main(fd: int, parent: int) -> None:
    _die_with(parent)
    faulthandler.enable()
    conn = Connection(fd)
    rank, world, store_path, timeout, backend = pickle.loads(conn.recv_bytes())

    import torch.distributed as dist

    from cerebro.worker._ddp import collective_failure, rank_share
    from cerebro.worker._setup import hop_numerics, setup_worker

    delta = datetime.timedelta(seconds=timeout)
    store = dist.FileStore(store_path, world)  # NOTE [ loopback only ] in _group
    store.set_timeout(delta)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=delta)
    state: dict[str, object] = {}
    while True:
        try:
            what, body = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            os._exit(0)  # rank 0 closed the group
        if what == "setup":  # each step of the experiment (fit, test...) sets up anew
            dist.gather_object(setup_worker(state, *body), None, dst=0)
            continue
        seq, task = body
        hop_numerics(state, task)
        if task.kind == "train" and task.parallelism == "auto":
            from cerebro.worker._trial import choose

            choice, _ = choose(state, task, rank, world)  # rank 0 reaches the same
            task = dataclasses.replace(task, parallelism=choice)
        run, _ = rank_share(state, task, rank, world)
        if run.failure is not None and task.kind == "train":
            # The others may wait in an all-reduce this rank will never join: the group
            # is broken. Say whose fault it was (unless a collective's), then leave.
            if not collective_failure(run.failure):
                store.set(f"failure/{seq}", pickle.dumps(run.failure))  # type: ignore[arg-type]
            os._exit(1)
        dist.gather_object(run, None, dst=0)


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]), int(sys.argv[2]))
    except BaseException:  # noqa: BLE001 - a broken group: rank 0 reports it
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
