"""The messages between the controller and the workers: hop tasks, their outcomes, the
engine's events. Plain dataclasses, free of torch, so the driver's modules (controller,
scheduler glue, reports) import them without paying for ``import torch``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CANDIDATES",
    "EngineEvent",
    "GroupBroken",
    "HopDone",
    "HopFailed",
    "HopOutcome",
    "HopTask",
    "Parallelism",
    "TaskKind",
    "UserFailure",
    "WorkerLost",
]


TaskKind = Literal["train", "val", "test", "predict", "probe"]
"""What a hop does: the fit's ``train`` and ``val`` hops, ``run_test``'s and
``run_predict``'s, and the one-minibatch ``probe`` that checks a spec before a fit."""

Parallelism = Literal["ddp", "fsdp", "single", "auto"]
"""How a train hop uses a several-device worker: data-parallel (``ddp``), sharded
(``fsdp``), on rank 0 alone (``single``), or ``auto``: time each on a few minibatches
first and run the fastest (NOTE [ choosing the parallelism ] in ``cerebro/worker/_trial``).
A one-device worker ignores it."""

CANDIDATES: tuple[Parallelism, ...] = ("single", "ddp", "fsdp")
"""What ``auto`` tries, in this order."""


@dataclass(frozen=True, kw_only=True)
class HopTask:
    """One hop, as the controller sends it to a worker (built with keywords only: nine
    fields, several of them ints, are too easy to pass in the wrong order)."""

    model_id: str
    hyperparams: dict[str, Any]
    kind: TaskKind
    partition: int
    epoch: int
    in_ckpt: str | None  # None: the model's first hop, build it fresh with init_seed
    out_ckpt: str | None  # where a train hop writes the new state
    init_seed: int
    shuffle_seed: int
    threads: int | None = None  # torch intra-op threads for this hop; None: the worker's
    deterministic: bool = False  # torch.use_deterministic_algorithms for this hop
    parallelism: Parallelism = "ddp"  # on a several-device worker


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
    predictions: list[tuple[int, Any, float]] | None = None  # (row id, class, confidence)
    # parallelism="auto": each candidate's seconds per minibatch, or why it is not feasible
    trials: dict[str, float | str] | None = None
    parallelism: str | None = None  # what a several-device train hop ran with


@dataclass
class UserFailure:
    """A user's spec function raised, or returned something unusable."""

    function: str
    message: str
    traceback: str
    system: bool = False  # not the model's fault (disk full...): stop the fit, fail no model


@dataclass
class GroupBroken:
    """A several-device worker's answer when a hop broke its process group: a rank died,
    a collective failed or timed out, or the user's code failed on some rank while the
    others waited in a collective. The engine replaces the whole group (rank 0 and its
    ranks) and reports the hop as lost (``failure`` None: re-run it from its last
    checkpoint) or as failed (``failure``: the user's code, the model's fault)."""

    reason: str
    failure: UserFailure | None = None


@dataclass(frozen=True)
class HopDone:
    worker: int
    task: HopTask
    outcome: HopOutcome


@dataclass(frozen=True)
class HopFailed:
    """The user's code failed in this hop: the model's fault, not the worker's."""

    worker: int
    task: HopTask
    failure: UserFailure


@dataclass(frozen=True)
class WorkerLost:
    """The worker died while running ``task`` (``started``), or while ``task`` was queued
    behind the running one (not ``started``); a fresh worker is replacing it.

    The slot may be given a task at once: it runs as soon as the replacement holds the
    slot's data (the local engine reports the loss without waiting for that start-up).
    """

    worker: int
    task: HopTask
    reason: str
    started: bool = True


EngineEvent = HopDone | HopFailed | WorkerLost
