"""The ETL's planner, written once: what a run of the ETL writes, and whether it already has.

Two executors call it: the local one (:func:`cerebro.etl._run.run_etl`, ``row_prep`` in
child processes of this machine) and the Ray one (``cerebro.engine._ray_etl.ray_etl``, on
the nodes of a cluster). Everything that decides the output is here, so both put the same
rows in the same partitions and leave the same manifest:

1. :func:`check_fraction`, then :func:`fingerprint` (the inputs, spec, fraction, seed and
   partition count) and :func:`reusable_manifest` (the data there is already this output);
2. :func:`plan_splits`: every CSV read and checked, its rows dealt into partitions, in
   chunks of :data:`CHUNK_ROWS` (``SplitPlan.chunks``);
3. :func:`start_manifest` before writing, :func:`write_manifest` of :func:`manifest` after.

NOTE [ the manifest marks a finished ETL ]
    ``data_dir/manifest.json`` is removed before the first partition is written and
    written again (to a temp name, then renamed) only after the last one is complete, so
    a folder with a manifest holds the whole output of its fingerprint and a folder
    without one is reused by nobody. Its format is read back by every later run: the keys
    ``fingerprint``, ``partitions``, ``splits`` (and ``ray`` from the Ray ETL), in that
    order, never renamed.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from pathlib import Path
from typing import Any

from cerebro._atomic import write_atomic
from cerebro.errors import ParamsError, UserCodeError
from cerebro.etl._read import FeaturesError, SplitPlan, feature_columns, plan_split
from cerebro.params import SPLITS, Params
from cerebro.spec import ETLSpec, code_fingerprint

__all__ = [
    "CHUNK_ROWS",
    "MANIFEST",
    "check_fraction",
    "fingerprint",
    "load_manifest",
    "manifest",
    "plan_splits",
    "progress_bar",
    "reusable_manifest",
    "start_manifest",
    "write_manifest",
]

MANIFEST = "manifest.json"
CHUNK_ROWS = 256  # rows per call of row_prep's executor: one chunk, one partition


def check_fraction(fraction: float) -> None:
    """Refuse a ``fraction`` of the rows outside (0, 1] (``ParamsError``)."""
    if not 0.0 < fraction <= 1.0:
        raise ParamsError(f"fraction must be in (0, 1], got {fraction!r}.")


def fingerprint(
    params: Params, spec: ETLSpec, partitions: int, fraction: float, seed: int
) -> dict[str, Any]:
    """What makes the ETL's output this output: the CSVs' content, the spec's code, the rest."""
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


def reusable_manifest(data_dir: Path, fp: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest in ``data_dir`` when it records the fingerprint ``fp``, else None."""
    old = load_manifest(data_dir)
    return old if old is not None and old.get("fingerprint") == fp else None


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


def start_manifest(data_dir: Path) -> None:
    """Create ``data_dir`` and remove its manifest, before any partition is written."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MANIFEST).unlink(missing_ok=True)


def manifest(fp: dict[str, Any], partitions: int, plans: list[SplitPlan]) -> dict[str, Any]:
    """The manifest of a finished ETL of ``plans`` (an executor may add its own entry)."""
    return {
        "fingerprint": fp,
        "partitions": partitions,
        "splits": {plan.split: {"rows": len(plan.rows), "sizes": plan.sizes} for plan in plans},
    }


def write_manifest(data_dir: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as ``data_dir``'s manifest (atomically), after the last partition."""
    write_atomic(data_dir / MANIFEST, json.dumps(record, indent=1))


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


def progress_bar(total: int, enabled: bool) -> Any:
    """A bar of the rows prepared (``update(n)``, ``close()``); one that shows nothing if off."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="ETL rows", unit="row", leave=False)
