"""What a worker process does: set up once, then run hops on the partitions it holds.

A hop = load the model's state, run the user's ``train`` (or ``valtest``) over every
minibatch of one local partition, save the new state atomically, and return the
per-minibatch metrics. These functions run inside a worker process (see
``engine/_process.py``); the engine calls them with the worker's ``state`` dict.

NOTE [ model state travels whole ]
The checkpoint holds the ``state_dict`` of every component that has one (modules,
optimizer, LR scheduler) and the model's own torch RNG state. Restoring the RNG makes a
model's dropout masks and the like depend only on its own hop sequence, not on which worker
ran it or what that worker ran before: with the "fixed" scheduling policy a run is
bit-identical to any other run with the same seed.

NOTE [ atomic checkpoints ]
A hop writes its checkpoint through ``cerebro._atomic.replacing`` (NOTE [ atomic renames ]);
the controller records the new checkpoint in the catalog only after the hop returns. A
killed worker or driver leaves at worst an unreferenced file, never a half-written one that
the catalog points at.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cerebro._atomic import replacing
from cerebro._pack import pack
from cerebro.allocator import keep_freed_memory
from cerebro.engine.messages import HopOutcome, HopTask, UserFailure
from cerebro.model_cache import ModelCache, default_budget
from cerebro.partitions import Partition, partition_path
from cerebro.spec import MinibatchSpec

__all__ = ["run_hop", "setup_worker"]


def setup_worker(
    state: dict[str, Any],
    spec: MinibatchSpec,
    data_dir: str,
    owned: dict[str, list[int]],
    misc_dir: str,
    threads: int,
    device: str,
) -> dict[str, Any] | UserFailure:
    """Run once per worker process: threads, the spec's set-up hooks, load owned partitions."""
    torch.set_num_threads(threads)
    tuned = keep_freed_memory()  # before the first minibatch allocates anything
    state.clear()  # a pooled process may have served an earlier step
    state["threads"] = threads  # a hop that names no thread count gets this one
    state["models"] = ModelCache(default_budget())
    # Building the first optimizer of a process imports torch's compiler stack (about a
    # second). Pay it here, in parallel on every worker, rather than in the first hops.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    state["spec"] = spec
    state["device"] = torch.device(device)
    name = type(spec).__name__
    for hook, args in (("initialize_worker", ()), ("read_misc", (misc_dir,))):
        try:
            getattr(spec, hook)(*args)
        except Exception as e:  # noqa: BLE001 - reported with the hook's name
            return UserFailure(
                f"{name}.{hook}", f"{type(e).__name__}: {e}", traceback.format_exc()
            )
    parts: dict[tuple[str, int], Partition] = {}
    t0 = time.perf_counter()
    for split, indices in owned.items():
        for p in indices:
            parts[(split, p)] = Partition(partition_path(Path(data_dir), split, p))
    state["partitions"] = parts
    return {
        "pid": os.getpid(),
        "load_seconds": time.perf_counter() - t0,
        "bytes": sum(p.nbytes() for p in parts.values()),
        "threads": threads,
        "allocator_tuned": tuned,
    }


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


def _build(
    spec: MinibatchSpec, task: HopTask, device: torch.device, cache: ModelCache
) -> dict[str, Any]:
    """The model's components with its state: kept from an earlier hop, loaded, or fresh."""
    kept = cache.take(task.model_id, task.in_ckpt) if task.kind != "probe" else None
    if kept is not None and (rng := kept[1]) is not None:
        _seed(task.init_seed, device)  # NOTE [ model cache ]: the RNG exactly as a load
        torch.set_rng_state(rng)
        return kept[0]
    state = None
    if task.in_ckpt is not None:
        state = torch.load(task.in_ckpt, map_location="cpu", weights_only=False)
    _seed(task.init_seed, device)
    if kept is not None and state is not None and "rng" in state:
        components = kept[0]  # NOTE [ model cache ]: held, but older than the checkpoint
        for obj in components.values():
            if isinstance(obj, torch.nn.Module):
                obj.zero_grad(set_to_none=True)  # as built: no gradients
    else:
        components = spec.create_model_components(dict(task.hyperparams))
        if not isinstance(components, dict) or "optimizer" not in components:
            got = sorted(components) if isinstance(components, dict) else type(components).__name__
            raise _Unusable(f"must return a dict with the key 'optimizer', got {got}")
        for obj in components.values():
            if isinstance(obj, torch.nn.Module):
                obj.to(device)
    if state is not None:
        # A Cerebro checkpoint, or (models_dir) a plain {component: state_dict} file.
        saved = state.get("components", state)
        for name, sd in saved.items():
            if name not in components:
                raise _Unusable(
                    f"returned no component {name!r}, which the checkpoint "
                    f"{task.in_ckpt} holds (it has {sorted(components)})"
                )
            components[name].load_state_dict(sd)
        if "rng" in state:
            torch.set_rng_state(state["rng"])
    return components


def _seed(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)``, as far as a hop on ``device`` can tell.

    On a CPU worker only the CPU generator is used, so only it is seeded: the rest of
    ``torch.manual_seed`` (CUDA's and XPU's lazy seeding each record a stack trace while
    those are not initialized) cost 0.2-0.4 ms a hop, a sixth of a whole model load.
    """
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


class _Unusable(Exception):
    """A user function returned something Cerebro cannot use."""


def _save(components: dict[str, Any], out: str, task: HopTask) -> torch.Tensor:
    """Write the model's checkpoint atomically; returns the RNG state it holds."""
    rng = torch.get_rng_state()
    state = {
        "model_id": task.model_id,
        "hyperparams": dict(task.hyperparams),
        "epoch": task.epoch,
        "components": {
            k: v.state_dict()
            for k, v in components.items()
            if hasattr(v, "state_dict") and hasattr(v, "load_state_dict")
        },
        "rng": rng,
    }
    try:
        with replacing(out) as tmp, _no_zip_crc():
            torch.save(pack(state), tmp)  # one record per dtype, not per tensor: faster loads
    except (OSError, RuntimeError) as e:  # torch reports a short write as RuntimeError
        raise OSError(
            f"could not write it ({e}); the disk may be full or a file-size limit reached"
        ) from e
    return rng


@contextlib.contextmanager
def _no_zip_crc() -> Iterator[None]:
    """``torch.save`` without the zip records' CRC32s (~0.5 ms of a 1.3 MB checkpoint's
    3 ms): ``torch.load`` never checks them, and the rename makes a write all-or-nothing
    anyway. Only this call: a user hook's own ``torch.save`` keeps the setting it had."""
    get = getattr(torch.serialization, "get_crc32_options", None)
    set_ = getattr(torch.serialization, "set_crc32_options", None)
    if get is None or set_ is None:  # torch < 2.6: always computed
        yield
        return
    before = get()
    set_(False)
    try:
        yield
    finally:
        set_(before)


def _batches(part: Partition, bs: int, shuffle_seed: int | None) -> list[Any]:
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


def _size(index: Any) -> int:
    return index.stop - index.start if isinstance(index, slice) else len(index)


class _Run:
    """The per-minibatch loop of one hop, shared by every kind of hop."""

    def __init__(self, spec: MinibatchSpec, task: HopTask, device: torch.device):
        self.spec, self.task, self.device = spec, task, device
        self.metrics: dict[str, list[float]] = {}
        self.sizes: list[int] = []
        self.predictions: list[tuple[int, Any, float]] = []
        self.pending: list[Any] = []  # what train/valtest returned, not yet collected
        self.user = 0.0
        self.nonfinite: str | None = None

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
        sizes = [_size(ix) for ix in indices]
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


def _hop_numerics(state: dict[str, Any], task: HopTask) -> None:
    """The intra-op threads and deterministic algorithms the hop asks for (NOTE [ same
    bits at any scale ] in ``cerebro/_settings.py``): kernels round differently with other
    thread counts, so a deterministic fit runs every hop with the same count everywhere."""
    threads = task.threads if task.threads is not None else state.get("threads")
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if torch.are_deterministic_algorithms_enabled() != task.deterministic:
        torch.use_deterministic_algorithms(task.deterministic)


def run_hop(state: dict[str, Any], task: HopTask) -> HopOutcome | UserFailure:
    """Run one hop in this worker on a partition it holds.

    Kinds: ``train`` (shuffled, updates and saves the model), ``val`` / ``test`` (in order,
    ``valtest``), ``predict`` (in order, ``predict``), and ``probe``: one ``train`` minibatch
    and one ``valtest`` minibatch on a fresh model, saving nothing, to learn the metric
    names and catch a broken spec before a fit spends any time.
    """
    spec: MinibatchSpec = state["spec"]
    device: torch.device = state["device"]
    name = type(spec).__name__
    _hop_numerics(state, task)
    start = time.time()
    cache: ModelCache = state["models"]
    t0 = time.perf_counter()
    try:
        built = _build(spec, task, device, cache)
        rng = torch.get_rng_state()  # what this hop starts from, for the cache
        # The user's hooks get a copy: keys they add during the hop are not kept, so a hop
        # sees the dict create_model_components returned, cached or not.
        components = dict(built)
    except _Unusable as e:
        return UserFailure(f"{name}.create_model_components", str(e), "")
    except Exception as e:  # noqa: BLE001
        return UserFailure(
            f"{name}.create_model_components", f"{type(e).__name__}: {e}", traceback.format_exc()
        )
    load_seconds = time.perf_counter() - t0
    parts: dict[tuple[str, int], Partition] = state["partitions"]
    bs = int(task.hyperparams["batch_size"])
    run = _Run(spec, task, device)
    train = task.kind in ("train", "probe")
    for obj in components.values():
        if isinstance(obj, torch.nn.Module):
            obj.train(train)
    rows = 0
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
                one = [slice(0, min(bs, len(part)))]
                why = run.metrics_loop(probe_hook, components, part, one, prefix=f"{split}_")
                if why:
                    return UserFailure(f"{name}.{probe_hook}", why, "")
        else:
            part = parts[(task.kind, task.partition)]
            rows = len(part)
            indices = _batches(part, bs, task.shuffle_seed if task.kind == "train" else None)
            if task.kind == "predict":
                for k, minibatch in enumerate(part.batches(indices)):
                    why = run.predict_step(components, part, indices[k], minibatch)
                    if why:
                        return UserFailure(f"{name}.{hook}", why, "")
            elif why := run.metrics_loop(hook, components, part, indices):
                return UserFailure(f"{name}.{hook}", why, "")
    except Exception as e:  # noqa: BLE001 - the user's code raised
        return UserFailure(f"{name}.{hook}", f"{type(e).__name__}: {e}", traceback.format_exc())
    s0 = time.perf_counter()
    if task.kind == "train" and task.out_ckpt is not None and run.nonfinite is None:
        try:
            cache.put(task.model_id, task.out_ckpt, built, _save(components, task.out_ckpt, task))
        except OSError as e:
            return UserFailure(
                "saving the checkpoint",
                f"{task.out_ckpt}: {e}",
                traceback.format_exc(),
                system=True,
            )
    elif task.kind != "probe" and task.in_ckpt is not None and run.nonfinite is None:
        cache.put(task.model_id, task.in_ckpt, built, rng)  # unchanged by evaluation
    save_seconds = time.perf_counter() - s0
    return HopOutcome(
        run.metrics,
        run.sizes,
        rows,
        start,
        time.time(),
        run.user,
        load_seconds,
        save_seconds,
        nonfinite=run.nonfinite,
        predictions=run.predictions if task.kind == "predict" else None,
    )
