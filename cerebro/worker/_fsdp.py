"""A train hop's model sharded across a worker's ranks with FSDP (``parallelism="fsdp"``).

NOTE [ FSDP in a hop ]
Each rank builds the model as a one-device worker does (loaded from the hop's
checkpoint, full size), then shards it (rank 0 a copy: it keeps its model between hops)
with ``torch.distributed.fsdp.fully_shard`` (FSDP2: every child module that holds
parameters is one unit, the module itself the root): parameters, gradients and optimizer
state are then split across the ranks, each forward all-gathers one unit at a time and
each backward reduce-scatters (averages) the gradients. The user's optimizers are kept,
pointed at the sharded parameters, with their state (momentum, Adam moments) sharded the
same way through ``torch.distributed.checkpoint.state_dict``. The user's hooks run
unchanged on their rank's rows of each minibatch
(NOTE [ a minibatch split across ranks ] in ``_ddp``). At the hop's end the full state
is gathered to rank 0 into the unsharded model, its optimizers and any other stateful
component (an LR scheduler), so the checkpoint is today's format and rank 0 can finish a
tail minibatch alone. Runs on CPUs (gloo); on GPUs it goes through NCCL, which no GPU
has run yet. Not yet: a model too large to build whole on one device (that needs
meta-device initialisation and a sharded load).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Sharded", "gather_into", "shard"]


@dataclass
class Sharded:
    """A sharded copy of a hop's components and what :func:`gather_into` needs."""

    components: dict[str, Any]  # what the user's hooks get: modules sharded, optimizers kept
    holder: torch.nn.ModuleDict  # the sharded modules, named as in the components
    optimizers: list[torch.optim.Optimizer]


def _trainable(components: dict[str, Any]) -> dict[str, torch.nn.Module]:
    return {
        k: v
        for k, v in components.items()
        if isinstance(v, torch.nn.Module) and any(p.requires_grad for p in v.parameters())
    }


def _optimizers(components: dict[str, Any]) -> list[torch.optim.Optimizer]:
    return [v for v in components.values() if isinstance(v, torch.optim.Optimizer)]


def shard(components: dict[str, Any], *, keep: bool) -> Sharded:
    """Shard ``components`` across the process group (a collective: every rank calls it,
    with the same model). ``keep``: shard a copy and leave ``components`` as they were
    (rank 0, which keeps its model between hops and gathers the trained state into it);
    else shard them in place (a model the rank builds for this hop only)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    # (a deep copy keeps the optimizer -> parameter links, in the copy)
    work = copy.deepcopy(components) if keep else dict(components)
    modules = _trainable(work)
    holder = torch.nn.ModuleDict(modules)
    optimizers = _optimizers(work)
    full = StateDictOptions(full_state_dict=True)
    state = get_optimizer_state_dict(holder, optimizers, options=full) if optimizers else None
    names = {id(p): n for n, p in holder.named_parameters()}
    for module in modules.values():
        for child in module.children():
            if any(True for _ in child.parameters()):
                fully_shard(child)
        fully_shard(module)
    params = dict(holder.named_parameters())  # fully_shard made new (sharded) parameters
    for opt in optimizers:
        for group in opt.param_groups:
            group["params"] = [params[names[id(p)]] for p in group["params"]]
        opt.state.clear()
    if state is not None:
        set_optimizer_state_dict(holder, optimizers, state, options=full)
    return Sharded(work, holder, optimizers)


def gather_into(sharded: Sharded, components: dict[str, Any], rank: int) -> None:
    """Gather the full trained state (a collective) into rank 0's unsharded
    ``components``: modules, optimizers and other stateful components (schedulers)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(sharded.holder, options=options)
    optim_state = (
        get_optimizer_state_dict(sharded.holder, sharded.optimizers, options=options)
        if sharded.optimizers
        else None
    )
    if rank != 0:
        return
    plain = torch.nn.ModuleDict(_trainable(components))
    plain.load_state_dict(model_state)
    if optim_state is not None:
        set_optimizer_state_dict(
            plain,
            _optimizers(components),
            optim_state,
            options=StateDictOptions(full_state_dict=True),
        )
    for name, obj in sharded.components.items():
        if name in plain or isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
            continue
        if callable(getattr(obj, "state_dict", None)) and hasattr(
            components[name], "load_state_dict"
        ):
            components[name].load_state_dict(obj.state_dict())  # an LR scheduler, a scaler
