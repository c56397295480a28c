"""A worker of several devices: rank 0 (the worker process) and the ranks it starts.

NOTE [ a worker's process group ]
With ``devices_per_worker=k`` the process the engine starts for a worker is rank 0; its
set-up starts ranks ``1 .. k-1`` (``python -m cerebro.worker._rank``, each joined to rank
0 by a socket pair) and joins them in a ``torch.distributed`` process group: gloo on CPUs,
NCCL on GPUs, meeting at a ``FileStore`` in a private temporary folder (no listening
socket: NOTE [ loopback only ]). Every rank maps all of
the worker's partitions itself (they are memory-mapped: one copy in the page cache) and
runs the spec's set-up hooks once. Rank 0 gets each hop from the engine as a one-device
worker does and hands it to the others over their sockets (not a collective: an idle
rank waits there without a timeout); all ranks run their share (``_ddp``), and rank 0
gathers the shares, writes the checkpoint once in the usual format and answers.

A hop that breaks the group is never half-reported: a rank that died (its sockets close,
so the collective that waited for it fails within milliseconds), a collective that timed
out (``init_process_group``'s ``timeout``, ``CEREBRO_COLLECTIVE_TIMEOUT``), or a train
hop whose user code failed on some rank while the others waited in an all-reduce. Rank
0 then answers :class:`GroupBroken`; the engine kills the worker (its ranks die with it:
``PR_SET_PDEATHSIG``, and their sockets) and starts a fresh group, as for a dead worker.
A rank whose user code fails first records the failure in the store, so rank 0 can tell
the model's fault (the hop fails) from the worker's (the hop re-runs from its checkpoint).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import MutableMapping
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle
import torch.distributed as dist

from cerebro._scratch import private_dir
from cerebro.engine.messages import GroupBroken, HopOutcome, HopTask, UserFailure
from cerebro.model_cache import ModelCache
from cerebro.worker._checkpoint import save_checkpoint
from cerebro.worker._ddp import RankRun, collective_failure, combine, rank_share
from cerebro.worker._devices import backend, rank_device

__all__ = ["Group", "collective_timeout", "group_hop", "loopback_only"]

# How long a collective (one step's all-reduce, the gather at a hop's end) may wait for
# the slowest rank before the hop is reported broken.
_DEFAULT_TIMEOUT_S = 300.0
# After a collective failed: how long rank 0 waits for a peer to exit, to tell a dead
# rank from a hung one (a killed process is reaped within milliseconds).
_DEATH_GRACE_S = 5.0


def collective_timeout() -> float:
    """Seconds from ``CEREBRO_COLLECTIVE_TIMEOUT`` (default 300)."""
    raw = os.environ.get("CEREBRO_COLLECTIVE_TIMEOUT", str(_DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(
            f"CEREBRO_COLLECTIVE_TIMEOUT must be a number of seconds > 0, got {raw!r}"
        )
    return seconds


# NOTE [ loopback only ]
# The local engine opens no network port (tests/test_worker_env.py): its workers talk to the
# driver over socket pairs. A worker's ranks meet at a FileStore (a file, no server socket)
# and gloo's and NCCL's own connections are bound to the loopback interface, so a
# several-device worker listens on 127.0.0.1 only, never on an address another machine can
# reach. A user who sets GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME keeps their choice.


def loopback_only(env: MutableMapping[str, str]) -> None:
    """Point gloo and NCCL at the loopback interface in ``env`` (unless the user chose)."""
    lo = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)
    if lo is not None:
        env.setdefault("GLOO_SOCKET_IFNAME", lo)
        env.setdefault("NCCL_SOCKET_IFNAME", lo)


def _failure_key(seq: int) -> str:
    return f"failure/{seq}"


class Group:
    """Rank 0's handle on ranks ``1 .. world-1``: their processes, sockets and the store."""

    def __init__(self, world: int, threads: int, device: str):
        self.world, self.device = world, device
        self.seq = 0  # hops handed out: the key of a rank's failure record
        self.timeout = collective_timeout()
        delta = datetime.timedelta(seconds=self.timeout)
        self._store_dir = private_dir("cerebro-group-")  # NOTE [ scratch folders ]
        store_path = os.path.join(self._store_dir, "store")
        self.store = dist.FileStore(store_path, world)
        self.store.set_timeout(delta)
        self.backend = backend(device)  # gloo on CPUs, NCCL on CUDA...
        loopback_only(os.environ)  # rank 0 is this process
        self.procs: list[subprocess.Popen[bytes]] = []
        self.conns: list[Connection] = []
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        loopback_only(env)
        for rank in range(1, world):
            ours, theirs = socket.socketpair()
            argv = [sys.executable, "-m", "cerebro.worker._rank", str(theirs.fileno())]
            self.procs.append(
                subprocess.Popen(
                    [*argv, str(os.getpid())],
                    pass_fds=[theirs.fileno()],
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
            )
            theirs.close()
            conn = Connection(ours.detach())
            hello = (rank, world, store_path, self.timeout, self.backend)
            conn.send_bytes(pickle.dumps(hello))
            self.conns.append(conn)
        self.joined = False

    def send_setup(self, setup_args: tuple[Any, ...]) -> None:
        """Have every rank set itself up as a one-device worker with ``setup_args`` (its
        own device last); they answer in :meth:`gather_setups`."""
        for rank, conn in enumerate(self.conns, start=1):
            args = (*setup_args, rank_device(self.device, rank))
            conn.send_bytes(cloudpickle.dumps(("setup", args)))

    def join(self) -> None:
        """Join the process group (waits for every rank to start), once."""
        if self.joined:
            return
        self.joined = True
        delta = datetime.timedelta(seconds=self.timeout)
        dist.init_process_group(
            self.backend, store=self.store, rank=0, world_size=self.world, timeout=delta
        )

    def gather_setups(self, mine: Any) -> list[Any]:
        """Every rank's set-up result, rank 0's first."""
        out: list[Any] = [None] * self.world
        dist.gather_object(mine, out, dst=0)
        return out

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def dead(self, grace: float = 0.0) -> list[str]:
        """The ranks that have exited (waiting up to ``grace`` seconds for one to)."""
        deadline = time.monotonic() + grace
        for proc in self.procs:
            left = deadline - time.monotonic()
            if proc.poll() is None and left > 0:
                try:
                    proc.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    pass
        return [
            f"rank {r} (pid {p.pid}, exit status {_status(p.returncode)})"
            for r, p in enumerate(self.procs, start=1)
            if p.returncode is not None
        ]

    def hand_out(self, task: HopTask) -> str | None:
        """Send ``task`` to every rank; why not, if one is gone."""
        self.seq += 1
        if gone := self.dead():
            return f"{', '.join(gone)} died while idle"
        data = pickle.dumps(("hop", (self.seq, task)), protocol=pickle.HIGHEST_PROTOCOL)
        for rank, conn in enumerate(self.conns, start=1):
            try:
                conn.send_bytes(data)
            except OSError:
                return f"rank {rank} died while idle"
        return None

    def failure(self) -> UserFailure | None:
        """The user-code failure a rank recorded for the current hop, if one did."""
        key = _failure_key(self.seq)
        try:
            if self.store.check([key]):
                return pickle.loads(self.store.get(key))  # type: ignore[no-any-return]
        except (RuntimeError, pickle.UnpicklingError):
            return None
        return None

    def close(self) -> None:
        """Stop the ranks (they exit when their socket closes) and leave the group."""
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if dist.is_initialized():
            dist.destroy_process_group()
        shutil.rmtree(self._store_dir, ignore_errors=True)


def _status(code: int | None) -> str:
    return f"signal {-code}" if code is not None and code < 0 else str(code)


def _where(task: HopTask) -> str:
    return (
        f"model {task.model_id}'s {task.kind} hop on partition {task.partition} "
        f"(epoch {task.epoch})"
    )


def _broken(group: Group, task: HopTask, failure: UserFailure) -> GroupBroken:
    """Why a hop that failed on rank 0 broke the group: a rank's user code, a dead rank,
    a collective that failed or timed out, or rank 0's own user code."""
    if recorded := group.failure():
        return GroupBroken(f"{recorded.function} failed in {_where(task)}", recorded)
    collective = collective_failure(failure)
    if gone := group.dead(_DEATH_GRACE_S if collective else 0.0):
        return GroupBroken(f"{', '.join(gone)} of the worker died during {_where(task)}")
    if collective:
        return GroupBroken(
            f"a collective failed or timed out (after {group.timeout:g} s; see "
            f"CEREBRO_COLLECTIVE_TIMEOUT) in {_where(task)} on rank 0: {failure.message}"
        )
    return GroupBroken(f"{failure.function} failed in {_where(task)}", failure)


def group_hop(state: dict[str, Any], task: HopTask) -> HopOutcome | UserFailure | GroupBroken:
    """Rank 0's part of a train/val/test/predict hop on a several-device worker."""
    group: Group = state["group"]
    start = time.time()
    if why := group.hand_out(task):
        return GroupBroken(f"{why}, before {_where(task)}")
    trials = None
    if task.kind == "train" and task.parallelism == "auto":
        from cerebro.worker._trial import choose

        try:
            choice, trials = choose(state, task, 0, group.world)
        except Exception as e:  # noqa: BLE001 - a rank died or hung in a trial
            return _broken(group, task, UserFailure("trial", f"{type(e).__name__}: {e}", ""))
        task = dataclasses.replace(task, parallelism=choice)  # type: ignore[arg-type]
    mine, built = rank_share(state, task, 0, group.world)
    if mine.failure is not None and task.kind == "train":
        return _broken(group, task, mine.failure)
    runs: list[Any] = [None] * group.world
    try:
        dist.gather_object(mine, runs, dst=0)
    except Exception as e:  # noqa: BLE001 - a rank died or hung
        return _broken(group, task, UserFailure("gather", f"{type(e).__name__}: {e}", ""))
    shares: list[RankRun] = runs
    failed = [r.failure for r in shares if r.failure is not None]
    if failed:
        return failed[0]
    metrics, sizes = combine(shares)
    nonfinite = next((k for k, vs in metrics.items() if not all(map(math.isfinite, vs))), None)
    s0 = time.perf_counter()
    cache: ModelCache = state["models"]
    assert built is not None  # no failure: it was built
    components, after, rng = built
    if task.kind == "train" and task.out_ckpt is not None and nonfinite is None:
        try:
            saved = save_checkpoint(after, task.out_ckpt, task)
            cache.put(task.model_id, task.out_ckpt, components, saved)
        except OSError as e:
            return UserFailure("saving the checkpoint", f"{task.out_ckpt}: {e}", "", system=True)
    elif task.in_ckpt is not None and nonfinite is None:
        cache.put(task.model_id, task.in_ckpt, components, rng)  # unchanged by evaluation
    predictions = [p for r in shares for p in r.predictions] if task.kind == "predict" else None
    return HopOutcome(
        metrics,
        sizes,
        mine.rows,
        start,
        time.time(),
        max(r.user for r in shares),
        max(r.load for r in shares),
        time.perf_counter() - s0,
        nonfinite=nonfinite,
        predictions=predictions,
        trials=trials,
        parallelism=task.parallelism if task.kind == "train" else None,
    )
