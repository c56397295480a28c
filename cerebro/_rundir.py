"""The run directory's lock and the saved experiment that ``resume`` needs.

NOTE [ run lock ]
One process at a time may run ETL, a fit, a test or a prediction in a run directory. The
lock is ``fcntl.flock`` on ``DIR/.lock``: the kernel drops it when its process dies, however
it dies, so a killed run never blocks the next one. Readers (status, report) take no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import cloudpickle

from cerebro.errors import CerebroError

__all__ = ["RunLock", "load_experiment", "save_experiment"]

_SESSION = "experiment.json"


class RunLock:
    """Exclusive use of a run directory by this process (re-entrant within it)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> RunLock:
        if self._depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise CerebroError(
                    f"{self.path.parent} is in use by {holder}. Wait for it to finish or stop "
                    "it (a stopped run releases the directory at once), or use another "
                    "output_dir."
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} (since {time.ctime()})".encode())
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_experiment(run_dir: Path, settings: dict[str, Any], section: str, spec: object) -> None:
    """Remember how a step was called (``settings`` and its spec by value) for ``resume``."""
    run_dir = Path(run_dir)
    (run_dir / "specs").mkdir(exist_ok=True)
    _atomic_write(run_dir / "specs" / f"{section}.pkl", cloudpickle.dumps(spec))
    session = load_experiment(run_dir) or {}
    session.update(settings)
    _atomic_write(run_dir / _SESSION, json.dumps(session, indent=1, default=str).encode())


def load_experiment(run_dir: Path) -> dict[str, Any] | None:
    """The saved settings of a run directory, or None when it has none."""
    try:
        return json.loads((Path(run_dir) / _SESSION).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def load_spec(run_dir: Path, section: str) -> Any:
    """The spec saved for ``section`` (``"etl"`` or ``"fit"``)."""
    import pickle

    with open(Path(run_dir) / "specs" / f"{section}.pkl", "rb") as f:
        return pickle.load(f)
