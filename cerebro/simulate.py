"""Discrete-event simulation of MOP: drive the real :class:`~cerebro.scheduler.Scheduler`
in virtual time to measure a policy's makespan against a lower bound.

Pure like the scheduler: no clock, no I/O, seeded. :func:`make_scenario` builds synthetic
experiments (models of different sizes, a straggler worker); :func:`simulate` runs one.

Example:
    >>> sc = make_scenario(num_workers=4, num_models=8, seed=1)
    >>> r = simulate(sc.scheduler("lrf"), sc.duration)
    >>> r.makespan >= r.lower_bound > 0
    True
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from cerebro.scheduler import Hop, Scheduler

__all__ = ["Scenario", "ScheduledHop", "SimResult", "lower_bound", "make_scenario", "simulate"]


@dataclass(frozen=True)
class ScheduledHop:
    """``hop`` ran on ``worker`` from ``start`` to ``end`` (virtual time)."""

    worker: int
    hop: Hop
    start: float
    end: float


@dataclass(frozen=True)
class SimResult:
    """Outcome of one simulated run.

    Attributes:
        makespan: virtual time at which the last hop ended.
        busy: worker -> total time it spent running hops.
        schedule: every completed hop, in order of completion.
        lower_bound: no schedule can finish sooner (see :func:`lower_bound`).
    """

    makespan: float
    busy: dict[int, float]
    schedule: list[ScheduledHop]
    lower_bound: float

    @property
    def ratio(self) -> float:
        """``makespan / lower_bound``: 1.0 is optimal."""
        return self.makespan / self.lower_bound if self.lower_bound > 0 else 1.0


def lower_bound(scheduler: Scheduler, duration: Callable[[Hop, int], float]) -> float:
    """A bound no schedule of the scheduler's pending hops can beat.

    The largest of: the total work over the number of workers; the largest model's work (its
    hops run one after another); the largest worker's work (partitions are pinned, so each
    hop can run on one worker only).

    Args:
        scheduler: a scheduler; only the hops its live models have not completed count.
        duration: ``duration(hop, worker)`` in virtual time.
    """
    per_model: list[float] = []
    per_worker = dict.fromkeys(scheduler.workers, 0.0)
    for model_id in scheduler.model_ids:
        total = 0.0
        for hop in scheduler.pending_hops(model_id):
            w = scheduler.owner(hop)
            d = duration(hop, w)
            total += d
            per_worker[w] += d
        per_model.append(total)
    return max(sum(per_model) / len(per_worker), max(per_model), max(per_worker.values()))


def simulate(
    scheduler: Scheduler,
    duration: Callable[[Hop, int], float],
    *,
    latency: float = 0.0,
    lookahead: bool = False,
) -> SimResult:
    """Run ``scheduler`` to the end in virtual time, every worker starting idle at time 0.

    Each time hops end, the scheduler is told (``complete``, in start order for hops that
    end together) and then asked for new hops (``assign``, then ``assign_next`` with
    ``lookahead``), as the controller does.

    Args:
        scheduler: a fresh (or replayed) scheduler; it is driven to ``done``.
        duration: ``duration(hop, worker)`` in virtual time; must be deterministic (it is
            also used for the lower bound). A straggler is a worker whose hops take longer.
        latency: virtual time from a decision until its hop can start on the worker (the
            result's trip to the controller and the task's trip back). A queued hop starts
            as soon as both the hop before it has ended and its task has arrived.
        lookahead: also queue each busy worker's next hop (``assign_next``).

    Returns:
        The makespan, per-worker busy time, schedule and lower bound.

    Raises:
        RuntimeError: if the scheduler stops assigning before it is done (a scheduler bug).
    """
    bound = lower_bound(scheduler, duration)
    busy = dict.fromkeys(scheduler.workers, 0.0)
    free_at = dict.fromkeys(scheduler.workers, 0.0)  # when the worker's last hop ends
    schedule: list[ScheduledHop] = []
    heap: list[tuple[float, int, ScheduledHop]] = []
    now, seq = 0.0, 0
    while not scheduler.done:
        new = scheduler.assign()
        if lookahead:
            new += scheduler.assign_next()
        for a in new:
            d = duration(a.hop, a.worker)
            start = max(free_at[a.worker], now + latency)
            free_at[a.worker] = start + d
            heapq.heappush(heap, (start + d, seq, ScheduledHop(a.worker, a.hop, start, start + d)))
            seq += 1
        if not heap:
            raise RuntimeError(
                f"scheduler stalled at t={now} with {scheduler.remaining_hops()} hops left "
                "and nothing running"
            )
        now = heap[0][0]
        while heap and heap[0][0] == now:  # hops ending together are reported together
            _, _, item = heapq.heappop(heap)
            scheduler.complete(item.hop)
            busy[item.worker] += item.end - item.start
            schedule.append(item)
    return SimResult(now, busy, schedule, bound)


@dataclass(frozen=True)
class Scenario:
    """A synthetic experiment for :func:`simulate`.

    A train hop of model ``m`` costs ``size[m] / partitions_per_worker``; a val hop
    ``val_ratio`` times that of a train hop over the same amount of data. A hop on worker
    ``w`` takes ``slowdown[w]`` times its cost, times a seeded jitter in
    ``[1 - jitter, 1 + jitter]``.
    """

    model_ids: tuple[str, ...]
    num_epochs: int
    train_owner: dict[int, int]
    val_owner: dict[int, int]
    size: dict[str, float]
    slowdown: dict[int, float]
    train_per_worker: int
    val_per_worker: int
    val_ratio: float
    jitter: float
    seed: int

    def cost(self, hop: Hop) -> float:
        """Expected cost of a hop on a normal worker (what a controller could estimate)."""
        if hop.kind == "train":
            return self.size[hop.model_id] / self.train_per_worker
        return self.size[hop.model_id] * self.val_ratio / max(self.val_per_worker, 1)

    def duration(self, hop: Hop, worker: int) -> float:
        """Seeded virtual duration of ``hop`` on ``worker``; the same on every call."""
        key = f"{self.seed}|{hop.model_id}|{hop.epoch}|{hop.kind}|{hop.partition}|{worker}"
        u = zlib.crc32(key.encode()) / 0xFFFFFFFF
        return self.cost(hop) * self.slowdown[worker] * (1 + self.jitter * (2 * u - 1))

    def scheduler(
        self,
        policy: str,
        *,
        seed: int | None = None,
        use_cost: bool = True,
        walk: str = "partitions",
    ) -> Scheduler:
        """A fresh scheduler for this scenario (``cost`` given unless ``use_cost`` is off;
        ``walk`` as :class:`~cerebro.scheduler.Scheduler`'s)."""
        return Scheduler(
            self.model_ids,
            num_epochs=self.num_epochs,
            train_owner=self.train_owner,
            val_owner=self.val_owner,
            policy=policy,
            seed=self.seed if seed is None else seed,
            cost=self.cost if use_cost else None,
            walk=walk,
        )


def make_scenario(
    *,
    num_workers: int,
    num_models: int,
    num_epochs: int = 2,
    train_per_worker: int = 1,
    val_per_worker: int = 1,
    size_range: tuple[float, float] = (1.0, 10.0),
    straggler: float = 1.0,
    val_ratio: float = 0.25,
    jitter: float = 0.1,
    seed: int = 0,
) -> Scenario:
    """Build a seeded synthetic scenario.

    Args:
        num_workers: workers, each holding ``train_per_worker`` train and ``val_per_worker``
            val partitions.
        num_models: models; sizes drawn log-uniformly from ``size_range``.
        num_epochs: epochs per model.
        train_per_worker: train partitions per worker.
        val_per_worker: val partitions per worker (0: no validation).
        size_range: smallest and largest model size (cost of one pass over a worker's data).
        straggler: one worker, chosen by the seed, is this many times slower (1.0: none).
        val_ratio: cost of validating on some data relative to training on it.
        jitter: relative noise of each hop's duration.
        seed: seeds sizes, straggler choice and jitter.

    Raises:
        ValueError: for fewer than one worker or model, or a straggler factor below 1.
    """
    if num_workers < 1 or num_models < 1:
        raise ValueError(
            f"need at least one worker and one model, but got num_workers={num_workers}, "
            f"num_models={num_models}"
        )
    if straggler < 1.0:
        raise ValueError(f"straggler is a slowdown factor >= 1, but got {straggler}")
    rng = random.Random(seed)
    lo, hi = size_range
    ids = tuple(f"m{i:03d}" for i in range(num_models))
    size = {m: lo * (hi / lo) ** rng.random() for m in ids}
    slowdown = dict.fromkeys(range(num_workers), 1.0)
    slowdown[rng.randrange(num_workers)] = straggler
    return Scenario(
        model_ids=ids,
        num_epochs=num_epochs,
        train_owner={p: p % num_workers for p in range(num_workers * train_per_worker)},
        val_owner={p: p % num_workers for p in range(num_workers * val_per_worker)},
        size=size,
        slowdown=slowdown,
        train_per_worker=train_per_worker,
        val_per_worker=val_per_worker,
        val_ratio=val_ratio,
        jitter=jitter,
        seed=seed,
    )
