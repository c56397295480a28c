"""Models a worker keeps alive between hops, so a model that comes back skips its load.

NOTE [ model cache ]
A hop rebuilds its model from the checkpoint file (``torch.load``, the user's
``create_model_components``, ``load_state_dict``): 2-3 ms for a small MLP, more than the
whole validation hop it serves. So after a hop the worker keeps the model's live
components, keyed by the checkpoint file they are equal to (its path and the file's inode,
size and modification time). When the model's next hop on this worker names that same file
as its input, the components are reused; any other file (the model trained elsewhere
since, the file was rewritten) is a miss and loads from disk. A miss on a model the worker
still holds loads the file into those components (``load_state_dict``, gradients cleared)
instead of building new ones: what the user's ``create_model_components`` would have
built is overwritten by the load anyway, and building costs about a millisecond a hop.

A hit restores exactly what a load gives: the torch RNG is seeded with the model's seed and
set to the state a load would leave, and the hooks get a fresh copy of the dict that
``create_model_components`` returned (keys a hook added are gone), so a run is
bit-identical whichever hops hit. (Plain Python attributes a hook sets on a module, and
buffers registered with ``persistent=False``, survive a hit or a reload into held
components; keep state in ``state_dict``s, which checkpoints carry anyway.) An entry
is taken out before its hop runs and put back only after the hop succeeded, so the half-
trained components of a failed or diverged hop are never reused. The cache is bounded by
the bytes of the tensors it holds (``CEREBRO_MODEL_CACHE_MB``, default 1024 per worker;
``0`` turns it off), least recently used out first. It lives in the worker process: a
restarted worker starts empty, and each fit's set-up empties it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from cerebro._env import megabytes

__all__ = ["ModelCache", "default_budget"]


def default_budget() -> int:
    """The cache's size in bytes: ``CEREBRO_MODEL_CACHE_MB`` (default 1024)."""
    return megabytes("CEREBRO_MODEL_CACHE_MB", 1024)


def _file_key(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def state_bytes(components: dict[str, Any]) -> int:
    """Bytes of the tensors in the components' state dicts (weights, optimizer state)."""
    return sum(
        _tensor_bytes(c.state_dict()) for c in components.values() if hasattr(c, "state_dict")
    )


@dataclass
class _Entry:
    key: tuple[int, int, int, int]
    path: str
    components: dict[str, Any]
    rng: torch.Tensor
    nbytes: int


class ModelCache:
    """Live model components per model id, each equal to one checkpoint file."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # id() and size of the components a hit handed out: when the same dict comes back to
        # put, its size is known (a state_dict of each component costs ~0.25 ms a hop). Only
        # the id is kept, so a failed hop's components are not held on to; an id reused by a
        # later dict of the same model would be the same model's config, of the same size.
        self._out: dict[str, tuple[int, int]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def take(
        self, model_id: str, ckpt: str | None
    ) -> tuple[dict[str, Any], torch.Tensor | None] | None:
        """Remove the model's entry and return ``(components, rng)``: ``rng`` is None when
        the components are older than ``ckpt`` (load it into them). None: nothing held, or
        no ``ckpt`` (a first hop builds fresh)."""
        entry = self._entries.pop(model_id, None)
        self._out.pop(model_id, None)
        if entry is not None:
            self.bytes -= entry.nbytes
        if ckpt is None:
            return None
        current = entry is not None and entry.path == ckpt and entry.key == _file_key(ckpt)
        if current:
            self.hits += 1
        else:
            self.misses += 1
        if entry is None:
            return None
        self._out[model_id] = (id(entry.components), entry.nbytes)
        return entry.components, entry.rng if current else None

    def put(self, model_id: str, ckpt: str, components: dict[str, Any], rng: torch.Tensor) -> None:
        """Keep ``components`` (equal to the file ``ckpt``) and the RNG state a load gives."""
        if self.budget <= 0:
            return
        key = _file_key(ckpt)
        out = self._out.pop(model_id, None)
        if key is None:
            return
        nbytes = (
            out[1] if out is not None and out[0] == id(components) else state_bytes(components)
        )
        if nbytes > self.budget:
            return
        self.take(model_id, None)
        self._entries[model_id] = _Entry(key, ckpt, components, rng, nbytes)
        self.bytes += nbytes
        while self.bytes > self.budget:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
