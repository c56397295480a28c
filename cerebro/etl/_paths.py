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

__all__ = ["MAX_PATH_CHARS", "BadObjectPath", "Confiner", "confine", "shorten"]

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
    _lexical(object_dir, value)
    return _resolved(object_dir, value)


class Confiner:
    """:func:`confine` for many values of one folder, as fast as a set lookup.

    NOTE [ confining many paths ]
    Resolving a path (``realpath``: an ``lstat`` per component) costs tens of microseconds,
    seconds for a data set of images. So the folder is listed once (``scandir``, whose
    entries tell links and regular files apart for free): when it holds no symbolic link at
    all, a value that passes the checks on the path alone and names a listed regular file
    is inside, and nothing needs resolving. A folder with a link anywhere, or with many more
    files than values to check, is not listed: every value is resolved as by
    :func:`confine`, and so is any value that is not a listed file (for its error). Only
    the driver's check, of every row before any process starts, lists: where ``row_prep``
    runs each value is resolved right before its row, since earlier rows' ``row_prep``
    (or anything else) may change the folder meanwhile.
    """

    def __init__(self, object_dir: str, values: int):
        self.object_dir = object_dir
        self._most = 4 * values + 1024
        self._files: set[str] | None = None
        self._listed = False

    def __call__(self, value: Any) -> str:
        _lexical(self.object_dir, value)
        if not self._listed:  # at the first value, not before: no value, no listing
            self._files, self._listed = _regular_files(self.object_dir, self._most), True
        if self._files is not None:
            norm = os.path.normpath(value)
            if norm in self._files:
                return norm
        return _resolved(self.object_dir, value)


def _regular_files(root: str, most: int) -> set[str] | None:
    """Every regular file under ``root`` (relative paths), or None if a symbolic link is
    there or there are more than ``most`` entries."""
    found: set[str] = set()
    pending, seen = [""], 0
    while pending:
        rel = pending.pop()
        try:
            with os.scandir(os.path.join(root, rel) if rel else root) as it:
                for entry in it:
                    seen += 1
                    if seen > most or entry.is_symlink():
                        return None
                    name = os.path.join(rel, entry.name) if rel else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(name)
                    elif entry.is_file(follow_symlinks=False):
                        found.add(name)
        except OSError:
            return None
    return found


def _lexical(object_dir: str, value: Any) -> None:
    """The checks on the path alone (before anything on disk is looked at)."""
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


def _resolved(object_dir: str, value: str) -> str:
    """The checks with every link resolved, on a value :func:`_lexical` passed."""
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
