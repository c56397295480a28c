"""The driver's side of the fork server (NOTE [ the zygote ] in ``_process``): start this
process's zygote, ask it for children, and follow them as ``Popen`` objects are followed.
The zygote process itself, and the NOTEs on why forking it is safe, are ``_zygote``."""

from __future__ import annotations

import atexit
import collections
import os
import pickle
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from cerebro.engine._zygote import LOST, hung_up, recv, send

__all__ = ["Forked", "ForkServer", "server", "why_off"]


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
        pid = os.getpid()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env["OPENBLAS_NUM_THREADS"] = "1"  # NOTE [ why forking the zygote is safe ] in _zygote
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cerebro.engine._zygote", str(theirs.fileno()), str(pid)],
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
                    send(self.sock, ("fork", meta), [call, out, err, cwd])
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
                send(self.sock, msg)
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
                reply, fds = recv(self.sock)
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
        if hung_up(self.sock.fileno()):
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
