"""The minibatch loop of one hop: ``train``, ``valtest``, ``predict`` or a probe over one
partition, with the metrics each minibatch returns and whether one of them diverged."""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from typing import Any

import numpy as np
import torch

from cerebro.engine.messages import HopTask, UserFailure
from cerebro.partitions import Partition
from cerebro.spec import MinibatchSpec

__all__ = ["HopRun", "index_rows", "minibatch_indices", "run_minibatches"]


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | np.number):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().item())
    return None


def _metrics_of(result: Any, fn: str, hook: str) -> dict[str, float] | str:
    """The metrics dict of a train/valtest return value, or why it is unusable."""
    if hook == "train" and isinstance(result, tuple) and len(result) == 2:
        result = result[1]  # (model_object, metrics): the deployed original's form
    if not isinstance(result, dict):
        return (
            f"{fn} must return a dict of metrics like {{'loss': 0.3}}, got {type(result).__name__}"
        )
    out = {}
    for k, v in result.items():
        f = _scalar(v)
        if f is None:
            shape = f" of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else ""
            return (
                f"{fn} returned metric {k!r} = {type(v).__name__}{shape}; each metric must "
                "be a single number (use .item() or a mean)"
            )
        out[str(k)] = f
    return out


def minibatch_indices(part: Partition, bs: int, shuffle_seed: int | None) -> list[Any]:
    """Minibatch row indices: a seeded permutation for training, in order otherwise."""
    n = len(part)
    if shuffle_seed is None or n == 0:
        return [slice(i, min(i + bs, n)) for i in range(0, n, bs)]
    order = torch.from_numpy(np.random.default_rng(shuffle_seed).permutation(n))
    return list(torch.split(order, bs))  # views of one tensor: no conversion per minibatch


# How often a hop checks the metrics its minibatches returned (the first at once, so a
# broken return value fails fast): often enough that a diverged model stops within a few
# minibatches, rarely enough that checking costs little.
_COLLECT_EVERY = 8


def index_rows(index: Any) -> int:
    """How many rows a minibatch index (a slice or an array of positions) names."""
    return index.stop - index.start if isinstance(index, slice) else len(index)


class HopRun:
    """The per-minibatch loop of one hop, shared by every kind of hop, and what it found."""

    def __init__(
        self,
        spec: MinibatchSpec,
        task: HopTask,
        device: torch.device,
        *,
        stop_on_nonfinite: bool = True,
    ):
        self.spec, self.task, self.device = spec, task, device
        # A rank of a several-device worker must run every minibatch its peers run (each
        # step all-reduces): it never stops a diverged hop early on its own.
        self.stop_on_nonfinite = stop_on_nonfinite
        self.metrics: dict[str, list[float]] = {}
        self.sizes: list[int] = []
        self.predictions: list[tuple[int, Any, float]] = []
        self.pending: list[Any] = []  # what train/valtest returned, not yet collected
        self.user = 0.0
        self.nonfinite: str | None = None
        self.rows = 0  # of the partition a train/val/test/predict hop ran over

    def predict(self, components: dict[str, Any], minibatch: Any) -> Any:
        """The user's ``predict`` on one minibatch, timed, without gradients."""
        u0 = time.perf_counter()
        try:
            with torch.no_grad():
                return self.spec.predict(components, minibatch, self.task.hyperparams, self.device)
        finally:
            self.user += time.perf_counter() - u0

    def metrics_loop(
        self,
        hook: str,
        components: dict[str, Any],
        part: Partition,
        indices: list[Any],
        prefix: str = "",
    ) -> str | None:
        """Run ``train``/``valtest`` on the minibatches ``indices`` of ``part``, checking
        their metrics every few (:meth:`collect`); returns why one is unusable, if one is.
        A diverged train hop stops at the check that sees it.

        NOTE [ between two steps ]
        The caches are cold when a step returns, so each line run between two steps costs
        microseconds, a few milliseconds a hop: the loop keeps only the call and its timing
        there. ``no_grad`` is entered once per hop, the sizes are counted before the loop,
        and ``Partition.batches`` cuts many minibatches at a time.
        """
        fn = getattr(self.spec, hook)
        hp, device, pending = self.task.hyperparams, self.device, self.pending
        sizes = [index_rows(ix) for ix in indices]
        base, last = len(self.sizes), len(indices) - 1
        clock = time.perf_counter
        user = 0.0
        try:
            with contextlib.nullcontext() if hook == "train" else torch.no_grad():
                for k, minibatch in enumerate(part.batches(indices)):
                    u0 = clock()
                    try:
                        result = fn(components, minibatch, hp, device)
                    finally:
                        user += clock() - u0
                    pending.append(result)
                    if k % _COLLECT_EVERY == 0 or k == last:
                        self.sizes[base:] = sizes[: k + 1]
                        why = self.collect(hook, prefix)
                        if why:
                            return why
                        if self.nonfinite is not None and hook == "train":
                            if self.stop_on_nonfinite:
                                break  # a diverged model: stop spending time on it
        finally:
            self.user += user
        return None

    def collect(self, hook: str, prefix: str = "") -> str | None:
        """Record the metrics of the minibatches run since the last call, or say why one
        is unusable. Done every few minibatches rather than after each: this code runs
        with cold caches right after a step, and in a batch it costs a tenth as much."""
        fn_name = f"{type(self.spec).__name__}.{hook}"
        metrics = self.metrics
        for result in self.pending:
            values = _metrics_of(result, fn_name, hook)
            if isinstance(values, str):
                return values
            if prefix:
                values = {prefix + k: v for k, v in values.items()}
            elif metrics and values.keys() != metrics.keys():
                return (
                    f"{fn_name} returned metrics {sorted(values)} for one minibatch and "
                    f"{sorted(metrics)} for an earlier one; return the same keys"
                )
            for k, v in values.items():
                metrics.setdefault(k, []).append(v)
                if self.nonfinite is None and not math.isfinite(v):
                    self.nonfinite = k
        self.pending.clear()
        return None

    def predict_step(
        self, components: dict[str, Any], part: Partition, index: Any, minibatch: Any
    ) -> str | None:
        """Record ``predict``'s (row id, class, confidence) for one minibatch, or say why not."""
        inputs, _ = minibatch
        ids = part.row_ids(index)
        out = self.predict(components, (inputs, ids))
        fn_name = f"{type(self.spec).__name__}.predict"
        if not isinstance(out, tuple | list) or len(out) != 2:
            return f"{fn_name} must return (classes, confidences), got {type(out).__name__}"
        classes, conf = (_as_list(v) for v in out)
        if len(classes) != len(ids) or len(conf) != len(ids):
            return (
                f"{fn_name} returned {len(classes)} classes and {len(conf)} confidences "
                f"for a minibatch of {len(ids)} rows; return one of each per row"
            )
        for row_id, c, p in zip(ids.tolist(), classes, conf, strict=True):
            f = _scalar(p)
            if f is None:
                return f"{fn_name} returned confidence {p!r}; each must be a number"
            self.predictions.append((int(row_id), _plain(c), f))
        self.sizes.append(len(ids))
        return None


def _as_list(v: Any) -> list[Any]:
    if isinstance(v, torch.Tensor | np.ndarray):
        return list(v.tolist()) if v.ndim > 0 else [v.item()]
    return list(v)


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor | np.generic):
        return v.item()
    return v


def run_minibatches(
    spec: MinibatchSpec,
    task: HopTask,
    device: torch.device,
    components: dict[str, Any],
    parts: dict[tuple[str, int], Partition],
    ranks: int = 1,
) -> HopRun | UserFailure:
    """Run the hop's kind over its partition's minibatches; what it found, or what failed.

    Kinds: ``train`` (shuffled), ``val`` / ``test`` (in order, ``valtest``), ``predict`` (in
    order, ``predict``), and ``probe``: one ``train`` minibatch and one ``valtest`` minibatch,
    to learn the metric names and catch a broken spec before a fit spends any time. On a
    worker of ``ranks`` devices the probe's minibatch is one rank's share of the rows, what
    a device gets in the fit (a model may fit a device only with its share).
    """
    name = type(spec).__name__
    bs = int(task.hyperparams["batch_size"])
    run = HopRun(spec, task, device)
    train = task.kind in ("train", "probe")
    for obj in components.values():
        if isinstance(obj, torch.nn.Module):
            obj.train(train)
    hook = {"train": "train", "predict": "predict"}.get(task.kind, "valtest")
    try:
        if task.kind == "probe":
            for split, probe_hook in (("train", "train"), ("val", "valtest")):
                part = parts.get((split, task.partition))
                if part is None or len(part) == 0:
                    continue
                hook = probe_hook
                if probe_hook == "valtest":
                    for obj in components.values():
                        if isinstance(obj, torch.nn.Module):
                            obj.eval()
                one = [slice(0, min(-(-bs // ranks), len(part)))]
                why = run.metrics_loop(probe_hook, components, part, one, prefix=f"{split}_")
                if why:
                    return UserFailure(f"{name}.{probe_hook}", why, "")
        else:
            part = parts[(task.kind, task.partition)]
            run.rows = len(part)
            seed = task.shuffle_seed if task.kind == "train" else None
            indices = minibatch_indices(part, bs, seed)
            if task.kind == "predict":
                for k, minibatch in enumerate(part.batches(indices)):
                    why = run.predict_step(components, part, indices[k], minibatch)
                    if why:
                        return UserFailure(f"{name}.{hook}", why, "")
            elif why := run.metrics_loop(hook, components, part, indices):
                return UserFailure(f"{name}.{hook}", why, "")
    except Exception as e:  # noqa: BLE001 - the user's code raised
        return UserFailure(f"{name}.{hook}", f"{type(e).__name__}: {e}", traceback.format_exc())
    return run
