"""What runs where ``row_prep`` runs, for either executor: a local ETL process (``_run``) or
a Ray worker actor (``cerebro.engine._ray_actor``): prepared rows, or a ``RowFailure``."""

from __future__ import annotations

import platform
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from cerebro.errors import CerebroError, ParamsError, UserCodeError
from cerebro.etl._paths import BadObjectPath, confine
from cerebro.etl._read import bad_object_paths, object_path_problem
from cerebro.partitions import StructureError, flatten
from cerebro.spec import ETLSpec

__all__ = ["RowFailure", "prep_chunk"]


@dataclass
class RowFailure:
    """Why a row could not be prepared, sent back from the process (or actor) that tried."""

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


def prep_chunk(
    state: dict[str, Any],
    split: str,
    object_dir: str | None,
    features: list[str],
    rows: list[dict[str, Any]],
) -> list[tuple[int, Any]] | RowFailure:
    """``row_prep`` over ``rows``, each object path confined to ``object_dir`` first (here,
    on the disk ``row_prep`` reads: see NOTE [ object paths are confined ] in ``_paths``)."""
    spec: ETLSpec = state["spec"]
    name = f"{type(spec).__name__}.row_prep"
    out = []
    for row in rows:
        row_id = row["id"]
        for col in features:
            try:  # resolved right before this row's row_prep (NOTE [ confining many paths ])
                row[col] = confine(object_dir or "", row[col])
            except BadObjectPath as e:
                problem = object_path_problem(row_id, col, row[col], str(e))
                fix = f"checked on {platform.node()}, where row_prep reads them"
                message = bad_object_paths(split, str(object_dir), [problem], fix)
                return RowFailure(split, row_id, "", message, "")
        try:
            result = spec.row_prep(row, split, object_dir)
        except Exception as e:  # noqa: BLE001 - reported with the row id
            return RowFailure(
                split, row_id, name, f"{type(e).__name__}: {e}", traceback.format_exc()
            )
        why = _check_row(result, split)
        if why:
            return RowFailure(split, row_id, name, why, "")
        inputs, label = result
        prepared = (inputs, None if split == "predict" else label)
        out.append((int(row_id), _for_the_wire(prepared)))
    return out


def _for_the_wire(obj: Any) -> Any:
    """``obj`` with its CPU tensors as numpy arrays, the same bytes: a tensor pickles
    through ``torch.save`` (about 0.2 ms each, paid again to load it in the process that
    writes the partitions), an array in microseconds; the writer takes either and stores
    the same leaves. Tensors numpy cannot hold (bfloat16, on a device) travel as they are."""
    if isinstance(obj, torch.Tensor):
        try:
            return obj.detach().numpy()
        except (TypeError, RuntimeError):  # a dtype numpy lacks, a device, a sparse layout
            return obj
    if isinstance(obj, tuple):
        return tuple(_for_the_wire(o) for o in obj)
    if isinstance(obj, list):
        return [_for_the_wire(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _for_the_wire(v) for k, v in obj.items()}
    return obj


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
