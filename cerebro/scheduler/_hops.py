"""What the scheduler hands out and reports (:class:`Hop`, :class:`Assignment`,
:class:`EpochEnd`), and where one model stands (:class:`ModelState`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Assignment", "EpochEnd", "Hop", "HopKind", "ModelState"]

HopKind = Literal["train", "val"]


@dataclass(frozen=True, order=True)
class Hop:
    """One pass of model ``model_id``, in its 0-based ``epoch``, over partition ``partition``
    of the ``kind`` ("train" or "val") split."""

    model_id: str
    epoch: int
    kind: HopKind
    partition: int


@dataclass(frozen=True)
class Assignment:
    """``hop`` is to run on ``worker``: now (:meth:`Scheduler.assign`), or right after the
    hop running there (:meth:`Scheduler.assign_next`)."""

    worker: int
    hop: Hop


@dataclass(frozen=True)
class EpochEnd:
    """Model ``model_id`` has completed every train and val hop of ``epoch``."""

    model_id: str
    epoch: int


@dataclass(slots=True)
class ModelState:
    """One model inside the scheduler; only the scheduler writes it (a policy reads it)."""

    id: str
    index: int
    epoch: int = 0
    train_todo: list[int] = field(default_factory=list)  # train partitions left, in order
    val_todo: list[int] = field(default_factory=list)  # val partitions left, in order
    hop: Hop | None = None  # the running or queued hop
    worker: int = -1  # where `hop` runs
    queued: bool = False  # `hop` waits behind the hop running on `worker`
    dropped: bool = False
    paused: bool = False  # waits at an epoch boundary (a synchronous rung) for a decision
