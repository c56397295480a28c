"""Object paths from untrusted CSV cells, confined to the split's object folder.

NOTE [ object paths are confined ]
A CSV is data, not code, and must not decide which files Cerebro reads. Every value of an
object-file column (``ETLSpec.set_features()``) is checked before ``row_prep`` sees its row:
it must be a relative path that, with every symbolic link resolved, names a regular file
inside the split's ``*_dir``. ``row_prep`` then gets the path normalized (relative to
``object_dir``, no ``..``, no links), so ``os.path.join(object_dir, row[col])`` or
``object_dir + "/" + row[col]`` opens that file and nothing else. The check runs on the
driver (every row, before any process starts, so all mistakes show at once) and again where
``row_prep`` runs (a Ray node's disk need not be the driver's). Outside paths are refused
from the path alone, before anything outside is looked at, so an error never tells whether
an outside file exists.
"""

from __future__ import annotations

import os
import stat
from typing import Any

__all__ = ["MAX_PATH_CHARS", "BadObjectPath", "confine", "shorten"]

MAX_PATH_CHARS = 4096  # Linux's PATH_MAX; longer paths cannot be opened at all
_MAX_NAME_BYTES = 255  # NAME_MAX of common file systems
_SHOWN = 80


class BadObjectPath(ValueError):
    """An object-file cell that does not name a file inside its folder (says why)."""


def shorten(value: Any, limit: int = _SHOWN) -> str:
    """``repr(value)`` cut to about ``limit`` characters, so a huge cell makes a short error."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}…({len(text)} characters)"


def confine(object_dir: str, value: Any) -> str:
    """``value`` as a normalized path relative to ``object_dir`` of a regular file inside it.

    ``object_dir`` must be an absolute path with its links resolved (``Params`` gives one).

    Raises:
        BadObjectPath: the value is not a string, is empty, holds a NUL, is too long, is
            absolute, resolves outside ``object_dir`` (``..`` or a symbolic link), or names
            nothing, a folder, or something that is not a regular file.
    """
    if not isinstance(value, str):
        kind = "empty" if value is None or value != value else type(value).__name__  # NaN
        raise BadObjectPath(f"is not a path ({kind}); the cell must hold a file path")
    if not value:
        raise BadObjectPath("is empty; the cell must hold a file path")
    if "\0" in value:
        raise BadObjectPath("holds a NUL character, which no file path can contain")
    if len(value) > MAX_PATH_CHARS or any(
        len(part.encode(errors="surrogateescape")) > _MAX_NAME_BYTES for part in value.split("/")
    ):
        raise BadObjectPath(
            f"is {len(value)} characters long: no file can have a path over {MAX_PATH_CHARS} "
            f"characters or a name over {_MAX_NAME_BYTES} bytes"
        )
    if os.path.isabs(value):
        raise BadObjectPath("is an absolute path; object paths must be relative to the folder")
    if not _inside(os.path.normpath(os.path.join(object_dir, value)), object_dir):
        raise BadObjectPath("leads outside the folder ('..'); paths must stay inside it")
    # Not strict: a link is resolved even when its target is missing, so an outside target
    # is refused as outside whether or not it exists.
    real = os.path.realpath(os.path.join(object_dir, value))
    if not _inside(real, object_dir):
        raise BadObjectPath("is a symbolic link (or passes through one) that leads outside")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise BadObjectPath("names no file") from None
    except OSError as e:
        raise BadObjectPath(f"cannot be read: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise BadObjectPath("is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise BadObjectPath("is not a regular file (a device, pipe or socket)")
    return os.path.relpath(real, object_dir)


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder
