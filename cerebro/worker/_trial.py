"""``parallelism="auto"``: time each way of running a model's train hop, run the fastest.

NOTE [ choosing the parallelism ]
As Saturn (the MOP authors' follow-up) chooses per model, from short trial runs: the first
train hop of a model on a several-device worker first runs, for each of the
``CANDIDATES`` (rank 0 alone, DDP over every rank, FSDP over every rank), one warm-up
minibatch and :data:`TIMED` timed ones of the hop's own minibatches, on a throwaway copy
of the model built from the hop's checkpoint. A candidate that raises (out of memory
above all) is "not feasible", with the reason, rather than fatal. The fastest feasible
candidate (seconds per minibatch, timed on rank 0 between barriers) is the model's
choice: this hop and the model's later ones run with it, and the controller records the
choice and every timing in the catalog (``parallelism`` table) and the results table.
The trial changes nothing the hop computes: the hop builds its model afresh from the
checkpoint and the seeds, as if no trial had run. A candidate that fails on one rank
only while the others wait in a collective cannot be told apart from a hung rank: the
hop then breaks the group (``CEREBRO_COLLECTIVE_TIMEOUT``), as any such failure does.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import torch
import torch.distributed as dist

from cerebro.engine.messages import CANDIDATES, HopTask
from cerebro.model_cache import ModelCache
from cerebro.worker import _fsdp
from cerebro.worker._checkpoint import build_model
from cerebro.worker._ddp import ddp_wrapped, shard
from cerebro.worker._devices import empty_cache, synchronize
from cerebro.worker._hop import HopRun, index_rows, minibatch_indices

__all__ = ["TIMED", "choose"]

TIMED = 3  # minibatches timed per candidate, after one warm-up


def choose(state: dict[str, Any], task: HopTask, rank: int, world: int) -> tuple[str, dict]:
    """Every rank of the group calls it for the same hop; all get the same choice and the
    candidates' seconds per minibatch (or why one is not feasible)."""
    mine = {mode: _time(state, task, rank, world, mode) for mode in CANDIDATES}
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    trials: dict[str, float | str] = {}
    for mode in CANDIDATES:
        failed = next((r[mode] for r in everyone if isinstance(r[mode], str)), None)
        trials[mode] = failed if failed is not None else everyone[0][mode]
    feasible = {m: t for m, t in trials.items() if isinstance(t, float)}
    # none feasible: run DDP, whose hop then reports the failure as any hop does
    choice = min(feasible, key=lambda m: feasible[m]) if feasible else "ddp"
    return choice, trials


def _time(state: dict[str, Any], task: HopTask, rank: int, world: int, mode: str) -> float | str:
    spec, device = state["spec"], state["device"]
    part = state["partitions"][("train", task.partition)]
    indices = minibatch_indices(part, int(task.hyperparams["batch_size"]), task.shuffle_seed)
    indices = indices[: 1 + TIMED]
    if mode == "single":
        jobs = indices if rank == 0 else []
    else:
        jobs = [shard(ix, rank, world) for ix in indices if index_rows(ix) >= world]
    # a hop of a single minibatch has no warm-up: that one is timed (ranks agree on it)
    warm, timed = (jobs[:1], jobs[1:]) if len(jobs) > 1 else ([], jobs)
    why: str | None = None
    try:
        built = build_model(spec, task, device, ModelCache(0))  # a throwaway copy
        for obj in built.values():
            if isinstance(obj, torch.nn.Module):
                obj.train(True)
        if mode == "fsdp":
            components = _fsdp.shard(built, keep=False).components
        elif mode == "ddp":
            components = ddp_wrapped(built, device)
        else:
            components = dict(built)
        run = HopRun(spec, task, device, stop_on_nonfinite=False)
        why = run.metrics_loop("train", components, part, warm) if warm else None
    except Exception as e:  # noqa: BLE001 - out of memory above all: not feasible
        why = _reason(e)
    dist.barrier()  # every rank ready: the timed part starts together
    t0 = time.perf_counter()
    if why is None:
        try:
            why = run.metrics_loop("train", components, part, timed) if timed else None
            synchronize(device)
        except Exception as e:  # noqa: BLE001
            why = _reason(e)
    dist.barrier()
    seconds = time.perf_counter() - t0
    built = components = None  # type: ignore[assignment]
    empty_cache(device)
    if why is not None:
        return why
    return seconds / max(1, len(timed))


def _reason(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower():
        return f"out of memory ({text[:200]})"
    last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
    return f"{text[:200]}{where}"
