"""Which engine runs a step's hops: the local worker processes or Ray actors.

Also the ``misc`` folder that either engine hands to every worker's ``read_misc``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cerebro._atomic import replacing
from cerebro.engine import Engine
from cerebro.engine._pool import WorkerPool
from cerebro.engine.local import LocalEngine, default_devices, threads_per_worker
from cerebro.errors import ParamsError
from cerebro.search import Space, grid_points
from cerebro.spec import MinibatchSpec

if TYPE_CHECKING:
    from cerebro.experiment import Experiment

__all__ = [
    "ENGINES",
    "check_batch_sizes",
    "check_devices",
    "check_engine",
    "copy_misc",
    "make_engine",
    "release_ray_actors",
]

ENGINES = ("local", "ray")


def check_engine(
    engine: str, address: str | None, resources_per_worker: Mapping[str, float] | None
) -> None:
    """Refuse an unknown engine, and Ray's options given to the local engine."""
    if engine not in ENGINES:
        raise ParamsError(f"engine must be one of {ENGINES}, got {engine!r}.")
    if engine == "local" and (address is not None or resources_per_worker):
        raise ParamsError(
            "address and resources_per_worker are for engine='ray'; "
            "pass engine='ray' to run on a Ray cluster."
        )


def check_devices(devices_per_worker: Any, workers: int, engine: str) -> list[int]:
    """Devices (processes) of each worker: an int for all, or one int per worker.

    Raises:
        TypeError: not an int or a list of ints.
        ParamsError: a count below 1, or a list of another length than ``workers``.
    """
    fix = "pass an int >= 1 (devices on every worker) or a list of one such int per worker"
    counts = devices_per_worker
    if not isinstance(counts, list | tuple):
        counts = [counts] * workers
    elif len(counts) != workers:
        raise ParamsError(
            f"devices_per_worker lists {len(counts)} counts for workers={workers}; {fix}."
        )
    for k in counts:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(
                f"devices_per_worker must be an int or a list of ints, got "
                f"{type(k).__name__} ({devices_per_worker!r}); {fix}."
            )
        if k < 1:
            raise ParamsError(f"devices_per_worker must be at least 1, got {k}; {fix}.")
    return list(counts)


def check_batch_sizes(space: Space, ranks: Sequence[int]) -> None:
    """Refuse a grid's ``batch_size`` smaller than a worker's devices (each needs a row).

    A search's draws are checked by the worker, hop by hop (the model fails, naming both).
    """
    most = max(ranks, default=1)
    if most < 2 or not space.is_grid:
        return
    for config in grid_points(space):
        bs = config.hyperparams.get("batch_size")
        if isinstance(bs, int) and not isinstance(bs, bool) and bs < most:
            raise ParamsError(
                f"batch_size={bs} ({config.model_id} of param_grid) is smaller than "
                f"devices_per_worker={most}: batch_size is the global minibatch and each "
                f"device needs at least one row of it; use batch_size >= {most} or fewer "
                "devices_per_worker."
            )


def copy_misc(output_dir: Path, misc: Sequence[Path]) -> Path:
    """Copy the ``misc`` files into one folder that every worker's ``read_misc`` gets."""
    d = output_dir / "misc"
    d.mkdir(exist_ok=True)
    for f in misc:
        target = d / f.name
        try:
            if not target.exists() or target.stat().st_size != f.stat().st_size:
                with replacing(target) as tmp:
                    shutil.copyfile(f, tmp)
        except OSError as e:
            raise ParamsError(
                f"params['misc'] file {f} could not be copied into {d}: {e}. Check that "
                "it is a readable file and that the output folder has room."
            ) from e
    return d


def make_engine(
    exp: Experiment,
    spec: MinibatchSpec,
    owned: list[dict[str, list[int]]],
    pool: Callable[[], WorkerPool | None],
) -> Engine:
    """Start ``exp``'s engine, each worker holding the partitions ``owned`` lists for it.

    ``pool`` gives the local engine's worker processes (asked only for that engine).
    """
    w = len(owned)
    ranks = exp.ranks[:w]
    if exp.engine == "ray":
        from cerebro.engine.ray import RayEngine

        return RayEngine(
            spec,
            str(exp.data_dir),
            owned,
            str(copy_misc(exp.output_dir, exp.params.misc)),
            address=exp.address,
            resources_per_worker=exp.resources_per_worker or None,
            ranks=ranks if any(k > 1 for k in ranks) else None,
        )
    return LocalEngine(
        spec,
        str(exp.data_dir),
        owned,
        str(copy_misc(exp.output_dir, exp.params.misc)),
        threads=threads_per_worker(sum(ranks)),  # (w with one device per worker)
        devices=default_devices(w),
        pool=pool(),
        ranks=ranks if any(k > 1 for k in ranks) else None,
    )


def release_ray_actors() -> None:
    """Stop the Ray actors an ETL left waiting for a fit, when Ray runs in this process."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from cerebro.engine._ray_nodes import release_idle

        release_idle(ray)
