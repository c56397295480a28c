"""The MOP scheduler: which hop each idle worker runs next, built on the epoch bookkeeping
of :mod:`cerebro.scheduler._progress` and asking its :class:`Policy` what goes first."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from cerebro.errors import ParamsError
from cerebro.scheduler._hops import Assignment, EpochEnd, Hop, ModelState
from cerebro.scheduler._policies import Board, Policy, make_policy
from cerebro.scheduler._progress import Progress, check_args, unit_cost
from cerebro.scheduler._walks import WALKS

__all__ = ["Scheduler"]

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


class Scheduler(Progress):
    """MOP scheduler: which hop each idle worker runs next.

    Policies (which runnable hop goes first; each is a :class:`Policy`, whose class says
    more):

    * ``"random"``: the original Cerebro's randomized greedy. Idle workers are visited in a
      random order; each gets a uniformly random idle model with a runnable hop on it.
    * ``"lrf"``: most remaining work first. Idle workers are visited in order of most
      remaining work pinned on them; each gets the runnable model with the most remaining
      work (sum of ``cost`` over its hops not yet completed), ties broken by the rng.
    * ``"fixed"``: every model's train order in each epoch is fixed in advance as a
      function of (seed, model index, epoch) and the partitions only, so each model trains
      to the same result whatever the hop durations and the number of workers (a Latin
      square of seeded rotations; see :class:`~cerebro.scheduler._policies.FixedOrder`).
      Only a model's next train hop is runnable; val hops keep a free order. A model that
      validates next goes before any that trains, then models rank as in ``"lrf"``.

    ``"lrf"`` and ``"fixed"`` then grow the greedy choice along augmenting paths: an idle
    worker left out takes a model from a worker that has another candidate, so no hop is
    lost to an unlucky greedy order. ``"random"`` stays the original's plain greedy.

    Args:
        model_ids: the models, in a fixed order (a model's index matters to ``"fixed"``).
        num_epochs: epochs per model, at least 1.
        train_owner: train partition -> worker holding it (at least one partition).
        val_owner: val partition -> worker holding it; empty for no validation.
        policy: one of :data:`POLICIES`, or a :class:`Policy` of one's own (NOTE [ What a
            policy decides ]), a fresh one per scheduler (``walk`` does not reach it).
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
        policy: str | Policy = "fixed",
        seed: int = 0,
        cost: Callable[[Hop], float] | None = None,
        walk: str = "partitions",
    ) -> None:
        check_args(model_ids, num_epochs, train_owner, policy)
        if walk not in WALKS:
            raise ParamsError(f"walk must be one of {WALKS}, got {walk!r}")
        super().__init__(
            num_epochs=num_epochs,
            train_owner=train_owner,
            val_owner=val_owner,
            policy=policy
            if isinstance(policy, Policy)
            else make_policy(policy, seed=seed, walk=walk),
            cost=cost if cost is not None else unit_cost,
        )
        self._rng = random.Random(seed)
        self._cand: dict[int, dict[int, None]] = {w: {} for w in self._workers}
        self._in_cand: list[list[int]] = []
        self._idle: dict[int, None] = dict.fromkeys(self._workers)
        self._running: dict[int, Hop] = {}  # worker -> hop running on it
        self._queued: dict[int, Hop] = {}  # worker -> hop to run after it (NOTE [ Next hops ])
        # What the policy reads: the same containers, live (NOTE [ What a policy decides ]).
        self._board = Board(
            self._rng, self._models, self._work, self._load, self._in_cand, self._queued
        )
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
        self._in_cand.append([])
        self._index(self._join(model_id))

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

    def assign(self) -> list[Assignment]:
        """Start as many hops as possible now and mark them running.

        Returns:
            A maximal set of new assignments: at most one per idle worker and one per idle
            model, after which no idle worker has a runnable hop of an idle model.
        """
        self._assigned = True
        match: dict[int, int] = {}  # worker -> model index, this round
        reach: dict[int, set[int]] = {}  # model matched this round -> workers it could use
        ws = sorted(w for w in self._idle if self._cand[w])
        for w in self._policy.worker_order(ws, self._board):
            if self._cand[w]:
                match[w] = self._take(self._policy.pick(self._cand[w], self._board), reach)
        if self._policy.augments:
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
            cands = self._cand[w]
            choice = self._policy.queueable(w, cands, self._board) if cands else {}
            if not choice:
                continue
            m = self._models[self._policy.pick(choice, self._board)]
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
        self._unindex(m)
        self._forget(m)

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
                f"{self._policy.name!r}); replay hops in each model's completion order, with the "
                "policy and seed of the earlier run"
            )
        self._unindex(m)
        ends = self._advance(m, hop)
        self._index(m)
        return ends

    def _release(self, hop: Hop, where: str) -> ModelState:
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

    def _index(self, m: ModelState) -> None:
        if m.dropped or m.paused or m.hop is not None or m.epoch >= self._num_epochs:
            return
        kind, parts = self._runnable(m)
        owner = self._train_owner if kind == "train" else self._val_owner
        ws = list(dict.fromkeys(owner[p] for p in parts))
        for w in ws:
            self._cand[w][m.index] = None
        self._in_cand[m.index] = ws

    def _unindex(self, m: ModelState) -> None:
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
                match[v] = self._take(self._policy.pick(self._cand[v], self._board), reach)
            elif not self._augment(v, match, reach, seen):
                continue
            match[w] = i
            return True
        return False
