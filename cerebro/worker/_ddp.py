"""One rank's share of a hop on a several-device worker: data-parallel with DDP.

NOTE [ a minibatch split across ranks ]
``batch_size`` stays the global minibatch: the hop cuts the partition into the same
minibatches as a one-device worker (the same seeded permutation), and rank ``r`` of ``k``
runs the user's unchanged hook on the ``r``-th contiguous share of each (``n // k`` rows,
one more for the first ``n % k`` ranks). In a train hop the modules are wrapped in
``DistributedDataParallel``, so ``loss.backward()`` all-reduces (averages) the gradients
and every rank's ``optimizer.step()`` makes the same update; with ``parallelism="fsdp"``
they are sharded instead (NOTE [ FSDP in a hop ] in ``_fsdp``), and with ``"single"``
(what ``"auto"`` may choose) rank 0 runs whole minibatches alone. A last minibatch with fewer
rows than ranks runs on rank 0 alone, on the plain modules (the others skip it): every
row is still used once per epoch. Per-minibatch metrics are averaged over the ranks
weighted by their rows, so ``metrics_agg`` gets one value per global minibatch, as from
one process. Rank 0 keeps the model's RNG stream (the one its checkpoint holds); rank
``r > 0`` draws from a stream seeded by the hop and ``r``, so dropout masks differ across
ranks as across the rows of one process's minibatch. Ranks other than 0 keep no model
between hops: they load each hop's checkpoint, since only rank 0's copy is saved (and
after a tail minibatch only rank 0's copy holds its update).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from cerebro.engine.messages import UserFailure
from cerebro.model_cache import ModelCache
from cerebro.partitions import Partition
from cerebro.spec import MinibatchSpec
from cerebro.worker import _fsdp
from cerebro.worker._checkpoint import Unusable, build_model
from cerebro.worker._fsdp import Sharded
from cerebro.worker._hop import HopRun, index_rows, minibatch_indices

__all__ = ["RankRun", "collective_failure", "ddp_wrapped", "rank_share", "shard", "unwrap"]


def shard(index: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s contiguous share of one minibatch's row positions."""
    n = index_rows(index)
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    hi = lo + base + (1 if rank < extra else 0)
    if isinstance(index, slice):
        return slice(index.start + lo, index.start + hi)
    return index[lo:hi]


@dataclass
class RankRun:
    """What one rank's share of a hop found: one metric value per minibatch it ran."""

    rank: int
    metrics: dict[str, list[float]] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    predictions: list[tuple[int, Any, float]] = field(default_factory=list)
    user: float = 0.0
    load: float = 0.0
    rows: int = 0
    failure: UserFailure | None = None


def collective_failure(failure: UserFailure) -> bool:
    """Whether a failure came from a collective (a peer died, a timeout), not the user."""
    text = f"{failure.message}\n{failure.traceback}"
    return (
        failure.message.startswith(("DistBackendError", "DistError", "DistNetworkError"))
        or "gloo/transport" in text
        or "ProcessGroupGloo" in text
        or "NCCL" in text
    )


def ddp_wrapped(components: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The components with each module that has trainable parameters in DDP."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type != "cpu" and device.index is not None else None
    out = dict(components)
    for name, obj in components.items():
        if isinstance(obj, torch.nn.Module) and any(p.requires_grad for p in obj.parameters()):
            out[name] = DistributedDataParallel(obj, device_ids=ids)
    return out


def unwrap(components: dict[str, Any]) -> dict[str, Any]:
    """The user's own modules again (what the checkpoint holds), DDP taken off."""
    from torch.nn.parallel import DistributedDataParallel

    return {
        k: v.module if isinstance(v, DistributedDataParallel) else v for k, v in components.items()
    }


Built = tuple[dict[str, Any], dict[str, Any], torch.Tensor]


def rank_share(
    state: dict[str, Any], task: Any, rank: int, world: int
) -> tuple[RankRun, Built | None]:
    """Run this rank's share of a train/val/test/predict hop (NOTE [ a minibatch split
    across ranks ]); returns what it found and, unless building the model failed, the
    components as built (rank 0 keeps them between hops), as the user's hooks left them
    (without DDP: what the checkpoint holds) and the RNG state the hop started from."""
    spec: MinibatchSpec = state["spec"]
    device: torch.device = state["device"]
    name = type(spec).__name__
    out = RankRun(rank)
    t0 = time.perf_counter()
    cache: ModelCache = state["models"] if rank == 0 else ModelCache(0)
    try:
        built = build_model(spec, task, device, cache)
    except Unusable as e:
        out.failure = UserFailure(f"{name}.create_model_components", str(e), "")
        return out, None
    except Exception as e:  # noqa: BLE001
        out.failure = UserFailure(
            f"{name}.create_model_components", f"{type(e).__name__}: {e}", traceback.format_exc()
        )
        return out, None
    rng = torch.get_rng_state()
    if rank:
        torch.default_generator.manual_seed((task.shuffle_seed * 1_000_003 + rank) % 2**63)
    components = dict(built)
    out.load = time.perf_counter() - t0
    train = task.kind == "train"
    for obj in components.values():
        if isinstance(obj, torch.nn.Module):
            obj.train(train)
    hook = {"train": "train", "predict": "predict"}.get(task.kind, "valtest")
    run = HopRun(spec, task, device, stop_on_nonfinite=False)
    part: Partition = state["partitions"][(task.kind, task.partition)]
    out.rows = len(part)
    bs = int(task.hyperparams["batch_size"])
    indices = minibatch_indices(part, bs, task.shuffle_seed if train else None)
    mode = task.parallelism if train else "ddp"  # an evaluation shares rows, unwrapped
    if mode == "single":  # rank 0 alone, the whole of every minibatch
        mine, tail = (list(indices) if rank == 0 else []), []
    else:
        full = indices if not indices or index_rows(indices[-1]) >= world else indices[:-1]
        tail = indices[len(full) :] if rank == 0 else []
        mine = [shard(ix, rank, world) for ix in full]
    users = components
    sharded: Sharded | None = None
    try:
        if train and mode == "fsdp":
            sharded = _fsdp.shard(components, keep=rank == 0)  # NOTE [ FSDP in a hop ]
            users = sharded.components
        elif train and mode == "ddp":
            users = ddp_wrapped(components, device)
        for job, comps in ((mine, users), (tail, components)):
            if comps is components and sharded is not None:
                _fsdp.gather_into(sharded, components, rank)  # (before the tail: its input)
            if task.kind == "predict":
                for k, minibatch in enumerate(part.batches(job)):
                    why = run.predict_step(comps, part, job[k], minibatch)
                    if why:
                        out.failure = UserFailure(f"{name}.{hook}", why, "")
                        break
            elif job and (why := run.metrics_loop(hook, comps, part, job)):
                out.failure = UserFailure(f"{name}.{hook}", why, "")
            if out.failure is not None:
                break
    except Exception as e:  # noqa: BLE001 - the user's code (or a collective in it) raised
        out.failure = UserFailure(
            f"{name}.{hook}", f"{type(e).__name__}: {e}", traceback.format_exc()
        )
    out.metrics, out.sizes, out.predictions, out.user = (
        run.metrics,
        run.sizes,
        run.predictions,
        run.user,
    )
    return out, (built, components if sharded is not None else unwrap(users), rng)


def combine(runs: list[RankRun]) -> tuple[dict[str, list[float]], list[int]]:
    """One value per global minibatch: each rank's value weighted by its rows (rank 0 ran
    the minibatches beyond the others' alone: a tail of fewer rows than ranks)."""
    first = runs[0]
    metrics: dict[str, list[float]] = {key: [] for key in first.metrics}
    sizes: list[int] = []
    for b in range(len(first.sizes)):
        share = [r for r in runs if b < len(r.sizes)]
        rows = sum(r.sizes[b] for r in share)
        sizes.append(rows)
        for key, values in metrics.items():
            values.append(sum(r.metrics[key][b] * r.sizes[b] for r in share) / max(rows, 1))
    return metrics, sizes
