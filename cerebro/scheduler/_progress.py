"""Where each model stands in its epochs, and the work left: the scheduler's bookkeeping of
MOP's epoch rule. Which worker runs what is :class:`~cerebro.scheduler.Scheduler`'s, built
on this; the order of a model's train hops is its policy's."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from cerebro.errors import ParamsError
from cerebro.scheduler._hops import EpochEnd, Hop, HopKind, ModelState
from cerebro.scheduler._policies import POLICIES, Policy

__all__ = ["Progress", "check_args", "unit_cost"]

# NOTE [ MOP epoch rule ]
# In each epoch every live model trains exactly once on every train partition, in any order
# (or, for "fixed", in an order fixed in advance); only then is it validated once on every
# val partition (val leaves the model unchanged, so their order is free); only then does
# its next epoch start. No barrier across models. A hop of partition p runs on its owner
# only; a model is on at most one worker and a worker runs at most one hop.
#
# NOTE [ Models that join ]
# A search asks for models while the fit runs, so models join a running scheduler. A new
# model is the last in every tie-break that uses the index, and its "fixed" order depends on
# its own index only: what the models already there do never changes when one joins. It
# is indexed as a candidate at once, so an idle worker gets it at the next `assign`.


class Progress:
    """Each model's epoch, the partitions it has left in it, and the cost of what is left,
    per model and per worker. The base of :class:`~cerebro.scheduler.Scheduler`."""

    def __init__(
        self,
        *,
        num_epochs: int,
        train_owner: Mapping[int, int],
        val_owner: Mapping[int, int],
        policy: Policy,
        cost: Callable[[Hop], float],
    ) -> None:
        self._policy = policy
        self._num_epochs = num_epochs
        self._cost = cost
        self._train_owner = {p: train_owner[p] for p in sorted(train_owner)}
        self._val_owner = {p: val_owner[p] for p in sorted(val_owner)}
        self._workers = sorted(set(self._train_owner.values()) | set(self._val_owner.values()))
        self._models: list[ModelState] = []
        self._by_id: dict[str, ModelState] = {}
        self._work: list[float] = []  # model -> cost of its hops not completed
        self._load = dict.fromkeys(self._workers, 0.0)  # remaining cost pinned on a worker
        self._unfinished = 0
        self._paused = 0

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

    def _join(self, model_id: str) -> ModelState:
        """A new model at epoch 0, behind every model so far (NOTE [ Models that join ])."""
        m = ModelState(model_id, len(self._models))
        self._models.append(m)
        self._by_id[model_id] = m
        self._work.append(0.0)
        self._unfinished += 1
        self._start_epoch(m)
        for hop in self._pending(m):
            c = self._cost(hop)
            self._work[m.index] += c
            self._load[self.owner(hop)] += c
        return m

    def _forget(self, m: ModelState) -> None:
        """The model gets no more hops: its work left no longer counts."""
        for hop in self._pending(m):
            self._load[self.owner(hop)] -= self._cost(hop)
        if m.epoch < self._num_epochs:
            self._unfinished -= 1
        if m.paused:
            m.paused = False
            self._paused -= 1
        m.dropped, self._work[m.index] = True, 0.0

    def _model(self, model_id: str, where: str) -> ModelState:
        m = self._by_id.get(model_id)
        if m is None:
            raise ValueError(
                f"{where}: unknown model id {model_id!r}; known ids are the model_ids given "
                f"to Scheduler (e.g. {self._models[0].id!r})"
            )
        return m

    def _start_epoch(self, m: ModelState) -> None:
        m.train_todo = list(self._policy.train_order(m.index, m.epoch, self._train_owner))
        m.val_todo = list(self._val_owner)

    def _pending(self, m: ModelState) -> list[Hop]:
        if m.dropped or m.epoch >= self._num_epochs:
            return []
        hops = [Hop(m.id, m.epoch, "train", p) for p in m.train_todo]
        hops += [Hop(m.id, m.epoch, "val", p) for p in m.val_todo]
        for e in range(m.epoch + 1, self._num_epochs):
            hops += [Hop(m.id, e, "train", p) for p in self._train_owner]
            hops += [Hop(m.id, e, "val", p) for p in self._val_owner]
        return hops

    def _hop_on(self, m: ModelState, w: int) -> Hop:
        kind, parts = self._runnable(m)
        owner = self._train_owner if kind == "train" else self._val_owner
        return Hop(m.id, m.epoch, kind, next(p for p in parts if owner[p] == w))

    def _runnable(self, m: ModelState) -> tuple[HopKind, list[int]]:
        if not m.train_todo:
            return "val", m.val_todo
        return "train", self._policy.runnable_train(m.train_todo)

    def _advance(self, m: ModelState, hop: Hop) -> list[EpochEnd]:
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


def unit_cost(hop: Hop) -> float:
    """The default cost of a hop: 1."""
    return 1.0


def check_args(
    model_ids: Sequence[str],
    num_epochs: int,
    train_owner: Mapping[int, int],
    policy: str | Policy,
) -> None:
    """The checks of :class:`~cerebro.scheduler.Scheduler`'s arguments (its Raises)."""
    if not isinstance(policy, Policy) and policy not in POLICIES:
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
