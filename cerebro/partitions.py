"""The on-disk format of one data partition, and its zero-copy loader.

A partition is a folder ``part-NNNNN`` holding ``meta.json``, ``ids.npy`` and one file per
tensor leaf of ``(input, label)``. A leaf whose rows all share one shape and a NumPy dtype is
one contiguous ``.npy`` array, memory-mapped on load (no copy, no parse: a worker "loads" a
partition in milliseconds and the OS page cache shares it). Other leaves (ragged shapes,
dtypes NumPy lacks) are stored as a list of tensors with ``torch.save``.

NOTE [ atomic partitions ]
A partition is written into ``.part-NNNNN.tmp-<pid>`` and renamed into place only once
complete, so a reader never sees half a partition and a killed ETL leaves only temp folders,
which the next ETL removes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cerebro._atomic import swap_dir

__all__ = ["Partition", "PartitionWriter", "StructureError", "flatten", "partition_path"]

_FORMAT = 1
GATHER_BYTES = 8 << 20  # the most minibatch data Partition.batches copies at once


class StructureError(ValueError):
    """A row's ``(input, label)`` is not tensors, or differs in structure from earlier rows."""


def partition_path(root: Path, split: str, index: int) -> Path:
    return Path(root) / split / f"part-{index:05d}"


# --- tree of tensors <-> (structure, leaves) --------------------------------------------------


def flatten(obj: Any, what: str) -> tuple[Any, list[torch.Tensor]]:
    """Split a tensor / tuple / list / dict of tensors into a JSON structure and its leaves."""
    leaves: list[torch.Tensor] = []

    def go(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            leaves.append(o)
            return {"t": "leaf", "i": len(leaves) - 1}
        if isinstance(o, np.ndarray | np.generic | int | float | bool):
            leaves.append(torch.as_tensor(o))
            return {"t": "leaf", "i": len(leaves) - 1}
        if isinstance(o, tuple | list):
            return {"t": type(o).__name__, "c": [go(c) for c in o]}
        if isinstance(o, dict):
            keys = list(o)
            if not all(isinstance(k, str) for k in keys):
                raise StructureError(f"{what}: dict keys must be strings, got {keys!r}")
            return {"t": "dict", "k": keys, "c": [go(o[k]) for k in keys]}
        if o is None:
            return {"t": "none"}
        raise StructureError(
            f"{what} must be a tensor or a tuple/list/dict of tensors, got {type(o).__name__}"
        )

    return go(obj), leaves


def unflatten(structure: Any, leaves: Sequence[Any]) -> Any:
    t = structure["t"]
    if t == "leaf":
        return leaves[structure["i"]]
    if t == "none":
        return None
    children = [unflatten(c, leaves) for c in structure["c"]]
    if t == "tuple":
        return tuple(children)
    if t == "list":
        return children
    return dict(zip(structure["k"], children, strict=True))


def _numpy_dtype(dtype: torch.dtype) -> np.dtype | None:
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:
        return None  # bfloat16 and friends: stored as a tensor list


# --- writing ----------------------------------------------------------------------------------


class PartitionWriter:
    """Write one partition row-chunk by row-chunk, fixed-shape leaves straight to disk.

    Args:
        path: the final ``part-NNNNN`` folder.
        rows: how many rows will be appended in all.
    """

    def __init__(self, path: Path, rows: int):
        self.path = Path(path)
        self.rows = rows
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.ids = np.empty(rows, dtype=np.int64)
        self.structure: Any = None
        self.arrays: list[np.memmap | None] = []
        self.lists: list[list[torch.Tensor] | None] = []
        self.filled = 0

    def _open(self, structure: Any, leaves: list[torch.Tensor]) -> None:
        self.structure = structure
        for k, leaf in enumerate(leaves):
            np_dtype = _numpy_dtype(leaf.dtype)
            if np_dtype is None:
                self.arrays.append(None)
                self.lists.append([])
            else:
                arr = np.lib.format.open_memmap(
                    self.tmp / f"leaf{k}.npy",
                    mode="w+",
                    dtype=np_dtype,
                    shape=(self.rows, *leaf.shape),
                )
                self.arrays.append(arr)
                self.lists.append(None)

    def _to_list(self, k: int) -> None:
        """A leaf turned out ragged: move rows written so far into a tensor list."""
        arr = self.arrays[k]
        assert arr is not None
        self.lists[k] = [torch.from_numpy(np.array(arr[i])) for i in range(self.filled)]
        self.arrays[k] = None
        del arr
        (self.tmp / f"leaf{k}.npy").unlink()

    def append(self, row_id: int, row: Any) -> None:
        """Append one row's ``(input, label)``.

        Raises:
            StructureError: not tensors, or a structure unlike the earlier rows'.
        """
        structure, leaves = flatten(row, "row_prep's return value")
        if self.filled >= self.rows:
            raise ValueError(f"partition {self.path.name} is full ({self.rows} rows)")
        if self.structure is None:
            self._open(structure, leaves)
        elif structure != self.structure:
            raise StructureError(
                f"row_prep returned {_describe(structure)} for this row but "
                f"{_describe(self.structure)} for earlier rows; every row must give the "
                "same structure."
            )
        i = self.filled
        for k, leaf in enumerate(leaves):
            arr = self.arrays[k]
            if arr is not None and (
                tuple(leaf.shape) != arr.shape[1:] or _numpy_dtype(leaf.dtype) != arr.dtype
            ):
                if _numpy_dtype(leaf.dtype) != arr.dtype:
                    raise StructureError(
                        f"row_prep returned dtype {leaf.dtype} for leaf {k} of this row but "
                        f"{arr.dtype} for earlier rows; cast to one dtype."
                    )
                self._to_list(k)
                arr = None
            if arr is not None:
                arr[i] = leaf.detach().cpu().numpy()
            else:
                lst = self.lists[k]
                assert lst is not None
                lst.append(leaf.detach().cpu().clone())
        self.ids[i] = row_id
        self.filled += 1

    def close(self) -> Path:
        """Finish the partition and move it into place atomically; returns its path."""
        if self.filled != self.rows:
            raise ValueError(f"partition {self.path.name}: {self.filled} of {self.rows} rows")
        leaves_meta = []
        for k, arr in enumerate(self.arrays):
            if arr is not None:
                arr.flush()
                leaves_meta.append({"kind": "array", "file": f"leaf{k}.npy"})
            else:
                torch.save(self.lists[k], self.tmp / f"leaf{k}.pt")
                leaves_meta.append({"kind": "list", "file": f"leaf{k}.pt"})
        self.arrays = []
        np.save(self.tmp / "ids.npy", self.ids)
        meta = {
            "format": _FORMAT,
            "rows": self.rows,
            "structure": self.structure,
            "leaves": leaves_meta,
        }
        (self.tmp / "meta.json").write_text(json.dumps(meta))
        return swap_dir(self.tmp, self.path)


def write_partition(path: Path, rows: Iterable[tuple[int, Any]], n: int) -> Path:
    """Write ``n`` rows of ``(row_id, (input, label))`` as one partition."""
    w = PartitionWriter(path, n)
    for row_id, row in rows:
        w.append(row_id, row)
    return w.close()


def _describe(structure: Any) -> str:
    """A compact type picture of a structure, e.g. ``(tensor, {'mask': tensor})``."""
    t = structure["t"]
    if t == "leaf":
        return "tensor"
    if t == "none":
        return "None"
    parts = [_describe(c) for c in structure["c"]]
    if t == "dict":
        pairs = zip(structure["k"], parts, strict=True)
        return "{" + ", ".join(f"{k!r}: {p}" for k, p in pairs) + "}"
    if t == "tuple":
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
    return "[" + ", ".join(parts) + "]"


# --- loading ----------------------------------------------------------------------------------


class Partition:
    """A loaded partition: row ids and leaves, memory-mapped where the shape is fixed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta = json.loads((self.path / "meta.json").read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{self.path}: partition format {meta.get('format')} unknown")
        self.rows: int = meta["rows"]
        self.structure = meta["structure"]
        self._pack = _packer(self.structure)
        self.ids = np.load(self.path / "ids.npy")
        self.leaves: list[torch.Tensor | list[torch.Tensor]] = []
        for leaf in meta["leaves"]:
            f = self.path / leaf["file"]
            if leaf["kind"] == "array":
                # mode "c" (copy-on-write) maps the file without copying and gives a writable
                # array, so torch.from_numpy shares it without warnings.
                self.leaves.append(torch.from_numpy(np.load(f, mmap_mode="c")))
            else:
                self.leaves.append(torch.load(f, weights_only=True))

    def __len__(self) -> int:
        return self.rows

    def nbytes(self) -> int:
        """Bytes of tensor data in this partition."""
        total = self.ids.nbytes
        for leaf in self.leaves:
            if isinstance(leaf, torch.Tensor):
                total += leaf.numel() * leaf.element_size()
            else:
                total += sum(t.numel() * t.element_size() for t in leaf)
        return total

    def batch(self, index: torch.Tensor | np.ndarray | slice) -> Any:
        """Rows ``index`` as ``(input, label)``, each leaf stacked along a new first dim.

        ``index`` is a slice or row positions (an int64 tensor is used as is: a hop cuts
        its minibatches' indices from one shuffled tensor rather than converting each).
        """
        out: list[Any] = []
        if isinstance(index, slice):
            for leaf in self.leaves:
                if isinstance(leaf, torch.Tensor):
                    out.append(leaf[index])
                else:
                    out.append(_stack(leaf[index]))
        else:
            idx = (
                index
                if isinstance(index, torch.Tensor)
                else torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64))
            )
            for leaf in self.leaves:
                if isinstance(leaf, torch.Tensor):
                    out.append(leaf.index_select(0, idx))
                else:
                    out.append(_stack([leaf[i] for i in idx.tolist()]))
        return self._pack(out)

    def batches(
        self, indices: Sequence[torch.Tensor | slice], gather_bytes: int = GATHER_BYTES
    ) -> Iterator[Any]:
        """The minibatches ``indices``, in order, each as :meth:`batch` gives it.

        Row positions of consecutive minibatches are gathered together, up to
        ``gather_bytes`` of fixed-shape leaves at a time, and each minibatch is a view of
        that copy. Slices are views of the partition already and are never gathered.

        Between two train steps the caches are cold: one gather for many minibatches costs
        a third of one per minibatch (see ``bench/hop_costs.py``), and cutting a group's
        minibatch views all at once takes a quarter less than cutting each after its step.
        Ragged (list) leaves are stacked one minibatch at a time, so memory stays bounded
        by ``gather_bytes``.
        """
        row_bytes = sum(
            math.prod(leaf.shape[1:]) * leaf.element_size()
            for leaf in self.leaves
            if isinstance(leaf, torch.Tensor)
        )
        views_only = all(isinstance(leaf, torch.Tensor) for leaf in self.leaves)
        i = 0
        while i < len(indices):
            if isinstance(indices[i], slice):
                j = i + 1
                while views_only and j < len(indices) and isinstance(indices[j], slice):
                    j += 1
                yield from [self.batch(ix) for ix in indices[i:j]]
                i = j
                continue
            j, rows = i, 0
            while j < len(indices):
                index = indices[j]
                if isinstance(index, slice):
                    break
                n = len(index)
                if j > i and (rows + n) * row_bytes > gather_bytes:
                    break
                rows += n
                j += 1
            if j - i < 2:
                yield self.batch(indices[i])
                i += 1
                continue
            group = [torch.as_tensor(ix, dtype=torch.int64) for ix in indices[i:j]]
            sizes = [len(ix) for ix in group]
            cat = torch.cat(group)
            split = [
                torch.split(leaf.index_select(0, cat), sizes)
                if isinstance(leaf, torch.Tensor)
                else None
                for leaf in self.leaves
            ]
            if views_only:
                yield from [self._cut(split, k, ix) for k, ix in enumerate(group)]
            else:
                yield from (self._cut(split, k, ix) for k, ix in enumerate(group))
            i = j

    def _cut(self, split: list[Any], k: int, ix: torch.Tensor) -> Any:
        """Minibatch ``k`` of a gathered group: its views of the ``split`` leaves, and its
        ragged leaves' rows ``ix`` stacked."""
        return self._pack(
            [
                parts[k] if parts is not None else _stack([leaf[r] for r in ix.tolist()])
                for parts, leaf in zip(split, self.leaves, strict=True)
            ]
        )

    def row_ids(self, index: torch.Tensor | np.ndarray | slice) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        return torch.from_numpy(np.ascontiguousarray(self.ids[index]))


def _packer(structure: Any) -> Callable[[list[Any]], Any]:
    """``unflatten`` for one structure, with the common ``(input, label)`` tuple made cheap
    (it runs once per minibatch)."""
    if structure is not None and structure["t"] == "tuple":  # None: an empty partition
        if [c.get("i") for c in structure["c"]] == list(range(len(structure["c"]))):
            return tuple
    return functools.partial(unflatten, structure)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Stack when the shapes agree; a ragged minibatch stays a list for the user's code."""
    if tensors and all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors)
    return tensors
