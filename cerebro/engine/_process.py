"""Child Python processes that run pickled calls, and an ordered parallel map over them.

Why not ``multiprocessing``: its "spawn" start re-runs the user's script in every child (a
script without an ``if __name__ == "__main__"`` guard then recursively starts runs), and
"fork" after torch has started its thread pools can deadlock. A child here is a fresh
``python -m cerebro.engine._child`` joined to us by a socket pair: nothing of the user's
script runs in it, and nothing listens on a port. Calls travel with cloudpickle, so specs
defined in a notebook or a script's ``__main__`` work.

NOTE [ child death ]
A child that dies closes its end of the socket; ``recv`` raises ``EOFError`` at once, and
``multiprocessing.connection.wait`` reports the connection ready. Death is detected in
milliseconds, not by a timeout.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

__all__ = ["Child", "ChildDied", "RemoteError", "parallel_map"]


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


class Child:
    """One child process that runs ``fn(state, *args)`` calls and sends back the result.

    ``state`` is a dict that lives as long as the child: where a worker keeps its data
    partitions and its spec between calls. Calls may be sent while one runs: the child
    runs them in order, and their answers come back in that order.

    Args:
        name: how errors name this process, e.g. ``"worker 1"``.
        env: extra environment variables for the child (thread counts, CUDA devices).
        warm: have the child import torch and build an optimizer before its first call,
            so that this start-up cost overlaps with the caller's work.
    """

    def __init__(self, name: str, env: dict[str, str] | None = None, *, warm: bool = False):
        self.name = name
        ours, theirs = socket.socketpair()
        full_env = dict(os.environ)
        full_env.update(env or {})
        # The child must import the same cerebro and see the user's modules.
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        argv = [sys.executable, "-m", "cerebro.engine._child", str(theirs.fileno())]
        self.proc = subprocess.Popen(
            argv + (["--warm"] if warm else []),
            pass_fds=[theirs.fileno()],
            env=full_env,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.in_flight = 0  # calls sent and not yet answered

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def busy(self) -> bool:
        """Whether a call is in flight."""
        return self.in_flight > 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Send one call (it runs after those in flight); its answer comes from
        :meth:`result`."""
        try:
            self.conn.send_bytes(cloudpickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            raise ChildDied(self.name, self.proc.poll()) from e
        self.in_flight += 1

    def result(self) -> Any:
        """Wait for the answer of the oldest call in flight.

        Returns:
            The call's return value, or a :class:`RemoteError` if it raised.

        Raises:
            ChildDied: the process exited before answering.
        """
        try:
            data = self.conn.recv_bytes()
        except (EOFError, ConnectionResetError, OSError) as e:
            self.in_flight = 0
            raise ChildDied(self.name, self._exitcode()) from e
        self.in_flight -= 1
        status, value = pickle.loads(data)
        return value

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one call and wait for it; a remote exception comes back as RemoteError."""
        self.submit(fn, *args)
        return self.result()

    def _exitcode(self) -> int | None:
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.conn.close()

    def close_start(self) -> None:
        """Ask the child to exit (closing its socket) without waiting for it."""
        try:
            self.conn.close()
        except OSError:
            pass

    def close(self, timeout: float = 10.0) -> None:
        """Ask the child to exit (closing its socket), then kill it if it lingers."""
        self.close_start()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def parallel_map(
    children: Sequence[Child],
    fn: Callable[..., Any],
    items: Iterable[tuple[Any, ...]],
    on_result: Callable[[int, Any], None],
) -> None:
    """Run ``fn(state, *item)`` for every item over ``children``; deliver results in order.

    ``on_result(i, value)`` is called for item 0, 1, 2... in order as soon as each and all
    before it are done, so the caller can stream results to disk with bounded memory.

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
        child.submit(fn, *item)
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
