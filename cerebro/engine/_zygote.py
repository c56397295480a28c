"""The fork server ("zygote"): child processes forked from a warm, idle interpreter.

A fresh child pays ~3.5 s of CPU before its first call (the interpreter, ``import torch``,
the compiler stack the first optimizer imports). The zygote pays it once per driver
process: ``python -m cerebro.engine._zygote FD PARENT_PID`` imports torch and the worker
modules, builds the same throw-away optimizer as ``_child --warm``, and then forks one
child per request, each ready at once. The driver side is ``_fork_server``
(``server()`` and ``Forked``); :class:`~cerebro.engine._process.Child` uses it and falls
back to a plain ``Popen`` child whenever it says no.

NOTE [ why forking the zygote is safe ]
``fork`` copies only the calling thread, so it is unsafe in a process where another
thread may hold a lock (an OpenMP pool, a torch or allocator worker). The zygote has no
such thread: it runs no tensor operation (so OpenMP, MKL and torch's thread pools never
start), it starts with ``OPENBLAS_NUM_THREADS=1`` (numpy's OpenBLAS otherwise starts its
pool at import), and it imports nothing that starts a thread (not pandas: pyarrow starts
jemalloc's). It counts its threads (``/proc/self/task``) once ready and refuses to fork
if they have grown since, or if CUDA was initialized; the driver then starts that child,
and every later one, with ``Popen``. This is the situation of torch's own DataLoader,
whose workers are forked from a process that has imported torch.

NOTE [ a forked child is a fresh child ]
Each request carries what a fresh child would have inherited from the driver at that
moment: the environment (``Child``'s, with ``PYTHONPATH``), ``sys.path``, the working
directory (as a file descriptor: a renamed or deleted one works as it does for a
``Popen`` child), the umask and the resource limits, and the child's three file
descriptors (its end of the call socket, its stdout and stderr files), passed with
``SCM_RIGHTS``. The child closes the zygote's socket, puts its files on fds 1 and 2,
restores the signal handlers the zygote changed, and sets the thread counts its
environment asks for: libgomp, MKL and OpenBLAS read theirs when the zygote loaded them,
so ``torch.set_num_threads`` and OpenBLAS's setter apply the child's
``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS``. It reseeds the global
random generators (``random``, numpy's, torch's CPU one) from the OS, as a fresh
interpreter has them: otherwise every child would draw the zygote's numbers. (Cerebro
itself seeds explicitly: a hop seeds torch, shuffles with its own numpy generator, and
the ETL uses ``default_rng([seed, split])``.) What stays the zygote's: settings read once
at import (``PYTHON*`` variables such as ``PYTHONHASHSEED`` and ``PYTHONWARNINGS``,
torch's ``TORCH_*``), which come from the driver's environment when the zygote started.
A child ends with ``os._exit`` after waiting for its threads and running its ``atexit``
hooks, skipping the interpreter's teardown (~0.7 s of torch's).

NOTE [ the zygote's children and their exit statuses ]
The forked children are the zygote's, so only it can ``waitpid`` them. It reaps them (no
``SIGCHLD`` handler: with each request, ``WNOHANG``) and keeps each status until the
driver asks (``poll``/``wait``), which identifies a child by a sequence number, not its
pid, so a reused pid cannot be confused; the zygote also sends the driver's signals,
knowing whether that child is still unreaped. Requests are pipelined on one socket
under a lock: a fork request is sent at once and answered when the zygote gets to it,
so the driver's first ``Child(...)`` does not wait for the zygote to import torch.

The zygote exits when its socket closes: the driver exited or died (while it imports,
``PR_SET_PDEATHSIG`` stops it). Its children do not need it: each exits when its own call
socket closes, as a ``Popen`` child does. If it dies anyway (killed), the driver starts a
new one for the next child; the old one's children keep working, but their exit statuses
are lost (a pidfd still says when they end).

Off with ``CEREBRO_FORK_SERVER=0``, off the Linux platforms, and after the zygote could
not start or refused a fork: children are then started with ``Popen`` as before.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import pickle
import resource
import select
import signal
import socket
import struct
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["LOST", "hung_up", "main", "recv", "send", "unsafe"]

_HEADER = struct.Struct("!I")
_MAX_FDS = 4  # call socket, stdout, stderr, working directory
# The thread-count variables the zygote's libraries read when loaded (NOTE [ a forked
# child is a fresh child ]).
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS")
# The exit status reported for a child whose zygote died before telling it.
LOST = 255


# --- the wire: length-prefixed pickles, the first bytes carrying any file descriptors ---


def send(sock: socket.socket, obj: Any, fds: list[int] | None = None) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    buf = _HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [buf], fds) if fds else sock.send(buf)
    if sent < len(buf):
        sock.sendall(buf[sent:])


def recv(sock: socket.socket) -> tuple[Any, list[int]]:
    """One message and the descriptors that came with it; EOFError when the peer is gone."""
    head, fds, flags, _ = socket.recv_fds(sock, _HEADER.size, _MAX_FDS)
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise OSError("file descriptors were truncated in transit")
    if not head:
        raise EOFError
    head += _read_exact(sock, _HEADER.size - len(head))
    (n,) = _HEADER.unpack(head)
    return pickle.loads(_read_exact(sock, n)), fds


def _read_exact(sock: socket.socket, n: int) -> bytes:
    parts = []
    while n:
        part = sock.recv(min(n, 1 << 20))
        if not part:
            raise EOFError
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def hung_up(fd: int) -> bool:
    """Whether the peer of socket ``fd`` has closed its end (without reading from it)."""
    p = select.poll()
    p.register(fd, select.POLLRDHUP)
    return any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _prctl_pdeathsig(sig: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --- the zygote process ------------------------------------------------------------------


class _Zygote:
    """The serving side: what was loaded at start-up, the children forked, their statuses."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.start_env = {k: os.environ.get(k) for k in _THREAD_VARS}
        self.threads = _threads()
        self.blas = _blas_setters()
        self.seq = 0
        self.running: dict[int, int] = {}  # seq -> pid
        self.exited: dict[int, int] = {}  # seq -> exit status, until the driver has it
        self.seq_of: dict[int, int] = {}  # pid -> seq

    def serve(self) -> None:
        while True:
            try:
                msg, fds = recv(self.sock)
            except (EOFError, OSError):
                os._exit(0)  # the driver is gone; the children each have their own socket
            self.reap()
            if msg[0] == "fork":
                reply = self.fork(msg[1], fds)
            elif msg[0] == "status":
                reply = self.status(msg[1])
            elif msg[0] == "signal":
                reply = self.signal(msg[1], msg[2])
            else:
                reply = ("error", f"unknown request {msg[0]!r}")
            send(self.sock, reply)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            seq = self.seq_of.pop(pid, None)
            if seq is not None:
                del self.running[seq]
                self.exited[seq] = os.waitstatus_to_exitcode(status)

    def status(self, seq: int) -> tuple[Any, ...]:
        """``("status", None)`` while it runs, ``("status", code)`` once (the driver keeps
        it), ``("unknown",)`` for a child this zygote has no status of."""
        if seq in self.running:
            return ("status", None)
        if seq in self.exited:
            return ("status", self.exited.pop(seq))
        return ("unknown",)

    def signal(self, seq: int, sig: int) -> tuple[Any, ...]:
        if seq in self.running:  # not reaped: the pid is still this child's
            os.kill(self.running[seq], sig)
        return self.status(seq)

    def fork(self, meta: dict[str, Any], fds: list[int]) -> tuple[Any, ...]:
        try:
            if len(fds) != _MAX_FDS:
                return ("failed", f"expected {_MAX_FDS} file descriptors, got {len(fds)}")
            why = unsafe(self.threads)
            if why is not None:
                return ("refused", why)
            if hung_up(fds[0]):  # the driver gave the child up while we were busy
                return ("cancelled",)
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()  # or the child would print what the zygote buffered
            try:
                pid = os.fork()
            except OSError as e:
                return ("failed", f"fork: {e}")
            if pid == 0:
                _run_child(self, meta, fds)  # never returns
            self.seq += 1
            self.running[self.seq] = pid
            self.seq_of[pid] = self.seq
            return ("forked", self.seq, pid)
        finally:
            for fd in fds:
                os.close(fd)  # the child's now: holding its socket would hide its death


def unsafe(threads: int) -> str | None:
    """Why forking this process now could deadlock the child, or None: a thread started
    since the count ``threads`` (it may hold a lock), or CUDA initialized."""
    now = _threads()
    if now > threads:
        return f"the fork server has {now} threads, {threads} when it started"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA was initialized in the fork server"
    return None


def _blas_setters() -> list[Callable[[int], Any]]:
    """The thread-count setters of the OpenBLAS libraries loaded (numpy's, torch's)."""
    paths = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1]
                if "openblas" in os.path.basename(path).lower():
                    paths.add(path)
    except OSError:
        return []
    setters = []
    names = (
        "openblas_set_num_threads",
        "openblas_set_num_threads64_",
        "scipy_openblas_set_num_threads64_",
        "scipy_openblas_set_num_threads",
    )
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                setters.append(fn)
                break
    return setters


def _count(value: str | None) -> int:
    """A thread-count variable's value as its libraries read it (0: unset or invalid)."""
    try:
        n = int((value or "").split(",")[0])
    except ValueError:
        return 0
    return max(n, 0)


def _run_child(zygote: _Zygote, meta: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become what a fresh ``_child`` process would be, serve calls,
    exit (never returns into the zygote's loop)."""
    code = 1
    try:
        call, out, err, cwd = fds
        zygote.sock.close()
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.fchdir(cwd)
        for fd in (out, err, cwd):
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(meta["env"])
        sys.path[:] = meta["path"]
        sys.argv[:] = [meta["argv0"], str(call)]
        os.umask(meta["umask"])
        for res, limits in meta["rlimits"].items():
            try:
                if resource.getrlimit(res) != limits:
                    resource.setrlimit(res, limits)
            except (OSError, ValueError):
                pass
        _set_threads(zygote, meta["env"])
        _reseed()
        import importlib

        importlib.invalidate_caches()  # modules written since the zygote looked
        tempfile.tempdir = None  # recomputed from this environment's TMPDIR

        from cerebro.engine import _child

        _child.main(call)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - as an uncaught exception ends a fresh process
        traceback.print_exc()
    finally:
        _exit(code)


def _set_threads(zygote: _Zygote, env: dict[str, str]) -> None:
    cpus = len(os.sched_getaffinity(0))
    import torch

    # A fresh torch takes MKL's count: MKL_NUM_THREADS over OMP_NUM_THREADS, at most the
    # cores. With neither, the zygote's own (unset) count is a fresh process's, unless
    # the zygote itself was started with one.
    n = _count(env.get("MKL_NUM_THREADS")) or _count(env.get("OMP_NUM_THREADS"))
    if n:
        torch.set_num_threads(min(n, cpus))
    elif zygote.start_env["MKL_NUM_THREADS"] or zygote.start_env["OMP_NUM_THREADS"]:
        torch.set_num_threads(cpus)
    blas = min(
        cpus,
        _count(env.get("OPENBLAS_NUM_THREADS"))
        or _count(env.get("GOTO_NUM_THREADS"))
        or _count(env.get("OMP_NUM_THREADS"))
        or cpus,
    )
    if blas > 1:  # the zygote's OpenBLAS has one thread
        for setter in zygote.blas:
            setter(blas)


def _reseed() -> None:
    """Fresh entropy in the global generators (``random`` reseeds itself after a fork)."""
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.default_generator.seed()  # CPU only: CUDA's is lazy and fixed-seeded anyway


def _exit(code: int) -> None:
    """End the child as the interpreter would, minus its teardown."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # wait for non-daemon threads
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - exiting anyway
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:  # noqa: BLE001 - exiting anyway
            pass
    if code < 0:  # died of a signal, as an interrupted fresh process does
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def main(fd: int, parent: int) -> None:
    sock = socket.socket(fileno=fd)
    _prctl_pdeathsig(signal.SIGKILL)  # while importing it reads no socket: die with us
    if os.getppid() != parent:
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the driver's to handle
    try:
        import torch  # noqa: F401

        import cerebro.engine._child as _child
        import cerebro.engine._pool  # noqa: F401 - what children unpickle
        import cerebro.engine._process  # noqa: F401
        import cerebro.worker  # noqa: F401

        _child._warm_up()
        zygote = _Zygote(sock)
    except BaseException:  # noqa: BLE001 - the driver falls back to Popen
        send(sock, ("broken", traceback.format_exc()))
        os._exit(1)
    _prctl_pdeathsig(0)  # from now on EOF says it (and the thread that started us may end)
    if os.getppid() != parent:
        os._exit(0)
    send(sock, ("ready", {"pid": os.getpid(), "threads": zygote.threads}))
    zygote.serve()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
