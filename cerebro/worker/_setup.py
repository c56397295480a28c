"""A worker process's set-up, once per fit, and the dispatch of each hop it is sent.

What belongs to one worker rather than to one hop lives here: its threads, device, model
cache, the spec's set-up hooks and the partitions it holds (``state``), and the per-hop
settings (threads, deterministic algorithms) a hop asks of the process.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from cerebro.allocator import keep_freed_memory
from cerebro.engine.messages import GroupBroken, HopOutcome, HopTask, UserFailure
from cerebro.model_cache import ModelCache, default_budget
from cerebro.partitions import Partition, partition_path
from cerebro.spec import MinibatchSpec
from cerebro.worker._checkpoint import Unusable, build_model, save_checkpoint
from cerebro.worker._hop import run_minibatches

__all__ = ["hop_numerics", "run_hop", "setup_worker"]


def setup_worker(
    state: dict[str, Any],
    spec: MinibatchSpec,
    data_dir: str,
    owned: dict[str, list[int]],
    misc_dir: str,
    threads: int,
    device: str,
    ranks: int = 1,
) -> dict[str, Any] | UserFailure:
    """Run once per worker process: threads, the spec's set-up hooks, load owned partitions.

    With ``ranks`` > 1 this process is rank 0 of a process group of that many and starts
    the others (NOTE [ a worker's process group ] in ``_group``).
    """
    group = state.pop("group", None)  # what an earlier step of a pooled process started
    if group is not None and (group.world != ranks or group.device != device or group.dead()):
        group.close()
        group = None
    if ranks > 1:
        from cerebro.worker._group import Group

        if group is None:
            group = Group(ranks, threads, device)
        # The ranks set up (and the first time start: import torch...) meanwhile.
        group.send_setup((spec, data_dir, owned, misc_dir, threads))
        mine = setup_worker(state, spec, data_dir, owned, misc_dir, threads, device)
        state["group"] = group
        group.join()
        setups = group.gather_setups(mine)
        if failed := [s for s in setups if isinstance(s, UserFailure)]:
            return failed[0]
        assert isinstance(mine, dict)
        return dict(mine, ranks=ranks, rank_pids=group.pids())
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


def hop_numerics(state: dict[str, Any], task: HopTask) -> None:
    """The intra-op threads and deterministic algorithms the hop asks for (NOTE [ same
    bits at any scale ] in ``cerebro/_settings.py``): kernels round differently with other
    thread counts, so a deterministic fit runs every hop with the same count everywhere."""
    threads = task.threads if task.threads is not None else state.get("threads")
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if torch.are_deterministic_algorithms_enabled() != task.deterministic:
        torch.use_deterministic_algorithms(task.deterministic)


def run_hop(state: dict[str, Any], task: HopTask) -> HopOutcome | UserFailure | GroupBroken:
    """Run one hop in this worker on a partition it holds.

    Kinds: ``train`` (shuffled, updates and saves the model), ``val`` / ``test`` (in order,
    ``valtest``), ``predict`` (in order, ``predict``), and ``probe``: one ``train`` minibatch
    and one ``valtest`` minibatch on a fresh model, saving nothing, to learn the metric
    names and catch a broken spec before a fit spends any time.
    """
    spec: MinibatchSpec = state["spec"]
    device: torch.device = state["device"]
    name = type(spec).__name__
    hop_numerics(state, task)
    if (group := state.get("group")) is not None:
        if int(task.hyperparams["batch_size"]) < group.world:
            return UserFailure(
                "batch_size",
                f"batch_size={task.hyperparams['batch_size']} is smaller than "
                f"devices_per_worker={group.world}: each device needs at least one row of "
                f"every minibatch; use batch_size >= {group.world} or fewer devices_per_worker",
                "",
            )
        if task.kind != "probe":  # a probe (one minibatch, nothing saved) runs on rank 0
            from cerebro.worker._group import group_hop

            return group_hop(state, task)
    start = time.time()
    cache: ModelCache = state["models"]
    t0 = time.perf_counter()
    try:
        built = build_model(spec, task, device, cache)
        rng = torch.get_rng_state()  # what this hop starts from, for the cache
        # The user's hooks get a copy: keys they add during the hop are not kept, so a hop
        # sees the dict create_model_components returned, cached or not.
        components = dict(built)
    except Unusable as e:
        return UserFailure(f"{name}.create_model_components", str(e), "")
    except Exception as e:  # noqa: BLE001
        return UserFailure(
            f"{name}.create_model_components", f"{type(e).__name__}: {e}", traceback.format_exc()
        )
    load_seconds = time.perf_counter() - t0
    world = group.world if group is not None else 1
    run = run_minibatches(spec, task, device, components, state["partitions"], world)
    if isinstance(run, UserFailure):
        return run
    s0 = time.perf_counter()
    if task.kind == "train" and task.out_ckpt is not None and run.nonfinite is None:
        try:
            saved = save_checkpoint(components, task.out_ckpt, task)
            cache.put(task.model_id, task.out_ckpt, built, saved)
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
        run.rows,
        start,
        time.time(),
        run.user,
        load_seconds,
        save_seconds,
        nonfinite=run.nonfinite,
        predictions=run.predictions if task.kind == "predict" else None,
    )
