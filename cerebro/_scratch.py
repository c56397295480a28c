"""Private scratch folders that do not outlive their process, even a killed one.

NOTE [ scratch folders ]
A worker's process group meets at a file in a temporary folder, and a Ray slot keeps
checkpoints in ``/dev/shm`` (memory) between hops. A process that exits normally removes
its folder (``atexit``, or its owner's ``close``); one that is SIGKILLed cannot, which is
what the fault tolerance is for, so each folder's name carries its process id
(``cerebro-group-<pid>-xxxx``) and the next :func:`private_dir` of the same kind removes
the folders of processes that are gone. Only this user's folders are touched. A folder
whose process id was reused by a live process waits for a later sweep.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

__all__ = ["private_dir"]


def private_dir(prefix: str, root: str | None = None) -> str:
    """A new folder ``<root>/<prefix><pid>-xxxx`` (mode 0700), removed when this process
    exits; first removes those ``prefix`` folders in ``root`` whose process is gone.

    Args:
        prefix: the kind of folder, e.g. ``"cerebro-group-"``.
        root: where (default: the temporary folder, ``TMPDIR``).
    """
    root = root if root is not None else tempfile.gettempdir()
    _sweep(root, prefix)
    path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root)
    atexit.register(shutil.rmtree, path, True)
    return path


def _sweep(root: str, prefix: str) -> None:
    uid = os.getuid()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        pid = _owner_pid(entry.name, prefix)
        if pid is None or _alive(pid):
            continue
        try:
            if entry.is_dir(follow_symlinks=False) and entry.stat().st_uid == uid:
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:  # removed by a concurrent sweep
            continue


def _owner_pid(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    head = name[len(prefix) :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
