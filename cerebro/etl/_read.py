"""Reading one split's CSV, checking it, and deciding which rows go to which partition."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cerebro.errors import ParamsError

__all__ = ["SplitPlan", "plan_split"]

_MAX_LISTED = 5


@dataclass
class SplitPlan:
    """The rows of one split, in partition order, and how many go to each partition."""

    split: str
    rows: list[dict[str, Any]]  # the CSV rows, in partition order
    sizes: list[int]  # rows per partition; sum == len(rows)

    def chunks(self, max_rows: int) -> list[tuple[int, list[dict[str, Any]]]]:
        """``(partition, rows)`` pieces of at most ``max_rows``, in partition order."""
        out = []
        start = 0
        for p, size in enumerate(self.sizes):
            for lo in range(start, start + size, max_rows):
                out.append((p, self.rows[lo : min(lo + max_rows, start + size)]))
            start += size
        return out


def _read_csv(split: str, path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError as e:
        raise ParamsError(f"{split} CSV {path} is empty; it needs a header row and rows.") from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ParamsError(f"{split} CSV {path} could not be parsed as CSV: {e}") from e
    except OSError as e:
        raise ParamsError(f"{split} CSV {path} could not be read: {e}") from e


def _check_ids(split: str, path: Path, df: pd.DataFrame) -> None:
    if "id" not in df.columns:
        raise ParamsError(
            f"{split} CSV {path} has no 'id' column (columns: {', '.join(map(str, df.columns))}"
            "). Add a column 'id' holding a unique integer per row."
        )
    ids = df["id"]
    if not pd.api.types.is_integer_dtype(ids):
        bad = [v for v in ids.tolist() if not (isinstance(v, int | np.integer))][:_MAX_LISTED]
        raise ParamsError(
            f"{split} CSV {path}: column 'id' must hold integers; found {bad!r}. Number the "
            "rows with unique integers."
        )
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise ParamsError(
            f"{split} CSV {path}: duplicate id(s) {dup[:_MAX_LISTED]}; every row needs its own "
            "id (predictions and errors are reported by id)."
        )


def _check_objects(
    split: str, path: Path, df: pd.DataFrame, features: list[str], object_dir: Path | None
) -> None:
    if not features:
        return
    missing_cols = [c for c in features if c not in df.columns]
    if missing_cols:
        raise ParamsError(
            f"set_features() names column(s) {missing_cols} that the {split} CSV {path} lacks "
            f"(columns: {', '.join(map(str, df.columns))})."
        )
    if object_dir is None:
        raise ParamsError(
            f"set_features() marks {features} as object-file columns, but params has no "
            f"'{split}_dir'; set it to the folder those paths are relative to."
        )
    missing: list[str] = []
    for col in features:
        for row_id, rel in zip(df["id"].tolist(), df[col].tolist(), strict=True):
            if not isinstance(rel, str) or not (object_dir / rel).is_file():
                missing.append(f"id {row_id}: {rel!r}")
                if len(missing) >= _MAX_LISTED:
                    break
    if missing:
        raise ParamsError(
            f"{split} split: object file(s) not found under {split}_dir={object_dir}: "
            f"{'; '.join(missing)}. Check the paths in column(s) {features}."
        )


def plan_split(
    split: str,
    path: Path,
    features: list[str],
    object_dir: Path | None,
    partitions: int,
    fraction: float,
    seed: int,
) -> SplitPlan:
    """Read and check one split's CSV and deal its (sampled) rows into partitions.

    Rows are shuffled with ``seed`` and the first ``fraction`` of them kept (the predict
    split is always kept whole), then cut into ``partitions`` near-equal contiguous pieces.

    Raises:
        ParamsError: unreadable CSV, no or bad ``id`` column, duplicate ids, no rows,
            missing object files, or fewer train rows than partitions.
    """
    df = _read_csv(split, path)
    if len(df) == 0:
        raise ParamsError(f"{split} CSV {path} has a header but no rows.")
    _check_ids(split, path, df)
    _check_objects(split, path, df, features, object_dir)
    split_index = ("train", "val", "test", "predict").index(split)
    rng = np.random.default_rng([seed, split_index])
    order = rng.permutation(len(df))
    if split != "predict":
        keep = max(1, int(round(fraction * len(df))))
        order = order[:keep]
    if split == "train" and len(order) < partitions:
        raise ParamsError(
            f"the train split has {len(order)} row(s) after sampling (fraction={fraction}) but "
            f"{partitions} partitions are needed; use more data or fewer workers."
        )
    records = df.to_dict("records")
    rows = [records[i] for i in order]
    base, extra = divmod(len(rows), partitions)
    sizes = [base + (1 if p < extra else 0) for p in range(partitions)]
    return SplitPlan(split, rows, sizes)
