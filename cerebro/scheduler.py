"""Model Hopper Parallelism (MOP) as pure logic: events in, hops out.

Each train partition lives on one worker; models hop between workers and train one pass
("hop") on each partition. :class:`Scheduler` decides which hop each idle worker runs next.
It does no I/O and reads no clock: the controller reports what happened (:meth:`~Scheduler.
complete`, :meth:`~Scheduler.requeue`, :meth:`~Scheduler.drop_model`) and asks for work
(:meth:`~Scheduler.assign`, and :meth:`~Scheduler.assign_next` for the hop each busy worker
runs once its current one ends). Its only randomness is its own ``random.Random(seed)``.

Example:
    >>> s = Scheduler(["a", "b"], num_epochs=1, train_owner={0: 0, 1: 1}, val_owner={})
    >>> [(x.worker, x.hop.model_id, x.hop.partition) for x in s.assign()]
    [(0, 'b', 0), (1, 'a', 1)]
    >>> s.complete(Hop("a", 0, "train", 1)), s.remaining_hops()
    ([], 3)
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cerebro.errors import ParamsError

__all__ = ["POLICIES", "WALKS", "Assignment", "EpochEnd", "Hop", "HopKind", "Scheduler"]

HopKind = Literal["train", "val"]

POLICIES: tuple[str, ...] = ("fixed", "lrf", "random")
WALKS: tuple[str, ...] = ("partitions", "workers")


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


# NOTE [ MOP epoch rule ]
# In each epoch every live model trains exactly once on every train partition, in any order
# (or, for "fixed", in an order fixed in advance); only then is it validated once on every
# val partition (val leaves the model unchanged, so their order is free); only then does
# its next epoch start. No barrier across models. A hop of partition p runs on its owner
# only; a model is on at most one worker and a worker runs at most one hop.
#
# NOTE [ Next hops ]
# A worker whose hop ends would wait for the controller (the result's trip, recording,
# scheduling, the next task's trip: about a millisecond, much more on a cluster) before its
# next hop starts. So each busy worker may also hold one queued hop, handed to the engine
# in advance, that starts the moment the running one ends. What is queued is what `assign`
# would most likely pick when the worker frees, so queueing keeps the policy's priorities:
# a model of the highest priority among the worker's candidates, and only one that could
# not start sooner elsewhere: its every runnable hop is on this worker (with "fixed", every
# train hop), or each other worker it could use has a hop queued already. If the top
# candidates are none of these (a model that could validate on any worker, say), nothing
# is queued: queueing a lower one would pass the top one over at every hand-over until
# the queueable work ran out, and that starved model would end the fit late. ("random"
# has no priorities and queues any model pinned to the worker.) A queued model is on that
# worker as a running one is: it is in no `_cand`, and it becomes the worker's running hop
# when the hop before it is completed, requeued or dropped.
#
# NOTE [ Candidate index ]
# `_cand[w]` holds exactly the live, idle, unfinished models that have a runnable hop on
# worker w (an insertion-ordered dict used as a set). A model leaves every `_cand` when it
# starts a hop or is dropped, and re-enters (with its new runnable hops) when it is freed.
# `assign` makes one greedy pass over the idle workers, each taking one model from its
# `_cand`; a worker skipped for an empty `_cand` cannot gain a candidate later in the pass,
# so the result is maximal (no idle worker has a runnable hop of an idle model). Augmenting
# paths (see `_augment`) then only add hops, so maximality holds.
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
#
# NOTE [ Models that join ]
# A search asks for models while the fit runs, so models join a running scheduler. A new
# model is the last in every tie-break that uses the index, and its "fixed" order depends on
# its own index only: what the models already there do never changes when one joins. It
# is indexed as a candidate at once, so an idle worker gets it at the next `assign`.
#
# NOTE [ Walks independent of the workers ]
# A model's training is its sequence of train hops (partition order per epoch; rows and
# minibatches inside a hop depend on the seed, the model, the epoch and the partition). With
# walk="partitions" that sequence is a function of (seed, model index, epoch) and the
# partitions alone, so the same fit on 1, 2 or 8 workers (any W <= P) trains the same
# models; only who runs each hop, and when, changes. bench/scheduler_sim.py measures what
# the fixed orders cost against the makespan lower bound for P from W to 4W.
#
# NOTE [ Paused models ]
# Early stopping with synchronous rungs holds a model at an epoch boundary until its rung
# decides (`pause`); it is in no `_cand` meanwhile, so the workers train the other models.
# It stays live (its remaining hops count) and either resumes (`resume`) or is stopped
# (`stop_model`). The scheduler never pauses or resumes anything by itself.
#
# NOTE [ Determinism ]
# Decisions never depend on the iteration order of a set of strings (hash-randomized per
# process): models are ints internally, "sets" are insertion-ordered dicts, worker order
# is sorted before shuffling, and every random choice comes from `self._rng`.


@dataclass(slots=True)
class _Model:
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


class Scheduler:
    """MOP scheduler: which hop each idle worker runs next.

    Policies (which runnable hop goes first):

    * ``"random"``: the original Cerebro's randomized greedy. Idle workers are visited in a
      random order; each gets a uniformly random idle model with a runnable hop on it.
    * ``"lrf"``: most remaining work first. Idle workers are visited in order of most
      remaining work pinned on them; each gets the runnable model with the most remaining
      work (sum of ``cost`` over its hops not yet completed), ties broken by the rng.
    * ``"fixed"``: every model's train order in each epoch is fixed in advance as a
      function of (seed, model index, epoch) only, so each model sees the same sequence of
      train hops, hence trains to the same result, whatever the hop durations and however
      many workers hold the partitions (NOTE [ Walks independent of the workers ]). The
      orders form a Latin square: the base order of epoch ``e`` is the partitions
      ``0..P-1`` rotated by a seeded amount, and model ``i`` walks it from offset
      ``i mod P``. With partition ``p`` on worker ``p mod W``, a walk visits the workers
      round-robin; models whose offsets differ mod ``W`` never contend, and the others
      follow one in lockstep, which in simulation beats seeded independent orders. Only a
      model's next train hop is runnable; val hops keep a free order (they do not change
      the model; sort val metrics by partition before summing them for bit-identical
      aggregates). Workers are ranked as in ``"lrf"``; a model
      whose epoch's training is done (it validates next) goes before any that trains,
      then models are ranked as in ``"lrf"`` (NOTE [ Validation first ]).

    ``"lrf"`` and ``"fixed"`` then grow the greedy choice along augmenting paths: an idle
    worker left out takes a model from a worker that has another candidate, so no hop is
    lost to an unlucky greedy order. ``"random"`` stays the original's plain greedy.

    Args:
        model_ids: the models, in a fixed order (a model's index matters to ``"fixed"``).
        num_epochs: epochs per model, at least 1.
        train_owner: train partition -> worker holding it (at least one partition).
        val_owner: val partition -> worker holding it; empty for no validation.
        policy: one of :data:`POLICIES`.
        seed: seed of the scheduler's own ``random.Random``.
        cost: estimated cost of a hop (e.g. its expected seconds); default 1 per hop.
        walk: ``"partitions"`` (the fixed orders above) or ``"workers"``, the walk of fits
            made before walks were independent of the workers (its base order interleaves
            the workers and model ``i`` starts at ``i mod W``), so that they resume.

    Raises:
        ParamsError: (a ``ValueError``) for an unknown policy, ``num_epochs < 1``,
            duplicate model ids or no train partitions. No models is fine: a search adds
            them (:meth:`add_model`).
        TypeError: for a model id that is not a string or a non-integer ``num_epochs``.
    """

    def __init__(
        self,
        model_ids: Sequence[str],
        *,
        num_epochs: int,
        train_owner: Mapping[int, int],
        val_owner: Mapping[int, int],
        policy: str = "fixed",
        seed: int = 0,
        cost: Callable[[Hop], float] | None = None,
        walk: str = "partitions",
    ) -> None:
        _check_args(model_ids, num_epochs, train_owner, policy)
        if walk not in WALKS:
            raise ParamsError(f"walk must be one of {WALKS}, got {walk!r}")
        self._walk = walk
        self._policy = policy
        self._seed = seed
        self._rng = random.Random(seed)
        self._num_epochs = num_epochs
        self._cost = cost if cost is not None else _unit_cost
        self._train_owner = {p: train_owner[p] for p in sorted(train_owner)}
        self._val_owner = {p: val_owner[p] for p in sorted(val_owner)}
        self._workers = sorted(set(self._train_owner.values()) | set(self._val_owner.values()))
        self._models: list[_Model] = []
        self._by_id: dict[str, _Model] = {}
        self._cand: dict[int, dict[int, None]] = {w: {} for w in self._workers}
        self._in_cand: list[list[int]] = []
        self._idle: dict[int, None] = dict.fromkeys(self._workers)
        self._running: dict[int, Hop] = {}  # worker -> hop running on it
        self._queued: dict[int, Hop] = {}  # worker -> hop to run after it (NOTE [ Next hops ])
        self._work: list[float] = []  # model -> cost of its hops not completed
        self._load = dict.fromkeys(self._workers, 0.0)  # remaining cost pinned on a worker
        self._bases: dict[int, list[int]] = {}  # epoch -> base order of "fixed"
        self._train_workers = len(set(self._train_owner.values()))
        self._unfinished = 0
        self._paused = 0
        self._assigned = False
        for model_id in model_ids:
            self.add_model(model_id)

    def add_model(self, model_id: str) -> None:
        """A model joins the fit, at epoch 0, behind every model given so far.

        A search asks for models while hops run (NOTE [ Models that join ]); the
        constructor's ``model_ids`` are added the same way. The model's index, which fixes
        its visiting order under ``"fixed"``, is the number of models added before it, so
        adding models never changes the order of those already there.

        Raises:
            TypeError: ``model_id`` is not a str.
            ParamsError: a model with that id was added before.
        """
        if not isinstance(model_id, str):
            raise TypeError(
                f"model ids should be str, but got {model_id!r} ({type(model_id).__name__})"
            )
        if model_id in self._by_id:
            raise ParamsError(f"duplicate model id {model_id!r}; give every model a distinct id")
        m = _Model(model_id, len(self._models))
        self._models.append(m)
        self._by_id[model_id] = m
        self._in_cand.append([])
        self._work.append(0.0)
        self._unfinished += 1
        self._start_epoch(m)
        for hop in self._pending(m):
            c = self._cost(hop)
            self._work[m.index] += c
            self._load[self.owner(hop)] += c
        self._index(m)

    @property
    def model_ids(self) -> list[str]:
        """Every model, live or dropped, in the order they were added."""
        return [m.id for m in self._models]

    @property
    def num_epochs(self) -> int:
        """Epochs per model."""
        return self._num_epochs

    @property
    def workers(self) -> list[int]:
        """Every worker that owns a train or val partition, sorted."""
        return list(self._workers)

    @property
    def done(self) -> bool:
        """Whether every live model has finished ``num_epochs`` epochs (True with none:
        whether more will join is the search's to say)."""
        return self._unfinished == 0

    @property
    def live(self) -> int:
        """Models added and neither finished nor dropped (a search keeps this bounded)."""
        return self._unfinished

    @property
    def paused(self) -> int:
        """Live models held by :meth:`pause` (they count in :attr:`live`, run nothing)."""
        return self._paused

    @property
    def running(self) -> list[Assignment]:
        """The hops now running, by worker."""
        return [Assignment(w, self._running[w]) for w in sorted(self._running)]

    @property
    def queued(self) -> list[Assignment]:
        """The hops queued behind a running one (see :meth:`assign_next`), by worker."""
        return [Assignment(w, self._queued[w]) for w in sorted(self._queued)]

    def is_running(self, hop: Hop) -> bool:
        """Whether ``hop`` is running now (not queued, completed or dropped)."""
        m = self._by_id.get(hop.model_id)
        return m is not None and m.hop == hop and not m.queued

    def idle_workers(self) -> list[int]:
        """Workers running no hop, sorted."""
        return sorted(self._idle)

    def owner(self, hop: Hop) -> int:
        """The worker that must run ``hop`` (the one holding its partition)."""
        return (self._train_owner if hop.kind == "train" else self._val_owner)[hop.partition]

    def pending_hops(self, model_id: str) -> list[Hop]:
        """A model's hops not yet completed (a running one included), in a valid order."""
        return self._pending(self._model(model_id, "pending_hops"))

    def remaining_hops(self, model_id: str | None = None) -> int:
        """Number of hops not yet completed (running ones included) of live models.

        Args:
            model_id: count only this model's hops (0 if it was dropped); all when ``None``.
        """
        models = self._models if model_id is None else [self._model(model_id, "remaining")]
        per_epoch = len(self._train_owner) + len(self._val_owner)
        live = [m for m in models if not m.dropped and m.epoch < self._num_epochs]
        later = sum(self._num_epochs - m.epoch - 1 for m in live) * per_epoch
        return later + sum(len(m.train_todo) + len(m.val_todo) for m in live)

    def total_hops(self) -> int:
        """Hops of every model added so far, live or dropped, as planned when added."""
        per_epoch = len(self._train_owner) + len(self._val_owner)
        return len(self._models) * self._num_epochs * per_epoch

    def ends_epoch(self, hop: Hop) -> bool:
        """Whether completing the running ``hop`` would end its model's epoch."""
        m = self._by_id.get(hop.model_id)
        return m is not None and m.hop == hop and len(m.train_todo) + len(m.val_todo) == 1

    def epoch_of(self, model_id: str) -> int:
        """The model's current 0-based epoch; ``num_epochs`` once it has finished."""
        return self._model(model_id, "epoch_of").epoch

    def assign(self) -> list[Assignment]:
        """Start as many hops as possible now and mark them running.

        Returns:
            A maximal set of new assignments: at most one per idle worker and one per idle
            model, after which no idle worker has a runnable hop of an idle model.
        """
        self._assigned = True
        match: dict[int, int] = {}  # worker -> model index, this round
        reach: dict[int, set[int]] = {}  # model matched this round -> workers it could use
        for w in self._worker_order():
            if self._cand[w]:
                match[w] = self._take(self._pick_model(self._cand[w]), reach)
        if self._policy != "random":
            # A path can end only at a matched worker that still has an unmatched candidate.
            while any(self._cand[v] for v in match):
                reachable = set().union(*reach.values())
                todo = [w for w in sorted(self._idle) if w not in match and w in reachable]
                if not any(self._augment(w, match, reach, set()) for w in todo):
                    break
        out: list[Assignment] = []
        for w, i in sorted(match.items()):
            m = self._models[i]
            m.hop, m.worker = self._hop_on(m, w), w
            del self._idle[w]
            self._running[w] = m.hop
            out.append(Assignment(w, m.hop))
        return out

    def assign_next(self) -> list[Assignment]:
        """Queue the next hop of each busy worker that has none queued, where one is known.

        The hop starts on that worker as soon as its running hop ends, without waiting for
        the controller (NOTE [ Next hops ]): one of the worker's candidates of the highest
        priority, if one of those could not start sooner on another worker.

        Returns:
            The new queued assignments, at most one per worker.
        """
        self._assigned = True
        out: list[Assignment] = []
        for w in sorted(self._running):
            if w in self._queued:
                continue
            choice = self._next_choice(w)
            if not choice:
                continue
            m = self._models[self._pick_model(choice)]
            self._unindex(m)
            m.hop, m.worker, m.queued = self._hop_on(m, w), w, True
            self._queued[w] = m.hop
            out.append(Assignment(w, m.hop))
        return out

    def complete(self, hop: Hop) -> list[EpochEnd]:
        """A running hop finished: free its model and worker. ``ValueError`` if not running.

        A hop queued behind it on that worker becomes the worker's running hop.

        Returns:
            ``[EpochEnd]`` when this was the model's last hop of that epoch (its last val
            hop, or its last train hop when there is no validation), else ``[]``.
        """
        m = self._by_id.get(hop.model_id)
        if m is not None and m.hop == hop and m.queued:
            raise ValueError(
                f"complete({hop}): that hop is queued behind {self._running[m.worker]} on "
                f"worker {m.worker}; complete the running hop first (a worker runs its hops "
                "in order)"
            )
        m = self._release(hop, "complete")
        ends = self._advance(m, hop)
        self._index(m)
        return ends

    def requeue(self, hop: Hop) -> None:
        """A running or queued hop was lost for a reason not the model's (e.g. its worker
        died).

        The model is freed and the hop becomes runnable again; a hop queued behind a running
        one takes its place. ``ValueError`` if ``hop`` is neither running nor queued.
        """
        self._index(self._release(hop, "requeue"))

    def drop_model(self, model_id: str) -> None:
        """The model failed or diverged: it gets no more hops.

        A running hop of it is forgotten and its worker becomes idle (or runs the hop queued
        there); a queued hop of it is forgotten too. Dropping a model twice is harmless; an
        unknown id is a ``ValueError``.
        """
        m = self._model(model_id, "drop_model")
        if m.dropped:
            return
        if m.hop is not None:
            self._release(m.hop, "drop_model")
        for hop in self._pending(m):
            self._load[self.owner(hop)] -= self._cost(hop)
        if m.epoch < self._num_epochs:
            self._unfinished -= 1
        if m.paused:
            m.paused = False
            self._paused -= 1
        self._unindex(m)
        m.dropped, self._work[m.index] = True, 0.0

    def stop_model(self, model_id: str) -> None:
        """Early stopping ended the model at an epoch boundary: it gets no more hops, as
        :meth:`drop_model` (the difference, stopped rather than failed, is the caller's)."""
        self.drop_model(model_id)

    def pause(self, model_id: str) -> None:
        """Hold an idle model at its epoch boundary until :meth:`resume` (NOTE [ Paused
        models ]). ``ValueError`` if it runs or has a hop queued, or has ended."""
        m = self._model(model_id, "pause")
        if m.hop is not None or m.dropped or m.epoch >= self._num_epochs:
            raise ValueError(
                f"pause({model_id!r}): only a live model between hops can wait (it runs "
                f"{m.hop}, dropped={m.dropped}, epoch {m.epoch})"
            )
        if not m.paused:
            m.paused = True
            self._paused += 1
            self._unindex(m)

    def resume(self, model_id: str) -> None:
        """A paused model may run again (a no-op for one not paused)."""
        m = self._model(model_id, "resume")
        if m.paused:
            m.paused = False
            self._paused -= 1
            self._index(m)

    def replay(self, hop: Hop) -> list[EpochEnd]:
        """Record a hop completed in an earlier, interrupted run (for resume).

        Call it for each completed hop, in each model's completion order, before any
        :meth:`assign`.

        Returns:
            As :meth:`complete`.

        Raises:
            ValueError: if :meth:`assign` was already called, or ``hop`` is not runnable for
                its model now (wrong epoch, kind, already done, or out of the fixed order).
        """
        if self._assigned:
            raise ValueError(
                f"replay({hop}) after assign(): replay every completed hop of the earlier run "
                "first, then call assign()"
            )
        m = self._model(hop.model_id, "replay")
        runnable: list[Hop] = []
        if not m.dropped and m.epoch < self._num_epochs:
            kind, parts = self._runnable(m)
            runnable = [Hop(m.id, m.epoch, kind, p) for p in parts]
        if hop not in runnable:
            raise ValueError(
                f"replay({hop}): that hop is not runnable for model {m.id!r} now (epoch "
                f"{m.epoch}, dropped={m.dropped}; runnable: {runnable}, policy "
                f"{self._policy!r}); replay hops in each model's completion order, with the "
                "policy and seed of the earlier run"
            )
        self._unindex(m)
        ends = self._advance(m, hop)
        self._index(m)
        return ends

    def _model(self, model_id: str, where: str) -> _Model:
        m = self._by_id.get(model_id)
        if m is None:
            raise ValueError(
                f"{where}: unknown model id {model_id!r}; known ids are the model_ids given "
                f"to Scheduler (e.g. {self._models[0].id!r})"
            )
        return m

    def _release(self, hop: Hop, where: str) -> _Model:
        m = self._by_id.get(hop.model_id)
        if m is None or m.hop != hop:
            now = None if m is None else m.hop
            raise ValueError(
                f"{where}({hop}): that hop is not running (model {hop.model_id!r} runs {now}); "
                "pass a hop returned by assign() or assign_next() that was not completed, "
                "requeued or dropped"
            )
        w = m.worker
        if m.queued:
            del self._queued[w]
        else:
            del self._running[w]
            nxt = self._queued.pop(w, None)
            if nxt is None:
                self._idle[w] = None
            else:  # NOTE [ Next hops ]: the queued hop starts as this one ends
                self._running[w] = nxt
                self._by_id[nxt.model_id].queued = False
        m.hop, m.worker, m.queued = None, -1, False
        return m

    def _base_order(self, epoch: int) -> list[int]:
        # NOTE [ Fixed order ]: depends on (seed, epoch) only, never on timing, and for
        # walk="partitions" not on the workers either (NOTE [ Walks independent of the
        # workers ]).
        if epoch not in self._bases:
            rng = random.Random(f"cerebro.scheduler.fixed:{self._seed}:{epoch}")
            if self._walk == "partitions":
                parts = sorted(self._train_owner)
                r = rng.randrange(len(parts))
                self._bases[epoch] = parts[r:] + parts[:r]
            else:  # the walk fits made before 0.2 resume with: interleaved by worker
                ws = sorted(set(self._train_owner.values()))
                rng.shuffle(ws)
                by = {w: [p for p, o in self._train_owner.items() if o == w] for w in ws}
                for w in ws:
                    rng.shuffle(by[w])
                rounds = max(map(len, by.values()))
                self._bases[epoch] = [
                    by[w][r] for r in range(rounds) for w in ws if r < len(by[w])
                ]
        return self._bases[epoch]

    def _start_epoch(self, m: _Model) -> None:
        m.train_todo, m.val_todo = list(self._train_owner), list(self._val_owner)
        if self._policy == "fixed":
            # Latin square: model i starts at offset i mod (partitions, or train workers
            # for the old walk) and walks the base order, so the first models never
            # collide and the rest follow one of them in lockstep.
            base = self._base_order(m.epoch)
            period = len(base) if self._walk == "partitions" else self._train_workers
            offset = m.index % period
            m.train_todo = [base[(offset + k) % len(base)] for k in range(len(base))]

    def _pending(self, m: _Model) -> list[Hop]:
        if m.dropped or m.epoch >= self._num_epochs:
            return []
        hops = [Hop(m.id, m.epoch, "train", p) for p in m.train_todo]
        hops += [Hop(m.id, m.epoch, "val", p) for p in m.val_todo]
        for e in range(m.epoch + 1, self._num_epochs):
            hops += [Hop(m.id, e, "train", p) for p in self._train_owner]
            hops += [Hop(m.id, e, "val", p) for p in self._val_owner]
        return hops

    def _hop_on(self, m: _Model, w: int) -> Hop:
        kind, parts = self._runnable(m)
        owner = self._train_owner if kind == "train" else self._val_owner
        return Hop(m.id, m.epoch, kind, next(p for p in parts if owner[p] == w))

    def _runnable(self, m: _Model) -> tuple[HopKind, list[int]]:
        if not m.train_todo:
            return "val", m.val_todo
        return "train", m.train_todo[:1] if self._policy == "fixed" else m.train_todo

    def _advance(self, m: _Model, hop: Hop) -> list[EpochEnd]:
        c = self._cost(hop)
        self._work[m.index] -= c
        self._load[self.owner(hop)] -= c
        (m.train_todo if hop.kind == "train" else m.val_todo).remove(hop.partition)
        if m.train_todo or m.val_todo:
            return []
        end = EpochEnd(m.id, m.epoch)
        m.epoch += 1
        if m.epoch < self._num_epochs:
            self._start_epoch(m)
        else:
            self._unfinished -= 1
        return [end]

    def _index(self, m: _Model) -> None:
        if m.dropped or m.paused or m.hop is not None or m.epoch >= self._num_epochs:
            return
        kind, parts = self._runnable(m)
        owner = self._train_owner if kind == "train" else self._val_owner
        ws = list(dict.fromkeys(owner[p] for p in parts))
        for w in ws:
            self._cand[w][m.index] = None
        self._in_cand[m.index] = ws

    def _unindex(self, m: _Model) -> None:
        for w in self._in_cand[m.index]:
            self._cand[w].pop(m.index, None)
        self._in_cand[m.index] = []

    def _take(self, i: int, reach: dict[int, set[int]]) -> int:
        reach[i] = set(self._in_cand[i])
        self._unindex(self._models[i])
        return i

    def _augment(
        self, w: int, match: dict[int, int], reach: dict[int, set[int]], seen: set[int]
    ) -> bool:
        # NOTE [ Augmenting paths ]: the greedy pass can leave worker w idle while a model
        # it could run went to a worker v that had another choice. Moving that model to w
        # and giving v another model runs one more hop; every matched worker and model stays
        # matched, so priorities are kept as far as possible (Kuhn's algorithm).
        for v, i in list(match.items()):
            if i in seen or w not in reach[i]:
                continue
            seen.add(i)
            if self._cand[v]:
                match[v] = self._take(self._pick_model(self._cand[v]), reach)
            elif not self._augment(v, match, reach, seen):
                continue
            match[w] = i
            return True
        return False

    def _worker_order(self) -> list[int]:
        ws = sorted(w for w in self._idle if self._cand[w])
        if self._policy == "random":
            self._rng.shuffle(ws)
        else:
            ws.sort(key=lambda w: -self._load[w])
        return ws

    def _next_choice(self, w: int) -> dict[int, None]:
        """The candidates that may be queued on busy worker ``w`` (NOTE [ Next hops ])."""
        cands = self._cand[w]
        if not cands:
            return {}
        in_cand = self._in_cand
        if self._policy == "random":  # no priorities to keep: any pinned model will do
            return {i: None for i in cands if in_cand[i] == [w]}
        top = self._top(cands)
        pinned = {i: None for i in top if in_cand[i] == [w]}
        if pinned:
            return pinned
        queued = self._queued
        return {i: None for i in top if all(v == w or v in queued for v in in_cand[i])}

    def _top(self, cands: dict[int, None]) -> list[int]:
        """The candidates of the highest priority ("lrf" and "fixed")."""
        if self._policy == "fixed":  # NOTE [ Validation first ]
            models = self._models
            validating = [i for i in cands if not models[i].train_todo]
            if validating:
                cands = dict.fromkeys(validating)
        return self._most_work(cands)

    def _most_work(self, cands: dict[int, None]) -> list[int]:
        """The candidates with the most remaining work ("lrf"'s ranking)."""
        work = self._work
        best = max(map(work.__getitem__, cands))
        return [i for i in cands if work[i] == best]

    def _pick_model(self, cands: dict[int, None]) -> int:
        if self._policy == "random":
            return self._rng.choice(list(cands))
        ties = self._top(cands)
        return ties[0] if len(ties) == 1 else self._rng.choice(ties)


def _unit_cost(hop: Hop) -> float:
    return 1.0


def _check_args(
    model_ids: Sequence[str], num_epochs: int, train_owner: Mapping[int, int], policy: str
) -> None:
    if policy not in POLICIES:
        raise ParamsError(f"unknown scheduling policy {policy!r}; choose one of {POLICIES}")
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int):
        raise TypeError(f"num_epochs should be an int, but got {num_epochs!r}")
    if num_epochs < 1:
        raise ParamsError(f"num_epochs should be at least 1, but got {num_epochs}")
    if isinstance(model_ids, str):
        raise TypeError(f"model_ids should be a sequence of ids, but got the str {model_ids!r}")
    bad = [m for m in model_ids if not isinstance(m, str)]
    if bad:
        raise TypeError(f"model ids should be str, but got {bad[0]!r} ({type(bad[0]).__name__})")
    dups = sorted(m for m, n in Counter(model_ids).items() if n > 1)
    if dups:
        raise ParamsError(f"duplicate model ids {dups}; give every model a distinct id")
    if not train_owner:
        raise ParamsError(
            "no train partitions: train_owner is empty; run the ETL so that the train split "
            "has at least one partition, and map each partition to its worker"
        )
