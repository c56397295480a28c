"""Parallel ETL: ``row_prep`` over a pool of processes, streamed into partitions on disk."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cerebro._atomic import write_atomic
from cerebro.engine._pool import WorkerPool
from cerebro.engine._process import Child, ChildDied, Output, RemoteError, parallel_map
from cerebro.errors import CerebroError, ParamsError, UserCodeError, WorkerError
from cerebro.etl._paths import BadObjectPath, confine
from cerebro.etl._read import (
    FeaturesError,
    SplitPlan,
    bad_object_paths,
    feature_columns,
    object_path_problem,
    plan_split,
)
from cerebro.params import SPLITS, Params
from cerebro.partitions import PartitionWriter, StructureError, flatten, partition_path
from cerebro.spec import ETLSpec, check_spec, code_fingerprint

__all__ = ["MANIFEST", "load_manifest", "run_etl"]

MANIFEST = "manifest.json"
_CHUNK_ROWS = 256


@dataclass
class _RowFailure:
    """Why a row could not be prepared, sent back from the process that tried."""

    split: str
    row_id: Any
    function: str  # the user hook that failed; "" for a bad object path (the CSV's fault)
    message: str
    traceback: str

    def error(self) -> CerebroError:
        """The error the driver raises for it."""
        if not self.function:
            return ParamsError(self.message)
        return UserCodeError(
            self.message,
            function=self.function,
            where=f"split {self.split!r}, row id {self.row_id}",
            user_traceback=self.traceback,
        )


# --- in the ETL processes ---------------------------------------------------------------------


def _setup(state: dict[str, Any], spec: ETLSpec, misc_dir: str, threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    state.clear()  # a pooled process may have served an earlier step
    state["spec"] = spec
    spec.initialize_worker()
    spec.read_misc(misc_dir)
    return os.getpid()


def _prep_chunk(
    state: dict[str, Any],
    split: str,
    object_dir: str | None,
    features: list[str],
    rows: list[dict[str, Any]],
) -> list[tuple[int, Any]] | _RowFailure:
    """``row_prep`` over ``rows``, each object path confined to ``object_dir`` first (here,
    on the disk ``row_prep`` reads: see NOTE [ object paths are confined ] in ``_paths``)."""
    spec: ETLSpec = state["spec"]
    name = f"{type(spec).__name__}.row_prep"
    out = []
    for row in rows:
        row_id = row["id"]
        for col in features:
            try:
                row[col] = confine(object_dir or "", row[col])
            except BadObjectPath as e:
                problem = object_path_problem(row_id, col, row[col], str(e))
                fix = f"checked on {platform.node()}, where row_prep reads them"
                message = bad_object_paths(split, str(object_dir), [problem], fix)
                return _RowFailure(split, row_id, "", message, "")
        try:
            result = spec.row_prep(row, split, object_dir)
        except Exception as e:  # noqa: BLE001 - reported with the row id
            return _RowFailure(
                split, row_id, name, f"{type(e).__name__}: {e}", traceback.format_exc()
            )
        why = _check_row(result, split)
        if why:
            return _RowFailure(split, row_id, name, why, "")
        inputs, label = result
        out.append((int(row_id), (inputs, None if split == "predict" else label)))
    return out


def _check_row(result: Any, split: str) -> str | None:
    if not isinstance(result, tuple | list) or len(result) != 2:
        return f"row_prep must return (input, label), got {type(result).__name__}" + (
            f" of length {len(result)}" if isinstance(result, tuple | list) else ""
        )
    inputs, label = result
    if inputs is None:
        return "row_prep returned None as the input"
    if label is None and split != "predict":
        return f"row_prep returned label None in {split} mode; only predict rows have no label"
    try:
        flatten(inputs, "input")
        if split != "predict":
            flatten(label, "label")
    except StructureError as e:
        return str(e)
    return None


# --- in the driver ----------------------------------------------------------------------------


def _fingerprint(
    params: Params, spec: ETLSpec, partitions: int, fraction: float, seed: int
) -> dict[str, Any]:
    splits = {}
    for split, path in params.mains.items():
        # Content, not mtime: rewriting identical CSVs must not invalidate the data.
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as e:
            raise ParamsError(f"{split} CSV {path} could not be read: {e}") from e
        splits[split] = {"csv": str(path), "sha256": digest.hexdigest()}
    return {
        "spec": f"{type(spec).__qualname__}:{code_fingerprint(spec)}",
        "partitions": partitions,
        "fraction": fraction,
        "seed": seed,
        "splits": splits,
    }


def load_manifest(data_dir: Path) -> dict[str, Any] | None:
    """The manifest of a finished ETL in ``data_dir``, or None when there is none."""
    try:
        return json.loads((Path(data_dir) / MANIFEST).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


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
    if not 0.0 < fraction <= 1.0:
        raise ParamsError(f"fraction must be in (0, 1], got {fraction!r}.")
    fp = _fingerprint(params, spec, partitions, fraction, seed)
    old = load_manifest(data_dir)
    if old is not None and old.get("fingerprint") == fp:
        return old
    plans = plan_splits(spec, params, partitions, fraction, seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MANIFEST).unlink(missing_ok=True)
    for split_dir in data_dir.iterdir():
        if split_dir.is_dir():
            shutil.rmtree(split_dir)
    items: list[tuple[SplitPlan, int, list[dict[str, Any]]]] = []
    for plan in plans:
        for p, rows in plan.chunks(_CHUNK_ROWS):
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
    bar = _progress(total_rows, progress)
    try:
        for child in children:
            r = child.call(_setup, spec, str(misc_dir), 1, label="set-up")
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
            if isinstance(value, _RowFailure):
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
            _prep_chunk,
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
    manifest = {
        "fingerprint": fp,
        "partitions": partitions,
        "splits": {plan.split: {"rows": len(plan.rows), "sizes": plan.sizes} for plan in plans},
    }
    write_atomic(data_dir / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def plan_splits(
    spec: ETLSpec, params: Params, partitions: int, fraction: float, seed: int
) -> list[SplitPlan]:
    """Read and check every split's CSV and deal its rows into partitions (on the driver).

    Shared by the local and the Ray ETL, so both put the same rows in the same partitions.
    """
    features = _call_driver_hook(spec, "set_features")
    try:
        names = feature_columns(features, params.mains)
    except FeaturesError as e:
        raise UserCodeError(
            str(e), function=f"{type(spec).__name__}.set_features", where="ETL"
        ) from None
    return [
        plan_split(
            split,
            params.mains[split],
            names,
            params.dirs.get(split),
            partitions,
            fraction,
            seed,
        )
        for split in SPLITS
        if split in params.mains
    ]


def _hook_name(spec: ETLSpec, err: RemoteError) -> str:
    hook = "read_misc" if "read_misc" in err.traceback else "initialize_worker"
    return f"{type(spec).__name__}.{hook}"


def _call_driver_hook(spec: ETLSpec, name: str) -> Any:
    try:
        return getattr(spec, name)()
    except Exception as e:
        raise UserCodeError(
            f"{type(e).__name__}: {e}",
            function=f"{type(spec).__name__}.{name}",
            where="ETL",
            user_traceback=traceback.format_exc(),
        ) from e


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="ETL rows", unit="row", leave=False)
