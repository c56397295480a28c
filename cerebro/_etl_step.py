"""The ETL step of an ``Experiment``: its settings, whether its output can be reused, the
folder it writes (checked, marked and locked), and the run on the chosen engine."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cerebro import etl
from cerebro._engine_choice import copy_misc
from cerebro._rundir import RunLock
from cerebro._saved import remember_etl
from cerebro._settings import positive_int
from cerebro.engine._pool import WorkerPool
from cerebro.errors import CerebroError, ParamsError
from cerebro.etl import (
    check_fraction,
    count_lines,
    default_partitions,
    fingerprint,
    reusable_manifest,
)
from cerebro.params import ETL_MARK, Params, check_etl_dir, is_etl_output
from cerebro.spec import ETLSpec

if TYPE_CHECKING:
    from cerebro.experiment import Experiment

__all__ = [
    "EtlDirLock",
    "etl_settings",
    "etl_target",
    "existing_etl",
    "manifest_after_etl",
    "run_etl_step",
]


def existing_etl(etl_dir: Path) -> dict[str, Any]:
    """The manifest of the finished ETL in ``etl_dir``, for params that give no CSVs."""
    manifest = etl.load_manifest(etl_dir)
    if manifest is None:
        raise ParamsError(
            f"etl_dir {etl_dir} holds no finished ETL ({etl.MANIFEST} missing). Give "
            "the CSVs (train_main ...) in params as well to have run_etl write the "
            "data there."
        )
    return manifest


def etl_settings(
    params: Params, workers: int, fraction: Any, seed: int, partitions: int | None
) -> dict[str, Any]:
    """Check ``run_etl``'s arguments before any work."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"fraction must be a number in (0, 1], got {fraction!r}.")
    if partitions is None:
        train = params.mains.get("train")
        rows = count_lines(train) - 1 if train is not None and train.is_file() else 0
        partitions = default_partitions(int(rows * min(float(fraction), 1.0)), workers)
    parts = positive_int("partitions", partitions)
    return {"fraction": fraction, "seed": seed, "partitions": parts}


def manifest_after_etl(
    params: Params, data_dir: Path, etl_spec: ETLSpec, settings: dict[str, Any]
) -> dict[str, Any] | None:
    """The manifest ``run_etl(etl_spec, **settings)`` will leave: the one there when
    the ETL reuses it, None when the ETL will write new data. Writes nothing.

    Raises:
        ParamsError: ``etl_dir`` is not Cerebro's, or (without CSVs) holds no ETL.
    """
    etl_dir = params.etl_dir
    if etl_dir is not None and not params.mains:
        return existing_etl(etl_dir)
    if etl_dir is not None:
        check_etl_dir(etl_dir)
    fraction = settings["fraction"]
    check_fraction(fraction)
    want = fingerprint(
        params, etl_spec, settings["partitions"], float(fraction), int(settings["seed"])
    )
    return reusable_manifest(data_dir, want)


class EtlDirLock:
    """``etl_dir`` held against another run's ETL; re-entrant. Only a folder that is
    Cerebro's already (NOTE [ whose etl_dir ]): nothing is written into any other."""

    def __init__(self, etl_dir: Path | None):
        self.etl_dir = etl_dir
        self._lock: RunLock | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold ``etl_dir`` (when it is Cerebro's) for the block."""
        etl_dir = self.etl_dir
        if etl_dir is None or not etl_dir.is_dir() or not is_etl_output(etl_dir):
            yield
            return
        if self._lock is None:
            self._lock = RunLock(etl_dir)
        try:
            self._lock.__enter__()
        except CerebroError:
            holder = (etl_dir / ".lock").read_text(errors="replace").strip()
            raise CerebroError(
                f"etl_dir {etl_dir} is in use by another run's ETL "
                f"({holder or 'a process'}). Wait for it to finish (then this run reuses its "
                "output), or give this run another etl_dir."
            ) from None
        try:
            yield
        finally:
            self._lock.__exit__(None, None, None)


@contextmanager
def etl_target(params: Params, data_dir: Path, lock: EtlDirLock) -> Iterator[None]:
    """Make ``data_dir`` ready for the ETL to write: checked to be Cerebro's (NOTE
    [ whose etl_dir ]) before anything there is touched, then marked as Cerebro's; an
    ``etl_dir`` is also locked against a second ETL writing into it at the same time."""
    d, etl_dir = data_dir, params.etl_dir
    if etl_dir is not None:
        check_etl_dir(etl_dir)  # again: the folder may have changed since Experiment()
    try:
        d.mkdir(parents=True, exist_ok=True)
        if not (d / ETL_MARK).exists():
            (d / ETL_MARK).write_text("Cerebro's preprocessed data (run_etl).\n")
    except OSError as e:
        raise ParamsError(
            f"cannot write the preprocessed data into {d}: {e}. Choose a writable "
            "etl_dir (or output_dir)."
        ) from e
    with lock.held():
        yield


def run_etl_step(
    exp: Experiment,
    etl_spec: ETLSpec,
    settings: dict[str, Any],
    lock: EtlDirLock,
    pool: Callable[[], WorkerPool | None],
) -> dict[str, Any]:
    """Reuse or write ``exp``'s preprocessed data (the caller holds the run directory).

    ``settings`` come from :func:`etl_settings`; ``pool`` gives the local engine's workers.
    """
    params, data_dir = exp.params, exp.data_dir
    with lock.held():
        # The same inputs: nothing to do, no worker to start (Ray's ETL checks as well
        # that every node still holds its partitions).
        reused = manifest_after_etl(params, data_dir, etl_spec, settings)
        if reused is not None and exp.engine == "local":
            remember_etl(exp, settings, etl_spec)
            return reused

    def write(run: Callable[..., dict[str, Any]], **engine_args: Any) -> dict[str, Any]:
        return run(
            etl_spec,
            params,
            data_dir,
            copy_misc(exp.output_dir, params.misc),
            partitions=settings["partitions"],
            fraction=float(settings["fraction"]),
            seed=int(settings["seed"]),
            progress=exp.verbose,
            **engine_args,
        )

    with etl_target(params, data_dir, lock):
        remember_etl(exp, settings, etl_spec)
        if exp.engine == "ray":
            from cerebro.engine.ray import ray_etl

            return write(
                ray_etl,
                workers=exp.workers,
                address=exp.address,
                resources_per_worker=exp.resources_per_worker or None,
            )
        workers = pool()
        assert workers is not None
        launched = workers.start(exp.workers)  # at once: they warm up as CSVs are read
        try:
            return write(etl.run_etl, processes=os.cpu_count() or 1, pool=workers)
        except BaseException:
            workers.discard_unused(launched)  # e.g. a bad CSV: no worker was needed
            raise
