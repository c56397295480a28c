"""The local ETL's executor: ``row_prep`` over a pool of processes, streamed into partitions.

What it writes is decided by the planner (``_plan``), which the Ray ETL shares; this module
only runs the plan on this machine's processes and writes the partitions here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from cerebro.engine._pool import WorkerPool
from cerebro.engine._process import Child, ChildDied, Output, RemoteError, parallel_map
from cerebro.errors import CerebroError, UserCodeError, WorkerError
from cerebro.etl._plan import (
    CHUNK_ROWS,
    check_fraction,
    fingerprint,
    manifest,
    plan_splits,
    progress_bar,
    reusable_manifest,
    start_manifest,
    write_manifest,
)
from cerebro.etl._prep import RowFailure, prep_chunk
from cerebro.etl._read import SplitPlan
from cerebro.params import Params
from cerebro.partitions import PartitionWriter, StructureError, partition_path
from cerebro.spec import ETLSpec, check_spec

__all__ = ["run_etl"]


# --- in the ETL processes ---------------------------------------------------------------------


def _setup(state: dict[str, Any], spec: ETLSpec, misc_dir: str, threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    state.clear()  # a pooled process may have served an earlier step
    state["spec"] = spec
    spec.initialize_worker()
    spec.read_misc(misc_dir)
    return os.getpid()


# --- in the driver ----------------------------------------------------------------------------


def run_etl(
    spec: ETLSpec,
    params: Params,
    data_dir: Path,
    misc_dir: Path,
    *,
    partitions: int,
    fraction: float,
    seed: int,
    processes: int,
    progress: bool = True,
    pool: WorkerPool | None = None,
) -> dict[str, Any]:
    """Preprocess every split of ``params`` into ``partitions`` partitions under ``data_dir``.

    ``row_prep`` runs in ``processes`` child processes, taken from ``pool`` (and given back)
    when one is passed.

    Skips the work when ``data_dir`` already holds the output of the same inputs, spec,
    fraction, seed and partition count. Returns the manifest.

    Raises:
        UserCodeError: ``row_prep`` (or a set-up hook) raised or returned bad output; names
            the split and row id.
        ParamsError: a CSV or its object files are wrong (see ``plan_split``).
    """
    check_spec(spec, ETLSpec)
    check_fraction(fraction)
    fp = fingerprint(params, spec, partitions, fraction, seed)
    old = reusable_manifest(data_dir, fp)
    if old is not None:
        return old
    plans = plan_splits(spec, params, partitions, fraction, seed)
    start_manifest(data_dir)
    for split_dir in data_dir.iterdir():
        if split_dir.is_dir():
            shutil.rmtree(split_dir)
    items: list[tuple[SplitPlan, int, list[dict[str, Any]]]] = []
    for plan in plans:
        for p, rows in plan.chunks(CHUNK_ROWS):
            items.append((plan, p, rows))
        for p, size in enumerate(plan.sizes):
            if size == 0:
                PartitionWriter(partition_path(data_dir, plan.split, p), 0).close()
    total_rows = sum(len(r) for _, _, r in items)
    n_proc = max(1, min(processes, len(items)))
    if pool is not None:
        children = pool.take(n_proc, "ETL process")
    else:
        output = Output(quiet=not progress)
        children = [
            Child(f"ETL process {i}", env={"OMP_NUM_THREADS": "1"}, output=output)
            for i in range(n_proc)
        ]
    writers: dict[tuple[str, int], PartitionWriter] = {}
    sizes = {(plan.split, p): s for plan in plans for p, s in enumerate(plan.sizes)}
    bar = progress_bar(total_rows, progress)
    try:
        for child in children:  # all at once: each waits for its own start-up
            child.submit(_setup, spec, str(misc_dir), 1, label="set-up")
        for child in children:
            r = child.result()
            if isinstance(r, RemoteError):
                raise UserCodeError(
                    f"{r.type_name}: {r.message}",
                    function=_hook_name(spec, r),
                    where=f"{child.name}",
                    user_traceback=r.traceback,
                )

        def on_result(i: int, value: Any) -> None:
            plan, p, rows = items[i]
            split = plan.split
            if isinstance(value, RemoteError):
                raise UserCodeError(
                    f"{value.type_name}: {value.message}",
                    function=f"{type(spec).__name__}.row_prep",
                    where=f"split {split!r}",
                    user_traceback=value.traceback,
                )
            if isinstance(value, RowFailure):
                raise value.error()
            key = (split, p)
            if key not in writers:
                writers[key] = PartitionWriter(partition_path(data_dir, split, p), sizes[key])
            w = writers[key]
            for row_id, row in value:
                try:
                    w.append(row_id, row)
                except StructureError as e:
                    raise UserCodeError(
                        str(e),
                        function=f"{type(spec).__name__}.row_prep",
                        where=f"split {split!r}, row id {row_id}",
                    ) from e
            if w.filled == w.rows:
                w.close()
            bar.update(len(rows))

        parallel_map(
            children,
            prep_chunk,
            (
                (plan.split, params.object_dir(plan.split), plan.features, rows)
                for plan, _, rows in items
            ),
            on_result,
            label=lambda item: str(item[0]),  # the split: row ids repeat across test/predict
        )
    except OSError as e:
        raise CerebroError(
            f"could not write the partitions under {data_dir}: {e}. Free disk space or raise "
            "the file-size limit, then rerun run_etl (your CSVs and earlier runs are untouched)."
        ) from e
    except ChildDied as e:
        raise WorkerError(
            f"an ETL process died: {e}. Rerun run_etl; if it repeats, the "
            "process may be running out of memory in row_prep."
        ) from e
    finally:
        bar.close()
        if pool is not None:
            pool.give_back(children)  # a child still busy (the map stopped early) is killed
        else:
            for child in children:
                child.kill()
        for w in writers.values():
            if w.tmp.exists():
                shutil.rmtree(w.tmp, ignore_errors=True)
    record = manifest(fp, partitions, plans)
    write_manifest(data_dir, record)
    return record


def _hook_name(spec: ETLSpec, err: RemoteError) -> str:
    hook = "read_misc" if "read_misc" in err.traceback else "initialize_worker"
    return f"{type(spec).__name__}.{hook}"
