"""The fork server ("zygote"): child processes forked from a warm, idle interpreter.

A fresh child pays ~3.5 s of CPU before its first call (the interpreter, ``import torch``,
the compiler stack the first optimizer imports). The zygote pays it once per driver
process: ``python -m cerebro.engine._zygote FD PARENT_PID`` imports torch and the worker
modules, builds the same throw-away optimizer as ``_child --warm``, and then forks one
child per request, each ready at once. The driver side is :func:`server` and
:class:`Forked`; :class:`~cerebro.engine._process.Child` uses them and falls back to a
plain ``Popen`` child whenever they say no.

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
import collections
import ctypes
import os
import pickle
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["Forked", "ForkServer", "server", "why_off"]

_HEADER = struct.Struct("!I")
_MAX_FDS = 4  # call socket, stdout, stderr, working directory
# The thread-count variables the zygote's libraries read when loaded (NOTE [ a forked
# child is a fresh child ]).
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS")
# The exit status reported for a child whose zygote died before telling it.
LOST = 255


# --- the wire: length-prefixed pickles, the first bytes carrying any file descriptors ---


def _send(sock: socket.socket, obj: Any, fds: list[int] | None = None) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    buf = _HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [buf], fds) if fds else sock.send(buf)
    if sent < len(buf):
        sock.sendall(buf[sent:])


def _recv(sock: socket.socket) -> tuple[Any, list[int]]:
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


def _hung_up(fd: int) -> bool:
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
                msg, fds = _recv(self.sock)
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
            _send(self.sock, reply)

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
            if _hung_up(fds[0]):  # the driver gave the child up while we were busy
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
        _send(sock, ("broken", traceback.format_exc()))
        os._exit(1)
    _prctl_pdeathsig(0)  # from now on EOF says it (and the thread that started us may end)
    if os.getppid() != parent:
        os._exit(0)
    _send(sock, ("ready", {"pid": os.getpid(), "threads": zygote.threads}))
    zygote.serve()


# --- the driver side ---------------------------------------------------------------------


class _Answer:
    """A request's reply, once it has come."""

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None

    def deliver(self, reply: tuple[Any, ...] | None) -> None:
        self.done, self.value = True, reply


class ForkServer:
    """The driver's handle on its zygote process (one per driver process: :func:`server`)."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.ready = False
        self.dead: str | None = None  # why it is gone
        self.refused: str | None = None  # why it forks no more
        self._lock = threading.Lock()
        self._waiting: collections.deque[Any] = collections.deque()
        self._log = tempfile.TemporaryFile()  # its stderr: a traceback if it crashes
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env["OPENBLAS_NUM_THREADS"] = "1"  # NOTE [ why forking the zygote is safe ]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._log,
            )
        except BaseException:
            ours.close()
            self._log.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self._waiting.append(self)  # the first reply says it is ready

    @property
    def pid(self) -> int:
        return self.proc.pid

    def deliver(self, reply: tuple[Any, ...] | None) -> None:
        """The start-up reply: ``("ready", info)``, ``("broken", traceback)`` or None."""
        if reply is not None and reply[0] == "ready":
            self.ready = True
        elif reply is not None and reply[0] == "broken":
            self.refused = f"the fork server could not start:\n{reply[1]}"

    def fork(self, call: int, out: int, err: int, env: dict[str, str]) -> Forked | None:
        """Ask for a child on these file descriptors (sent at once, answered later); None
        when this server cannot (the caller starts the child itself)."""
        if self.refused or self.dead:
            return None
        try:
            cwd = os.open(".", getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY)
        except OSError:
            return None
        meta = {
            "env": env,
            "path": _fresh_path(),
            "argv0": _child_file(),
            "umask": _umask(),
            "rlimits": _rlimits(),
        }
        try:
            with self._lock:
                if self.dead:
                    return None
                child = Forked(self)
                try:
                    _send(self.sock, ("fork", meta), [call, out, err, cwd])
                except OSError as e:
                    self._die(f"the fork server's socket failed: {e}")
                    return None
                self._waiting.append(child)
        finally:
            os.close(cwd)
        return child

    def request(self, msg: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Send ``msg`` and wait for its reply; None when the zygote is gone."""
        with self._lock:
            if self.dead:
                return None
            answer = _Answer()
            try:
                _send(self.sock, msg)
            except OSError as e:
                self._die(f"the fork server's socket failed: {e}")
                return None
            self._waiting.append(answer)
            self.pump(lambda: answer.done, block=True)
            return answer.value  # type: ignore[no-any-return]

    def pump(self, until: Callable[[], bool], *, block: bool) -> None:
        """Read replies and hand each to its waiter until ``until()`` (or, not ``block``ing,
        until none is there); with the lock held."""
        while not until() and not self.dead:
            if not block and not select.select([self.sock], [], [], 0)[0]:
                return
            try:
                reply, fds = _recv(self.sock)
            except (EOFError, OSError, pickle.UnpicklingError) as e:
                self._die(f"the fork server exited ({type(e).__name__})")
                return
            for fd in fds:
                os.close(fd)
            self._waiting.popleft().deliver(reply)

    def alive(self) -> bool:
        """Whether the zygote still runs (it may have been killed since the last reply)."""
        if self.dead:
            return False
        if _hung_up(self.sock.fileno()):
            with self._lock:
                self.pump(lambda: False, block=False)  # the replies it sent before dying
                if not self.dead:
                    self._die("the fork server closed its socket")
        return not self.dead

    def _die(self, why: str) -> None:
        """The zygote is gone: every waiter gets None (a fork: the caller starts it)."""
        self.dead = why
        try:
            self.sock.close()
        except OSError:
            pass
        while self._waiting:
            self._waiting.popleft().deliver(None)
        self.proc.poll()  # reap it if it has exited

    def log_tail(self, n: int = 2000) -> str:
        """The end of what the zygote wrote to its stderr (a crash's traceback)."""
        try:
            size = os.fstat(self._log.fileno()).st_size
            return os.pread(self._log.fileno(), n, max(0, size - n)).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        """Stop the zygote (its children go on: each has its own socket)."""
        with self._lock:
            if not self.dead:
                self._die("closed")
        try:
            self.proc.wait(timeout=1 if self.ready else 0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Forked:
    """A forked child, with the ``Popen`` methods :class:`Child` uses (``pid``, ``poll``,
    ``wait``, ``send_signal``, ``kill``), answered by its zygote. Until the zygote has
    answered the fork it is pending (:meth:`resolve`)."""

    def __init__(self, server: ForkServer):
        self.server = server
        self.state = "pending"  # then "forked", or "failed" (start it some other way)
        self.why = ""  # why it failed
        self.seq = 0
        self.pid = 0
        self.returncode: int | None = None
        self.status_lost = False  # the zygote died before telling its exit status
        self._pidfd: int | None = None

    def deliver(self, reply: tuple[Any, ...] | None) -> None:
        """The zygote's answer to the fork request (None: it died first)."""
        if reply is not None and reply[0] == "forked":
            _, self.seq, self.pid = reply
            self.state = "forked"
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except (AttributeError, OSError):
                self._pidfd = None
            return
        self.state = "failed"
        if reply is None:
            self.why = self.server.dead or "the fork server is gone"
        elif reply[0] == "refused":
            self.why = self.server.refused = f"the fork server refused: {reply[1]}"
        elif reply[0] == "cancelled":
            self.why = "cancelled before it was forked"
        else:
            self.why = f"the fork server could not fork it: {reply[1:]}"

    def resolve(self, block: bool = True) -> bool | None:
        """True once forked, False if it will not be, None while pending (not ``block``)."""
        if self.state == "pending":
            server = self.server
            if block:
                with server._lock:
                    server.pump(lambda: self.state != "pending", block=True)
            elif server._lock.acquire(blocking=False):
                try:
                    server.pump(lambda: self.state != "pending", block=False)
                finally:
                    server._lock.release()
        return None if self.state == "pending" else self.state == "forked"

    def cancel(self) -> None:
        """Give up a pending start (the caller has closed the child's socket, so the zygote
        skips the fork, or the child exits at once); it then counts as killed."""
        if self.returncode is None:
            self.returncode = -signal.SIGKILL

    def poll(self) -> int | None:
        if self.returncode is None:
            reply = self.server.request(("status", self.seq))
            self._update(reply)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout or 0.0)
            left = delay if deadline is None else min(delay, deadline - time.monotonic())
            time.sleep(max(left, 0.0))
            delay = min(delay * 2, 0.05)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        self._update(self.server.request(("signal", self.seq, sig)), sig=sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _update(self, reply: tuple[Any, ...] | None, sig: int | None = None) -> None:
        if reply is not None and reply[0] == "status":
            if reply[1] is not None:
                self._exited(reply[1])
            return
        # The zygote is gone: its children are init's now. The pidfd still says whether
        # this one runs (and signals it without a reused pid's risk); its status is lost.
        if self._pidfd is not None:
            if sig is not None:
                try:
                    signal.pidfd_send_signal(self._pidfd, sig)
                except OSError:
                    pass
            if select.select([self._pidfd], [], [], 0)[0]:
                self.status_lost = True
                self._exited(LOST)
            return
        try:
            os.kill(self.pid, 0 if sig is None else sig)
        except ProcessLookupError:
            self.status_lost = True
            self._exited(LOST)
        except PermissionError:
            pass

    def _exited(self, code: int) -> None:
        self.returncode = code
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _fresh_path() -> list[str]:
    """``sys.path`` as a fresh ``python -m`` child of this process would start with: the
    working directory, then this process's entries (its ``PYTHONPATH``)."""
    out: list[str] = []
    try:
        out.append(os.getcwd())
    except OSError:
        pass
    for p in sys.path:
        if p and p not in out:
            out.append(p)
    return out


def _child_file() -> str:
    import cerebro.engine

    return os.path.join(os.path.dirname(cerebro.engine.__file__), "_child.py")


def _umask() -> int:
    """This process's umask, read without changing it (another thread may create files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _rlimits() -> dict[int, tuple[int, int]]:
    out = {}
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            res = getattr(resource, name)
            try:
                out[res] = resource.getrlimit(res)
            except (OSError, ValueError):
                pass
    return out


_lock = threading.Lock()
_current: ForkServer | None = None
_off: str | None = None  # why this process uses no fork server


def why_off() -> str | None:
    """Why children are started with ``Popen`` in this process, or None."""
    if os.environ.get("CEREBRO_FORK_SERVER", "1") == "0":
        return "CEREBRO_FORK_SERVER=0"
    if not (sys.platform.startswith("linux") and hasattr(os, "fork")):
        return f"no fork server on {sys.platform}"
    if _current is not None and _current.refused:
        return _current.refused
    return _off


def server() -> ForkServer | None:
    """This process's fork server, started on first use and again if it died after it
    was ready; None where children are to be started with ``Popen`` (:func:`why_off`)."""
    global _current, _off
    if why_off() is not None:
        return None
    with _lock:
        s = _current
        if s is not None and s.alive():
            return None if s.refused else s
        if s is not None:
            if not s.ready:  # it never got ready: it would not next time either
                _off = s.refused or f"the fork server died while starting: {s.log_tail()}"
                s.close()
                return None
            s.close()
        try:
            _current = ForkServer()
        except OSError as e:
            _current, _off = None, f"the fork server could not be started: {e}"
            return None
        return _current


def _at_exit() -> None:
    if _current is not None and _current.owner == os.getpid():
        _current.close()


def _forget_in_child() -> None:
    """After a fork of this process: the fork server is the parent's (and its socket must
    close with the parent, so that the zygote sees the parent exit)."""
    global _current, _lock
    _lock = threading.Lock()
    if _current is not None:
        try:
            _current.sock.close()
        except OSError:
            pass
        _current = None


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
