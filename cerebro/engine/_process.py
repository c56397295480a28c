"""Child Python processes that run pickled calls, and an ordered parallel map over them.

Why not ``multiprocessing``: its "spawn" start re-runs the user's script in every child (a
script without an ``if __name__ == "__main__"`` guard then recursively starts runs), and
its "fork" forks the driver itself, whose torch may have started its thread pools (a
thread holding a lock at the fork deadlocks the child). A child here runs
``cerebro.engine._child`` joined to us by a socket pair: nothing of the user's script runs
in it, and nothing listens on a port. Calls travel with cloudpickle, so specs defined in a
notebook or a script's ``__main__`` work.

NOTE [ the zygote ]
A fresh ``python -m cerebro.engine._child`` costs ~3.5 s of CPU before its first call
(``import torch``, the first optimizer's compiler stack). So a child is forked instead,
from a fork server (the process ``_zygote``, driven by ``_fork_server``): one helper
process per driver, started on first need, that paid that once and then only forks.
Forking it is safe where forking the driver is not: it never runs a tensor operation and
has no thread but its main one (it checks before each fork), as torch's DataLoader forks
its workers from a process that only imported torch. The child gets the driver's
environment, ``sys.path`` and working directory of the moment, and its own thread counts
and random seeds (the NOTEs in ``_zygote``). The answer to a fork comes when the zygote
gets to it, so creating a :class:`Child` never waits; its first call (or
:attr:`Child.pid`) does. Children are started with ``Popen`` as before where there is no
fork (not Linux), with ``CEREBRO_FORK_SERVER=0``, and when the zygote could not start,
died while starting, or refused a fork; a zygote that died after it was ready is started
again.

NOTE [ child death ]
A child that dies closes its end of the socket; ``recv`` raises ``EOFError`` at once, and
``multiprocessing.connection.wait`` reports the connection ready. Death is detected in
milliseconds, not by a timeout.

NOTE [ a child's output ]
A child's stdout and stderr (file descriptors 1 and 2: ``print``, warnings, C code, the
subprocesses it starts) are two unnamed temporary files that the parent holds. A child
never blocks on them, and what a child wrote before it died is still there to read. Each
answer carries the files' sizes at the end of its call (after flushing Python's buffers),
so the parent knows which bytes that call printed; it shows them through an
:class:`Output`, each line prefixed with the child's name and the call's label
(``[worker 1 · m003] Loss: 0.42``), via ``tqdm.write`` so progress bars are not broken.
Complete lines of a call still running can be shown early (:meth:`Child.stream`). What
one call prints beyond ``_CALL_OUTPUT_LIMIT`` bytes per stream is counted, not shown.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import io
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

from cerebro.engine import _fork_server

__all__ = ["Child", "ChildDied", "Output", "RemoteError", "parallel_map"]


class ChildDied(Exception):
    """The child process exited (killed, crashed, out of memory) before answering."""

    def __init__(self, name: str, exitcode: int | None):
        how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"{exitcode}"
        super().__init__(f"{name} (exit status {how})")
        self.exitcode = exitcode


@dataclass
class RemoteError:
    """An exception raised inside a child, as text (user exceptions may not unpickle)."""

    type_name: str
    message: str
    traceback: str
    exception: BaseException | None = None  # the original object when it pickled


# What one call may print per stream before the rest is only counted (a runaway loop of
# prints must not flood the driver's terminal or memory).
_CALL_OUTPUT_LIMIT = 1 << 20
# Output files are emptied when their child is idle and they hold more than this.
_TRUNCATE_AT = 16 << 20


class Output:
    """Where the driver shows what children (and the driver's own user hooks) print.

    Each line is prefixed, e.g. ``[worker 1 · m003] Loss: 0.42``, and written with
    ``tqdm.write`` (which lifts any progress bar out of the way) to ``sys.stdout`` or,
    for what went to stderr, ``sys.stderr``.

    Args:
        quiet: show nothing (``Experiment(verbose=False)``, the CLI's ``-q``).
    """

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def write(self, prefix: str, text: str, *, stderr: bool = False) -> None:
        """Show ``text`` (one or more lines; a last line without newline is shown as one)."""
        if self.quiet or not text:
            return
        if text.endswith("\n"):
            text = text[:-1]
        lines = [
            f"{prefix} {shown}" if (shown := _as_shown(ln)) else prefix for ln in text.split("\n")
        ]
        from tqdm.auto import tqdm

        fp = sys.stderr if stderr else sys.stdout
        if fp is None:  # pythonw, a daemon without streams
            return
        with tqdm.external_write_mode(file=fp):
            fp.write("\n".join(lines) + "\n")
            fp.flush()  # before the bar is redrawn: a piped stdout is block-buffered

    @contextlib.contextmanager
    def capture(self, prefix: str) -> Iterator[None]:
        """Show what the code in the block prints as a child's output is shown: for the
        user's hooks that run on the driver (``metrics_agg``).

        Python-level only (``sys.stdout``/``sys.stderr``): this is the user's own process,
        whose file descriptors are theirs. Shown when the block ends, also if it raised.
        """
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield
        finally:
            self.write(prefix, out.getvalue())
            self.write(prefix, err.getvalue(), stderr=True)


def _as_shown(line: str) -> str:
    """A line rewritten with carriage returns (a nested progress bar) as a terminal leaves
    it: what follows the last one."""
    return line.rstrip("\r").rsplit("\r", 1)[-1]


class _Stream:
    """One of a child's output files, and how much of it the parent has shown."""

    def __init__(self, stderr: bool):
        self.file = tempfile.TemporaryFile()
        self.fd = self.file.fileno()
        # Appends: a child's writes land at the end even after the parent empties the file.
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_APPEND)
        self.stderr = stderr
        self.read = 0  # bytes of the file already shown (or skipped)
        self.partial = b""  # a line begun, not yet ended, by the call running
        self.shown = 0  # bytes the call running has had shown
        self.skipped = 0  # and those it printed beyond _CALL_OUTPUT_LIMIT

    def size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)  # the writes append: the offset is free

    def take(self, end: int) -> bytes:
        """The bytes up to ``end`` not yet read, within the call's limit."""
        n = end - self.read
        if n <= 0:
            return b""
        room = max(0, _CALL_OUTPUT_LIMIT - self.shown)
        data = os.pread(self.fd, min(n, room), self.read) if room else b""
        self.shown += len(data)
        self.skipped += n - len(data)
        self.read = end
        return data

    def empty(self) -> None:
        os.ftruncate(self.fd, 0)
        self.read = 0


class Child:
    """One child process that runs ``fn(state, *args)`` calls and sends back the result.

    ``state`` is a dict that lives as long as the child: where a worker keeps its data
    partitions and its spec between calls. Calls may be sent while one runs: the child
    runs them in order, and their answers come back in that order. What a call prints
    goes to ``output`` (see NOTE [ a child's output ]).

    Args:
        name: how errors name this process, e.g. ``"worker 1"``.
        env: extra environment variables for the child (thread counts, CUDA devices).
        warm: have the child import torch and build an optimizer before its first call,
            so that this start-up cost overlaps with the caller's work.
        output: where the child's output is shown; None: a fresh :class:`Output`.
    """

    def __init__(
        self,
        name: str,
        env: dict[str, str] | None = None,
        *,
        warm: bool = False,
        output: Output | None = None,
    ):
        self.name = name
        self.output = output if output is not None else Output()
        self._streams = (_Stream(stderr=False), _Stream(stderr=True))
        self._labels: collections.deque[str | None] = collections.deque()
        full_env = dict(os.environ)
        full_env.update(env or {})
        # The child must import the same cerebro and see the user's modules.
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._env, self._warm = full_env, warm
        ours, theirs = socket.socketpair()
        zygote = _fork_server.server()
        forked = None
        if zygote is not None:  # NOTE [ the zygote ]: forked (warm) when it answers
            out, err = (s.fd for s in self._streams)
            forked = zygote.fork(theirs.fileno(), out, err, full_env)
        self.proc: subprocess.Popen[bytes] | _fork_server.Forked = (
            forked if forked is not None else self._popen(theirs)
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.in_flight = 0  # calls sent and not yet answered
        self.used = False  # lent to a step by a WorkerPool (see WorkerPool.discard_unused)

    def _popen(self, theirs: socket.socket) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "cerebro.engine._child", str(theirs.fileno())]
        return subprocess.Popen(
            argv + (["--warm"] if self._warm else []),
            pass_fds=[theirs.fileno()],
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._streams[0].fd,
            stderr=self._streams[1].fd,
        )

    def _started(self, block: bool = True) -> bool:
        """Whether the process exists; False while the zygote has not answered its fork
        (only when not ``block``ing). A fork the zygote could not make is started with
        ``Popen`` here, on a new socket pair (nothing was sent on the first: every send
        waits for this), so that a child forked after all hears EOF and exits."""
        proc = self.proc
        if not isinstance(proc, _fork_server.Forked):
            return True
        forked = proc.resolve(block)
        if forked is None:
            return False
        if not forked:
            ours, theirs = socket.socketpair()
            self.proc = self._popen(theirs)
            theirs.close()
            self.conn.close()
            self.conn = Connection(ours.detach())
        return True

    @property
    def forked(self) -> bool:
        """Whether this process was forked by the zygote (else started with ``Popen``)."""
        self._started()
        return isinstance(self.proc, _fork_server.Forked)

    @property
    def pid(self) -> int:
        self._started()
        return self.proc.pid

    @property
    def busy(self) -> bool:
        """Whether a call is in flight."""
        return self.in_flight > 0

    def submit(self, fn: Callable[..., Any], *args: Any, label: str | None = None) -> None:
        """Send one call (it runs after those in flight); its answer comes from
        :meth:`result`. ``label`` names the call in the prefix of what it prints, e.g.
        the model id: ``[worker 1 · m003]``."""
        self._started()
        try:
            self.conn.send_bytes(cloudpickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            raise ChildDied(self.name, self.proc.poll()) from e
        self._labels.append(label)
        self.in_flight += 1

    def result(self) -> Any:
        """Wait for the answer of the oldest call in flight, and show what it printed.

        Returns:
            The call's return value, or a :class:`RemoteError` if it raised.

        Raises:
            ChildDied: the process exited before answering (what it printed until then
                is shown first).
        """
        try:
            data = self.conn.recv_bytes()
        except (EOFError, ConnectionResetError, OSError) as e:
            code = self._exitcode()
            self._show(None, final=True)
            self.in_flight = 0
            self._labels.clear()
            raise ChildDied(self.name, code) from e
        self.in_flight -= 1
        status, value, ends = pickle.loads(data)
        out, err = self._streams
        if ends is None or ends[0] > out.read or ends[1] > err.read or out.partial or err.partial:
            self._show(ends, final=True)  # (most calls print nothing: skip it)
        self._labels.popleft()
        if not self.in_flight and self._streams[0].read + self._streams[1].read > _TRUNCATE_AT:
            for stream in self._streams:  # idle: it writes nothing until the next call
                stream.empty()
        return value

    def stream(self) -> None:
        """Show the complete lines the running call has printed so far.

        Cheap when there is nothing new (two ``lseek`` calls); does nothing when no call
        runs or the running call's answer has arrived (:meth:`result` shows its output).
        """
        if not self.in_flight:
            return
        try:
            sizes = (self._streams[0].size(), self._streams[1].size())
        except OSError:  # killed: its files are closed
            return
        if all(size <= s.read for size, s in zip(sizes, self._streams, strict=True)):
            return
        # Sizes first, then the answer check: with no answer sent yet, every byte up to
        # those sizes is the running call's (the next one starts after the answer).
        if self.conn.poll(0):
            return
        self._show(sizes, final=False)

    def _show(self, ends: tuple[int, int] | None, *, final: bool) -> None:
        """Show the oldest call's output up to ``ends`` (None: what the files hold now);
        ``final``: the call is over, so show its unfinished line and reset its limit."""
        label = self._labels[0] if self._labels else None
        prefix = f"[{self.name} · {label}]" if label else f"[{self.name}]"
        for k, stream in enumerate(self._streams):
            try:
                end = ends[k] if ends is not None else stream.size()
                data = stream.partial + stream.take(end)
            except OSError:  # the file is gone (closed by kill()): nothing to show
                continue
            if not final:
                cut = data.rfind(b"\n") + 1
                data, stream.partial = data[:cut], data[cut:]
            else:
                stream.partial = b""
            self.output.write(prefix, data.decode("utf-8", "replace"), stderr=stream.stderr)
            if final:
                if stream.skipped:
                    self.output.write(
                        prefix,
                        f"... {stream.skipped} more bytes of output not shown (a call shows "
                        f"at most {_CALL_OUTPUT_LIMIT} per stream)",
                        stderr=stream.stderr,
                    )
                stream.shown = stream.skipped = 0

    def call(self, fn: Callable[..., Any], *args: Any, label: str | None = None) -> Any:
        """Run one call and wait for it; a remote exception comes back as RemoteError."""
        self.submit(fn, *args, label=label)
        return self.result()

    def _exitcode(self) -> int | None:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None
        return None if getattr(self.proc, "status_lost", False) else code

    def alive(self) -> bool:
        """Whether the process runs (one still being forked counts: it is starting)."""
        return not self._started(block=False) or self.proc.poll() is None

    def _abandoned(self) -> bool:
        """For a child being stopped: True if it never started (a pending fork, cancelled:
        its socket is closed, so the zygote skips it or it exits at once), or never will
        (a fork that failed is not started with ``Popen`` just to be stopped). A zygote
        that is ready answers in a millisecond: then the answer is awaited, so that a
        child it forked meanwhile is killed and reaped, not left to exit on its own; one
        still importing torch is not waited for."""
        proc = self.proc
        if not isinstance(proc, _fork_server.Forked):
            return False
        forked = proc.resolve(block=False)
        if forked is None and proc.server.ready:
            forked = proc.resolve(block=True)
        if not forked:
            proc.cancel()
            return True
        return False

    def kill(self) -> None:
        self.conn.close()
        if not self._abandoned():
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_files()

    def close_start(self) -> None:
        """Ask the child to exit (closing its socket) without waiting for it."""
        try:
            self.conn.close()
        except OSError:
            pass

    def close(self, timeout: float = 10.0) -> None:
        """Ask the child to exit (closing its socket), then kill it if it lingers."""
        self.close_start()
        if not self._abandoned():
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_files()

    def _close_files(self) -> None:
        for stream in self._streams:
            stream.file.close()
            stream.fd = -1  # its number may be reused: reading it now fails instead


def parallel_map(
    children: Sequence[Child],
    fn: Callable[..., Any],
    items: Iterable[tuple[Any, ...]],
    on_result: Callable[[int, Any], None],
    label: Callable[[tuple[Any, ...]], str | None] | None = None,
) -> None:
    """Run ``fn(state, *item)`` for every item over ``children``; deliver results in order.

    ``on_result(i, value)`` is called for item 0, 1, 2... in order as soon as each and all
    before it are done, so the caller can stream results to disk with bounded memory.
    ``label(item)`` names an item's call in the prefix of what it prints.

    Raises:
        ChildDied: a child died; the others are left running for the caller to close.
        Exception: ``on_result`` raising stops the map (the exception propagates).
    """
    pending = iter(enumerate(items))
    in_flight: dict[Connection, tuple[Child, int]] = {}
    done: dict[int, Any] = {}
    next_out = 0
    exhausted = False

    def feed(child: Child) -> None:
        nonlocal exhausted
        if exhausted:
            return
        try:
            i, item = next(pending)
        except StopIteration:
            exhausted = True
            return
        child.submit(fn, *item, label=label(item) if label is not None else None)
        in_flight[child.conn] = (child, i)

    for child in children:
        feed(child)
    while in_flight:
        for conn in wait(list(in_flight)):
            child, i = in_flight.pop(conn)  # type: ignore[call-overload]
            done[i] = child.result()
            feed(child)
        while next_out in done:
            on_result(next_out, done.pop(next_out))
            next_out += 1
