"""Entry point of a child process: ``python -m cerebro.engine._child FD [--warm]``.

With ``--warm`` it first imports torch and builds an optimizer (whose first construction
imports torch's compiler stack, about a second), so a pooled worker is ready when its
first call comes. Then it reads ``(fn, args)`` calls from the socket FD, runs
``fn(state, *args)``, and answers ``("ok", value)`` or ``("error", RemoteError)``. Exits
when the parent closes the socket.
"""

from __future__ import annotations

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


def main(fd: int, warm: bool = False) -> None:
    conn = Connection(fd)
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
            reply: tuple[str, Any] = ("ok", fn(state, *args))
        except BaseException as e:  # noqa: BLE001 - report everything to the parent
            reply = ("error", _error(e))
        try:
            payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - an unpicklable return value
            payload = pickle.dumps(("error", _error(e)), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            conn.send_bytes(payload)
        except (BrokenPipeError, OSError):
            return


if __name__ == "__main__":
    main(int(sys.argv[1]), warm="--warm" in sys.argv[2:])
