"""What an ``Experiment`` holds while it lives, and for how long.

The run directory, locked while a step runs (NOTE [ run lock ] in ``_rundir``), where a
failed catalog write becomes a clear error; ``etl_dir``, locked while an ETL may write it;
and the local engine's worker processes, kept warm between steps: they start on first use
and serve every later step until ``reset`` (the next step starts fresh ones), ``close``
(every later call raises), or the end of the program.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cerebro._etl_step import EtlDirLock
from cerebro._rundir import RunLock
from cerebro.engine._pool import WorkerPool
from cerebro.engine.local import threads_per_worker
from cerebro.errors import CerebroError

__all__ = ["Holding"]


class Holding:
    """One experiment's locks and worker pool, until it is closed."""

    def __init__(self, output_dir: Path, etl_dir: Path | None):
        self.output_dir = output_dir
        self.etl_lock = EtlDirLock(etl_dir)
        self._lock = RunLock(output_dir)
        self._pool: WorkerPool | None = None
        self._stop_pool: Callable[[], Any] | None = None  # the pool's close, run at most once
        self._closed = False

    def check_open(self) -> None:
        """Refuse any work once :meth:`close` ran."""
        if self._closed:
            raise CerebroError(
                "this Experiment was closed (close() or the end of its with-block); create "
                f"a new one: Experiment.from_dir({str(self.output_dir)!r}) picks up its run."
            )

    @contextmanager
    def locked(self, catalog_path: Path) -> Iterator[None]:
        """Hold the run directory, and turn catalog write failures into a clear error."""
        self.check_open()
        with self._lock:
            try:
                yield
            except sqlite3.OperationalError as e:
                raise CerebroError(
                    f"could not write the catalog {catalog_path}: {e}. Free disk space "
                    "(or raise the file-size limit) and rerun: SQLite rolled back the "
                    "unfinished change and every completed hop is kept."
                ) from e

    def pool(self, workers: int, *, quiet: bool) -> WorkerPool:
        """The worker pool, made now for ``workers`` workers if there is none."""
        if self._pool is None:
            self._pool = WorkerPool(threads_per_worker(workers), quiet=quiet)
            # Stops the processes when this object is collected or the program ends.
            self._stop_pool = weakref.finalize(self, self._pool.close)
        return self._pool

    def reset(self) -> None:
        """Stop the pool's processes; the next :meth:`pool` makes a new pool."""
        self.check_open()
        if self._stop_pool is not None:
            self._stop_pool()  # a finalizer: the pool's close(), once; the next step makes one
            self._pool = self._stop_pool = None

    def close(self) -> None:
        """Stop the pool's processes; :meth:`check_open` refuses from now on."""
        self._closed = True
        if self._pool is not None:
            self._pool.close()
