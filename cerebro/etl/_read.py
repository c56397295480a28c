"""Reading one split's CSV, checking it, and deciding which rows go to which partition."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cerebro.errors import ParamsError
from cerebro.etl._paths import BadObjectPath, Confiner, shorten

__all__ = [
    "FeaturesError",
    "SplitPlan",
    "bad_object_paths",
    "feature_columns",
    "object_path_problem",
    "plan_split",
]

_MAX_LISTED = 5


@dataclass
class SplitPlan:
    """The rows of one split, in partition order, and how many go to each partition."""

    split: str
    rows: list[dict[str, Any]]  # the CSV rows, in partition order
    sizes: list[int]  # rows per partition; sum == len(rows)
    features: list[str]  # the object-file columns, their paths already confined once

    def chunks(self, max_rows: int) -> list[tuple[int, list[dict[str, Any]]]]:
        """``(partition, rows)`` pieces of at most ``max_rows``, in partition order."""
        out = []
        start = 0
        for p, size in enumerate(self.sizes):
            for lo in range(start, start + size, max_rows):
                out.append((p, self.rows[lo : min(lo + max_rows, start + size)]))
            start += size
        return out


def _read_csv(split: str, path: Path, nrows: int | None = None) -> pd.DataFrame:
    """The CSV (its first ``nrows`` rows), its header checked first."""
    try:
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
        _check_header(split, path, header.iloc[0].tolist() if len(header) else [])
        return pd.read_csv(path, nrows=nrows)
    except pd.errors.EmptyDataError as e:
        raise ParamsError(f"{split} CSV {path} is empty; it needs a header row and rows.") from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ParamsError(f"{split} CSV {path} could not be parsed as CSV: {e}") from e
    except OSError as e:
        raise ParamsError(f"{split} CSV {path} could not be read: {e}") from e


def _check_header(split: str, path: Path, names: list[str]) -> None:
    """Refuse what pandas would silently rename: ``id,id`` becomes ``id, id.1`` and an
    empty cell ``Unnamed: 2``, so a spec would read the wrong column or none."""
    empty = [i + 1 for i, name in enumerate(names) if not name.strip()]
    if empty:
        raise ParamsError(
            f"{split} CSV {path}: the header has empty column name(s) at position(s) "
            f"{empty[:_MAX_LISTED]}; give every column a name."
        )
    dups = [name for name, count in Counter(names).items() if count > 1]
    if dups:
        shown = ", ".join(shorten(n) for n in dups[:_MAX_LISTED])
        raise ParamsError(
            f"{split} CSV {path}: the header names column(s) {shown} more than once; give "
            "every column its own name."
        )


class FeaturesError(ValueError):
    """``set_features()`` returned something that names no columns (says why)."""


def feature_columns(features: Any, mains: Mapping[str, Path]) -> list[str]:
    """The object-file column names that ``set_features()``'s return value stands for.

    Either column names, or the original Cerebro's form: one bool per CSV column in header
    order (``id`` included), matched against the first split's CSV (train when given); the
    other splits then use those columns by name, so a predict CSV without the label column
    still works.

    Raises:
        FeaturesError: neither form, or booleans of the wrong count.
    """
    if not isinstance(features, list | tuple):
        raise FeaturesError(
            f"must return a list of column names (or one bool per CSV column), got "
            f"{shorten(features)}"
        )
    if all(isinstance(f, str) for f in features):
        return list(features)
    if not all(isinstance(f, bool | np.bool_) for f in features):
        raise FeaturesError(
            f"must return a list of column names or a list of bools (one per CSV column), "
            f"not a mix: got {shorten(features)}"
        )
    if not mains:
        raise FeaturesError("returned bools, but there is no CSV to match them against")
    split, path = next(iter(mains.items()))
    header = _read_csv(split, path, nrows=0).columns.tolist()
    if len(features) != len(header):
        raise FeaturesError(
            f"returned {len(features)} bools, but the {split} CSV {path} has {len(header)} "
            f"columns ({_columns(header)}); return one bool "
            "per column in that order (True for a column of object-file paths), or the "
            "column names"
        )
    return [str(name) for name, is_path in zip(header, features, strict=True) if is_path]


def _columns(names: list[Any], most: int = 20) -> str:
    """A header for an error message: the first ``most`` names, each cut short."""
    shown = ", ".join(shorten(str(n)) for n in names[:most])
    return shown + (", …" if len(names) > most else "")


_INT64 = np.iinfo(np.int64)


def _bad_id(value: Any) -> bool:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        return True
    return not _INT64.min <= int(value) <= _INT64.max


def _check_ids(split: str, path: Path, df: pd.DataFrame) -> None:
    if "id" not in df.columns:
        raise ParamsError(
            f"{split} CSV {path} has no 'id' column (columns: {_columns(list(df.columns))}). "
            "Add a column 'id' holding a unique integer per row."
        )
    ids = df["id"]
    if ids.dtype != np.int64:  # int64 holds no bool and nothing out of range; check the rest
        bad = [(i, v) for i, v in zip(df.index, ids.tolist(), strict=True) if _bad_id(v)]
        if bad:
            shown = "; ".join(f"data row {i + 1}: {shorten(v)}" for i, v in bad[:_MAX_LISTED])
            more = f" (and {len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else ""
            raise ParamsError(
                f"{split} CSV {path}: column 'id' must hold integers that fit in 64 bits "
                f"(-2^63 to 2^63-1); found {shown}{more}. Number the rows with unique integers."
            )
        df["id"] = ids = ids.astype(np.int64)
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise ParamsError(
            f"{split} CSV {path}: duplicate id(s) {dup[:_MAX_LISTED]}; every row needs its own "
            "id (predictions and errors are reported by id)."
        )


def _check_objects(
    split: str, path: Path, df: pd.DataFrame, features: list[str], object_dir: Path | None
) -> None:
    """Confine every object path to ``object_dir`` and write the normalized paths back into
    ``df`` (see NOTE [ object paths are confined ] in ``_paths``)."""
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
    bad: list[str] = []
    ids = df["id"].tolist()
    confine = Confiner(str(object_dir), len(df) * len(features))
    for col in features:
        safe = []
        for row_id, value in zip(ids, df[col].tolist(), strict=True):
            try:
                safe.append(confine(value))
            except BadObjectPath as e:
                bad.append(object_path_problem(row_id, col, value, str(e)))
                if len(bad) >= _MAX_LISTED:
                    break
        if bad:
            break
        df[col] = safe
    if bad:
        raise ParamsError(bad_object_paths(split, str(object_dir), bad, f"fix the CSV {path}"))


def object_path_problem(row_id: Any, column: str, value: Any, why: str) -> str:
    """One bad object cell, for an error message: row id, column, the value cut short."""
    return f"row id {row_id}, column {column!r}: {shorten(value)} {why}"


def bad_object_paths(split: str, object_dir: str, problems: list[str], fix: str) -> str:
    """The message of a ``ParamsError`` for bad object cells (``object_path_problem``)."""
    return (
        f"{split} split: bad object path(s) under {split}_dir={object_dir}: "
        f"{'; '.join(problems)}. Object paths must be relative paths of files inside "
        f"{split}_dir; {fix}."
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
        ParamsError: unreadable CSV, an empty or repeated header name, no or bad ``id``
            column, duplicate ids, no rows, object paths that do not name a file inside
            ``object_dir``, or fewer train rows than partitions.
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
    return SplitPlan(split, rows, sizes, features)
