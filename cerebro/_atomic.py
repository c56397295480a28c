"""Write-to-temp-then-rename: the one way Cerebro puts a file or folder in place.

NOTE [ atomic renames ]
A reader (a resumed driver, a worker loading a checkpoint, a browser on the report) sees a
file's old content or its new content, never half of it: every write goes to a temporary
name in the same folder (``.<name>.tmp-<pid>-<thread>``, unique per writer, so two processes
or threads writing the same file never share a temporary) and ``os.replace`` puts it in
place, which POSIX makes atomic within one file system. A write that fails removes its
temporary and leaves the old file as it was. A crash can leave a ``.tmp-`` file behind; it is
never read, and the next write of the same name from the same process replaces it.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing", "swap_dir", "temp_name", "write_atomic"]


def temp_name(path: Path) -> Path:
    """The temporary name this process and thread writes ``path`` under before the rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to ``path``, else remove it.

    The parent folder is created. Use it where a library writes the file itself
    (``torch.save``, ``fig.savefig``, ``shutil.copyfile``)::

        with replacing(out) as tmp:
            torch.save(state, tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` through a temporary name and a rename."""
    with replacing(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def swap_dir(new: Path, path: Path) -> Path:
    """Put the finished folder ``new`` at ``path``, replacing any folder there.

    ``os.replace`` cannot rename onto a folder that has files, so the old one is first
    renamed aside and removed after the swap: at every moment ``path`` is absent, the old
    folder or the new one, never a mix of both.
    """
    old = path.with_name(f".{path.name}.old-{os.getpid()}-{threading.get_ident()}")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)
    return path
