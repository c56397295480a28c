"""Scheduling policies: which runnable hop goes first.

A policy is a small object the :class:`~cerebro.scheduler.Scheduler` asks at a few fixed
points; the scheduler does everything else (the epoch rule, the candidate index, running
and queued hops, the matching). A user names one of :data:`POLICIES`; a new policy is a
:class:`Policy` subclass, passed to the scheduler as the object itself or registered here
by name, and needs no edit of the scheduler.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cerebro.scheduler._hops import Hop, ModelState
from cerebro.scheduler._walks import base_order, latin_walk

__all__ = [
    "POLICIES",
    "Board",
    "FixedOrder",
    "MostWorkFirst",
    "Policy",
    "RandomGreedy",
    "make_policy",
]

# NOTE [ What a policy decides ]
# The scheduler asks a policy six things, and only these:
#   train_order    a model's train partitions, in order, when one of its epochs starts;
#   runnable_train which of the train partitions it has left it may run now;
#   worker_order   the order in which the idle workers that have candidates choose;
#   pick           which of a worker's candidates (model indices) it takes;
#   queueable      which of a busy worker's candidates may be queued behind its running hop
#                  (NOTE [ Next hops ]); none is a fine answer;
#   augments       whether `assign` grows the greedy choice along augmenting paths.
# What it must not do:
#   - write anything it is shown: the Board's containers are the scheduler's own, live; the
#     scheduler alone moves models, hops and workers, and its invariants (a model on one
#     worker at a time, every live model trains once on every partition per epoch before it
#     validates, no idle worker with a runnable hop) hold whatever the policy answers, as
#     long as train_order is a permutation of the partitions it is given, runnable_train a
#     non-empty part of the partitions left (and only their first, if the order matters),
#     pick one of the candidates, and queueable a subset of them;
#   - read a clock, do I/O, or draw randomness from anything but `board.rng` (or a
#     `random.Random` seeded from the scheduler's seed and logical values, as the fixed walks
#     do): hop order must be a function of the seed and the events (NOTE [ Determinism ]);
#   - depend on the iteration order of a set of strings; candidates are insertion-ordered
#     dicts of ints, and their order is part of the answer.
# A policy draws from `board.rng` in a sequence fixed by the calls it gets; changing that
# sequence (one draw more, or fewer) changes every later decision of a seeded fit.
#
# NOTE [ Validation first ]
# Under "fixed", a model that has finished its epoch's training validates before any model
# trains further. Validation is short (no backward pass, usually less data) and releases
# the model into its next epoch, whose train hops keep the other workers fed. Ranked by
# remaining work alone, a model that fell behind takes a worker for a long train hop while
# every other model waits to validate there, and the other workers run dry: replaying the
# hop durations of five real W1 and W2 fits (bench/scheduler_sim.py --traces) took the
# mean makespan / lower bound from 1.000-1.026 to 1.000-1.003 this way. On the synthetic
# grid (models 1-10x apart in size) it costs a little: 1.007 -> 1.010 mean. Under "lrf",
# whose train hops are not pinned, it did worse on that grid and is not used.


@dataclass(frozen=True)
class Board:
    """What a policy may read of the scheduler's state: live views, never to be written.

    Attributes:
        rng: the scheduler's own ``random.Random(seed)``, the only randomness a policy uses.
        models: every model, by index (its ``train_todo`` is empty once it validates).
        work: model index -> cost of its hops not yet completed (0 once dropped).
        load: worker -> cost of the hops not yet completed that only it can run.
        in_cand: model index -> the workers it has a runnable hop on now ([] when it runs).
        queued: worker -> the hop queued behind the one running there.
    """

    rng: random.Random
    models: Sequence[ModelState]
    work: Sequence[float]
    load: Mapping[int, float]
    in_cand: Sequence[list[int]]
    queued: Mapping[int, Hop]


class Policy:
    """A scheduling policy (NOTE [ What a policy decides ]); the defaults are ``"lrf"``'s.

    Subclass it and override what differs; use one instance per scheduler (it may cache
    what it computes for that scheduler's partitions).

    Attributes:
        name: the policy's name, as errors show it.
        augments: whether :meth:`Scheduler.assign` grows its greedy choice along augmenting
            paths (an idle worker left out takes a model from a worker with another one).
    """

    name: str = "custom"
    augments: bool = True

    def train_order(self, index: int, epoch: int, train_owner: Mapping[int, int]) -> list[int]:
        """Model ``index``'s train partitions for ``epoch``, in order (called as each of its
        epochs starts); ``train_owner`` maps partition -> worker, sorted by partition."""
        return list(train_owner)

    def runnable_train(self, todo: list[int]) -> list[int]:
        """Of a model's train partitions left (``todo``, in its order), those it may run
        now: all of them by default; a non-empty sublist."""
        return todo

    def worker_order(self, workers: list[int], board: Board) -> list[int]:
        """The order in which idle ``workers`` (sorted, each with a candidate) choose:
        by default the most remaining work pinned on them first."""
        return sorted(workers, key=lambda w: -board.load[w])

    def top(self, cands: Mapping[int, None], board: Board) -> list[int]:
        """The candidates of the highest priority, in candidate order: by default those with
        the most remaining work."""
        work = board.work
        best = max(map(work.__getitem__, cands))
        return [i for i in cands if work[i] == best]

    def pick(self, cands: Mapping[int, None], board: Board) -> int:
        """The candidate a worker takes: one of :meth:`top`, ties broken by ``board.rng``."""
        ties = self.top(cands, board)
        return ties[0] if len(ties) == 1 else board.rng.choice(ties)

    def queueable(self, w: int, cands: Mapping[int, None], board: Board) -> dict[int, None]:
        """The candidates of busy worker ``w`` (non-empty) that may be queued behind its
        running hop (NOTE [ Next hops ]): of the top ones, those that can run on ``w`` only,
        else those whose every other worker has a hop queued already; else none."""
        in_cand = board.in_cand
        top = self.top(cands, board)
        pinned = {i: None for i in top if in_cand[i] == [w]}
        if pinned:
            return pinned
        queued = board.queued
        return {i: None for i in top if all(v == w or v in queued for v in in_cand[i])}


class MostWorkFirst(Policy):
    """``"lrf"``: most remaining work first. Idle workers are visited in order of most
    remaining work pinned on them; each gets the runnable model with the most remaining
    work (sum of ``cost`` over its hops not yet completed), ties broken by the rng."""

    name = "lrf"


class RandomGreedy(Policy):
    """``"random"``: the original Cerebro's randomized greedy. Idle workers are visited in a
    random order; each gets a uniformly random idle model with a runnable hop on it. No
    augmenting paths, and no priorities to keep when queueing: any model pinned to the
    worker will do."""

    name = "random"
    augments = False

    def worker_order(self, workers: list[int], board: Board) -> list[int]:
        board.rng.shuffle(workers)
        return workers

    def pick(self, cands: Mapping[int, None], board: Board) -> int:
        return board.rng.choice(list(cands))

    def queueable(self, w: int, cands: Mapping[int, None], board: Board) -> dict[int, None]:
        in_cand = board.in_cand
        return {i: None for i in cands if in_cand[i] == [w]}


class FixedOrder(Policy):
    """``"fixed"``: every model's train order in each epoch is fixed in advance.

    The order is a function of (seed, model index, epoch) only, so each model sees the same
    sequence of train hops, hence trains to the same result, whatever the hop durations and
    however many workers hold the partitions (NOTE [ Walks independent of the workers ]).
    The orders form a Latin square: the base order of epoch ``e`` is the partitions
    ``0..P-1`` rotated by a seeded amount, and model ``i`` walks it from offset ``i mod P``.
    With partition ``p`` on worker ``p mod W``, a walk visits the workers round-robin;
    models whose offsets differ mod ``W`` never contend, and the others follow one in
    lockstep, which in simulation beats seeded independent orders. Only a model's next
    train hop is runnable; val hops keep a free order (they do not change the model; sort
    val metrics by partition before summing them for bit-identical aggregates). Workers are
    ranked as in ``"lrf"``; a model whose epoch's training is done (it validates next) goes
    before any that trains, then models are ranked as in ``"lrf"`` (NOTE [ Validation
    first ]).

    Args:
        seed: the scheduler's seed (it seeds the base orders, not the scheduler's rng).
        walk: one of :data:`~cerebro.scheduler.WALKS` (see :func:`base_order`).
    """

    name = "fixed"

    def __init__(self, seed: int = 0, walk: str = "partitions") -> None:
        self._seed = seed
        self._walk = walk
        self._bases: dict[int, list[int]] = {}  # epoch -> base order

    def train_order(self, index: int, epoch: int, train_owner: Mapping[int, int]) -> list[int]:
        if epoch not in self._bases:
            self._bases[epoch] = base_order(self._seed, epoch, train_owner, self._walk)
        base = self._bases[epoch]
        period = len(base) if self._walk == "partitions" else len(set(train_owner.values()))
        return latin_walk(base, index, period)

    def runnable_train(self, todo: list[int]) -> list[int]:
        return todo[:1]

    def top(self, cands: Mapping[int, None], board: Board) -> list[int]:
        models = board.models  # NOTE [ Validation first ]
        validating = [i for i in cands if not models[i].train_todo]
        return super().top(dict.fromkeys(validating) if validating else cands, board)


_BY_NAME: dict[str, Callable[[int, str], Policy]] = {
    "fixed": FixedOrder,
    "lrf": lambda seed, walk: MostWorkFirst(),
    "random": lambda seed, walk: RandomGreedy(),
}

POLICIES: tuple[str, ...] = tuple(sorted(_BY_NAME))


def make_policy(name: str, *, seed: int, walk: str) -> Policy:
    """A fresh policy of one of :data:`POLICIES` (the caller checked ``name``)."""
    return _BY_NAME[name](seed, walk)
