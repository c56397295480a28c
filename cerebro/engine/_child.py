"""Entry point of a child process: ``python -m cerebro.engine._child FD [--warm]``.

With ``--warm`` it first imports torch and builds an optimizer (whose first construction
imports torch's compiler stack, about a second), so a pooled worker is ready when its
first call comes. Then it reads ``(fn, args)`` calls from the socket FD, runs
``fn(state, *args)``, and answers ``("ok", value)`` or ``("error", RemoteError)``. Exits
when the parent closes the socket.

A child forked by the fork server (``_zygote``) enters :func:`main` from there, already
warm, instead of through this entry point.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any


def _error(exc: BaseException) -> Any:
    from cerebro.engine._process import RemoteError

    tb = "".join(traceback.format_exception(exc))
    err = RemoteError(type(exc).__name__, str(exc), tb)
    try:
        pickle.loads(pickle.dumps(exc))
        err.exception = exc
    except Exception:  # noqa: BLE001 - an unpicklable user exception travels as text
        pass
    return err


def _warm_up() -> None:
    try:
        import torch

        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    except Exception:  # noqa: BLE001 - the first real call reports a broken torch properly
        pass


def _output_ends() -> tuple[int, int] | None:
    """Flush what the call printed; the sizes of the stdout and stderr files then."""
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        # (the files append, so moving their offset is harmless; and cheaper than fstat)
        return os.lseek(1, 0, os.SEEK_END), os.lseek(2, 0, os.SEEK_END)
    except (OSError, ValueError):  # a hook closed them: the parent reads what is there
        return None


def main(fd: int, warm: bool = False) -> None:
    conn = Connection(fd)
    # Each printed line reaches the file at once: the parent can show it while the call
    # runs, and it survives a crash. A crash in native code writes its Python traceback.
    if sys.stdout is not None:
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    faulthandler.enable()
    if warm:
        _warm_up()
    state: dict[str, Any] = {}
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            fn, args = pickle.loads(data)
            status, value = "ok", fn(state, *args)
        except BaseException as e:  # noqa: BLE001 - report everything to the parent
            status, value = "error", _error(e)
        ends = _output_ends()
        try:
            payload = pickle.dumps((status, value, ends), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - an unpicklable return value
            payload = pickle.dumps(("error", _error(e), ends), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            conn.send_bytes(payload)
        except (BrokenPipeError, OSError):
            return


if __name__ == "__main__":
    main(int(sys.argv[1]), warm="--warm" in sys.argv[2:])
