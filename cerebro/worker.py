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
A hop writes ``<out>.tmp-<pid>`` and renames it to ``<out>``; the controller records the
new checkpoint in the catalog only after the hop returns. A killed worker or driver leaves
at worst an unreferenced file, never a half-written one that the catalog points at.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cerebro.partitions import Partition, partition_path
from cerebro.spec import MinibatchSpec

__all__ = ["HopOutcome", "HopTask", "UserFailure", "run_hop", "setup_worker"]


@dataclass(frozen=True)
class HopTask:
    """One hop, as the controller sends it to a worker."""

    model_id: str
    hyperparams: dict[str, Any]
    kind: str  # "train" or "val" (or "test")
    partition: int
    epoch: int
    in_ckpt: str | None  # None: the model's first hop, build it fresh with init_seed
    out_ckpt: str | None  # where a train hop writes the new state
    init_seed: int
    shuffle_seed: int


@dataclass
class HopOutcome:
    """What a finished hop returns: per-minibatch metrics and where the time went."""

    metrics: dict[str, list[float]]
    batch_sizes: list[int]
    rows: int
    start: float
    end: float
    user_seconds: float  # inside the user's train/valtest
    load_seconds: float  # building the model and loading its state
    save_seconds: float
    pid: int = field(default_factory=os.getpid)
    nonfinite: str | None = None  # first metric that was NaN/inf, if any


@dataclass
class UserFailure:
    """A user's spec function raised, or returned something unusable."""

    function: str
    message: str
    traceback: str


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


def _build(spec: MinibatchSpec, task: HopTask, device: torch.device) -> dict[str, Any]:
    """Create the model's components and load its state (or seed a fresh model)."""
    state = None
    if task.in_ckpt is not None:
        state = torch.load(task.in_ckpt, map_location="cpu", weights_only=False)
    torch.manual_seed(task.init_seed)
    components = spec.create_model_components(dict(task.hyperparams))
    if not isinstance(components, dict) or "optimizer" not in components:
        got = sorted(components) if isinstance(components, dict) else type(components).__name__
        raise _Unusable(f"must return a dict with the key 'optimizer', got {got}")
    for obj in components.values():
        if isinstance(obj, torch.nn.Module):
            obj.to(device)
    if state is not None:
        for name, sd in state["components"].items():
            components[name].load_state_dict(sd)
        torch.set_rng_state(state["rng"])
    return components


class _Unusable(Exception):
    """A user function returned something Cerebro cannot use."""


def _save(components: dict[str, Any], out: str) -> None:
    state = {
        "components": {
            k: v.state_dict()
            for k, v in components.items()
            if hasattr(v, "state_dict") and hasattr(v, "load_state_dict")
        },
        "rng": torch.get_rng_state(),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, out)


def run_hop(state: dict[str, Any], task: HopTask) -> HopOutcome | UserFailure:
    """Run one hop in this worker on a partition it holds."""
    spec: MinibatchSpec = state["spec"]
    device: torch.device = state["device"]
    name = type(spec).__name__
    start = time.time()
    t0 = time.perf_counter()
    try:
        components = _build(spec, task, device)
    except _Unusable as e:
        return UserFailure(f"{name}.create_model_components", str(e), "")
    except Exception as e:  # noqa: BLE001
        return UserFailure(
            f"{name}.create_model_components", f"{type(e).__name__}: {e}", traceback.format_exc()
        )
    load_seconds = time.perf_counter() - t0
    split = "train" if task.kind == "train" else task.kind
    part: Partition = state["partitions"][(split, task.partition)]
    bs = int(task.hyperparams["batch_size"])
    n = len(part)
    train = task.kind == "train"
    if train:
        order = np.random.default_rng(task.shuffle_seed).permutation(n)
        batches: list[Any] = [order[i : i + bs] for i in range(0, n, bs)]
    else:
        batches = [slice(i, min(i + bs, n)) for i in range(0, n, bs)]
    hook = "train" if train else "valtest"
    fn = getattr(spec, hook)
    fn_name = f"{name}.{hook}"
    metrics: dict[str, list[float]] = {}
    sizes: list[int] = []
    user = 0.0
    nonfinite = None
    for obj in components.values():
        if isinstance(obj, torch.nn.Module):
            obj.train(train)
    for index in batches:
        minibatch = part.batch(index)
        u0 = time.perf_counter()
        try:
            if train:
                result = fn(components, minibatch, task.hyperparams, device)
            else:
                with torch.no_grad():
                    result = fn(components, minibatch, task.hyperparams, device)
        except Exception as e:  # noqa: BLE001
            return UserFailure(fn_name, f"{type(e).__name__}: {e}", traceback.format_exc())
        user += time.perf_counter() - u0
        values = _metrics_of(result, fn_name, hook)
        if isinstance(values, str):
            return UserFailure(fn_name, values, "")
        if sizes and set(values) != set(metrics):
            return UserFailure(
                fn_name,
                f"returned metrics {sorted(values)} for one minibatch "
                f"and {sorted(metrics)} for an earlier one; return the same keys",
                "",
            )
        for k, v in values.items():
            metrics.setdefault(k, []).append(v)
            if nonfinite is None and not math.isfinite(v):
                nonfinite = k
        sizes.append(len(index) if not isinstance(index, slice) else index.stop - index.start)
        if nonfinite is not None and train:
            break  # a diverged model: stop spending time on it
    s0 = time.perf_counter()
    if train and task.out_ckpt is not None and nonfinite is None:
        _save(components, task.out_ckpt)
    save_seconds = time.perf_counter() - s0
    return HopOutcome(
        metrics,
        sizes,
        n,
        start,
        time.time(),
        user,
        load_seconds,
        save_seconds,
        nonfinite=nonfinite,
    )
