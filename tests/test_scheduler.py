"""Tests of the MOP scheduler: each rule, each error, resume, failures, determinism."""

from __future__ import annotations

import ast
import doctest
import importlib
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cerebro.scheduler as scheduler_module
from cerebro.errors import ParamsError
from cerebro.scheduler import POLICIES, Assignment, Board, EpochEnd, Hop, Policy, Scheduler
from cerebro.scheduler._policies import FixedOrder, MostWorkFirst, RandomGreedy
from cerebro.simulate import make_scenario, simulate


def make(
    num_models: int = 3,
    num_workers: int = 2,
    *,
    train_per_worker: int = 1,
    val_per_worker: int = 1,
    num_epochs: int = 2,
    policy: str = "fixed",
    seed: int = 0,
) -> Scheduler:
    return Scheduler(
        [f"m{i}" for i in range(num_models)],
        num_epochs=num_epochs,
        train_owner={p: p % num_workers for p in range(num_workers * train_per_worker)},
        val_owner={p: p % num_workers for p in range(num_workers * val_per_worker)},
        policy=policy,
        seed=seed,
    )


def all_hops(s: Scheduler) -> set[Hop]:
    return {h for m in s.model_ids for h in s.pending_hops(m)}


# -- a driver that checks every rule after every event ---------------------------------------


@dataclass
class Trace:
    """The plan of a run (every hop of a fresh scheduler) and what the run did."""

    planned: set[Hop]
    fixed: bool  # policy "fixed": only the next train hop in the model's order is runnable
    completed: list[tuple[int, Hop]] = field(default_factory=list)  # (worker, hop)
    ends: list[EpochEnd] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)

    @staticmethod
    def of(fresh: Scheduler, policy: str) -> Trace:
        return Trace(all_hops(fresh), policy == "fixed")

    def partitions(self, kind: str) -> set[int]:
        return {h.partition for h in self.planned if h.kind == kind}

    def sequence(self, model_id: str) -> list[Hop]:
        return [h for _, h in self.completed if h.model_id == model_id]


def check_assignments(
    s: Scheduler,
    new: list[Assignment],
    trace: Trace,
    before: set[int],
    queued: list[Assignment] = (),  # type: ignore[assignment]
) -> None:
    """Rules 1-4 for the hops just assigned (``queued``: by ``assign_next``), against the
    completed hops seen so far."""
    done = {h for _, h in trace.completed}
    running = s.running
    # Rule 3: a worker runs one hop (and holds at most one queued), a model is on one worker.
    assert len({a.worker for a in running}) == len(running)
    assert len({a.worker for a in s.queued}) == len(s.queued)
    assert {a.worker for a in s.queued} <= {a.worker for a in running}
    on = [a.hop.model_id for a in running + s.queued]
    assert len(set(on)) == len(on)
    assert len({a.worker for a in new}) == len(new)
    for a in queued:
        assert a in s.queued and a.worker not in s.idle_workers()
        # NOTE [ Next hops ]: queued only where the model could not start sooner: each
        # other worker it could use has a hop queued too.
        m = a.hop.model_id
        runnable = [h for h in s.pending_hops(m) if (h.epoch, h.kind) == (a.hop.epoch, a.hop.kind)]
        if trace.fixed and a.hop.kind == "train":
            runnable = runnable[:1]
        assert a.worker in {s.owner(h) for h in runnable}
        assert {s.owner(h) for h in runnable} - {a.worker} <= {q.worker for q in s.queued}
    for a in new + list(queued):
        h = a.hop
        assert a in queued or a.worker in before, "assigned to a worker that was not idle"
        assert h.model_id not in trace.dropped
        assert s.owner(h) == a.worker  # Rule 2: pinning
        assert h not in done  # at most once
        # Rule 1: all earlier epochs done; val only after all train of this epoch.
        for e in range(h.epoch):
            assert all(Hop(h.model_id, e, "train", p) in done for p in trace.partitions("train"))
            assert all(Hop(h.model_id, e, "val", p) in done for p in trace.partitions("val"))
        if h.kind == "val":
            assert all(
                Hop(h.model_id, h.epoch, "train", p) in done for p in trace.partitions("train")
            )
    # Rule 4: maximal: no idle worker has a runnable hop of an idle live model.
    busy = set(on)
    idle = set(s.idle_workers())
    for m in s.model_ids:
        if m in busy or m in trace.dropped:
            continue
        pending = s.pending_hops(m)
        if not pending:
            continue
        if pending[0].kind == "train" and trace.fixed:
            runnable = [pending[0]]
        else:
            runnable = [
                h for h in pending if (h.epoch, h.kind) == (pending[0].epoch, pending[0].kind)
            ]
        assert not idle & {s.owner(h) for h in runnable}, f"not maximal: {m} could run"


def drive(
    s: Scheduler,
    trace: Trace,
    duration: Callable[[Hop, int], float],
    *,
    rng: random.Random | None = None,
    fail_p: float = 0.0,
    drop_p: float = 0.0,
    lookahead: bool = False,
    joins: dict[int, list[str]] | None = None,
) -> Trace:
    """Run ``s`` to the end in virtual time, with random worker failures and model drops.

    ``trace`` starts with the plan, and with what an earlier run completed if that was
    replayed into ``s``; the run's events are added to it and every rule checked. With
    ``lookahead``, busy workers also get queued hops (``assign_next``), which start when
    the hop before them ends, and a worker's death loses its queued hop too. ``joins``
    adds models (as a search does) once that many hops have completed.
    """
    rng = rng or random.Random(0)
    ends_at: dict[Hop, tuple[float, int, int]] = {}  # running hop -> (end, seq, worker)
    now, seq = 0.0, 0
    while not s.done:
        before = set(s.idle_workers())
        new = s.assign()
        queued = s.assign_next() if lookahead else []
        check_assignments(s, new, trace, before, queued)
        for a in s.running:  # new hops, and queued hops whose predecessor has ended
            if a.hop not in ends_at:
                ends_at[a.hop] = (now + duration(a.hop, a.worker), seq, a.worker)
                seq += 1
        assert ends_at, "stalled: nothing running and not done"
        hop = min(ends_at, key=ends_at.__getitem__)
        now, _, worker = ends_at.pop(hop)
        r = rng.random()
        if r < fail_p:  # the worker died: its hops are lost, not the models' fault
            behind = [a.hop for a in s.queued if a.worker == worker]
            s.requeue(hop)
            for q in behind:
                assert s.is_running(q)  # it took the lost hop's place...
                s.requeue(q)  # ...and was lost with it
            continue
        victim = rng.choice(s.model_ids) if r < fail_p + drop_p else None
        if victim != hop.model_id:
            ends = s.complete(hop)
            trace.completed.append((worker, hop))
            trace.ends += ends
            check_epoch_end(s, hop, ends, trace)
            for model_id in (joins or {}).get(len(trace.completed), []):
                s.add_model(model_id)
                trace.planned |= set(s.pending_hops(model_id))
        if victim is not None:  # the model failed (in this hop, or elsewhere)
            ends_at = {h: v for h, v in ends_at.items() if h.model_id != victim}
            s.drop_model(victim)
            trace.dropped.add(victim)
            assert s.remaining_hops(victim) == 0 and s.pending_hops(victim) == []
    assert not ends_at and not s.running and not s.queued
    return trace


def check_epoch_end(s: Scheduler, hop: Hop, ends: list[EpochEnd], trace: Trace) -> None:
    """EpochEnd comes with the hop that completes the epoch, and only then."""
    done = {h for _, h in trace.completed}
    epoch_hops = [h for h in trace.planned if (h.model_id, h.epoch) == (hop.model_id, hop.epoch)]
    complete = all(h in done for h in epoch_hops)
    assert ends == ([EpochEnd(hop.model_id, hop.epoch)] if complete else [])
    assert s.epoch_of(hop.model_id) == hop.epoch + complete


def random_durations(seed: int) -> Callable[[Hop, int], float]:
    cache: dict[tuple[Hop, int], float] = {}
    rng = random.Random(seed)

    def duration(hop: Hop, worker: int) -> float:
        if (hop, worker) not in cache:
            cache[(hop, worker)] = rng.choice([0.5, 1.0, 1.0, 2.0, 7.0]) * rng.random() + 0.01
        return cache[(hop, worker)]

    return duration


def check_final(s: Scheduler, trace: Trace) -> None:
    """Every hop of a live model completed exactly once; EpochEnd once per (model, epoch)."""
    counts = Counter(h for _, h in trace.completed)
    assert max(counts.values(), default=1) == 1, "a hop completed twice"
    live = [m for m in s.model_ids if m not in trace.dropped]
    planned = {h for h in trace.planned if h.model_id in live}
    assert {h for h in counts if h.model_id in live} == planned
    assert s.remaining_hops() == 0 and s.done
    end_counts = Counter(trace.ends)
    assert max(end_counts.values(), default=1) == 1
    for m in live:
        assert [e for e in trace.ends if e.model_id == m] == [
            EpochEnd(m, e) for e in range(s.num_epochs)
        ]
        assert s.epoch_of(m) == s.num_epochs
    for worker, hop in trace.completed:
        assert s.owner(hop) == worker


# -- constructor errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"policy": "fastest"}, ParamsError, ["'fastest'", "fixed", "lrf", "random"]),
        ({"num_epochs": 0}, ParamsError, ["num_epochs", "at least 1", "0"]),
        ({"num_epochs": 2.5}, TypeError, ["num_epochs", "int", "2.5"]),
        ({"model_ids": ["a", "b", "a"]}, ParamsError, ["duplicate", "'a'", "distinct"]),
        ({"model_ids": "abc"}, TypeError, ["sequence", "'abc'"]),
        ({"model_ids": ["a", 7]}, TypeError, ["str", "7", "int"]),
        ({"train_owner": {}}, ParamsError, ["no train partitions", "train_owner"]),
    ],
)
def test_constructor_rejects_bad_input(kwargs: dict, error: type, words: list[str]) -> None:
    args: dict = {
        "model_ids": ["a", "b"],
        "num_epochs": 1,
        "train_owner": {0: 0},
        "val_owner": {},
    }
    args.update(kwargs)
    with pytest.raises(error) as info:
        Scheduler(args.pop("model_ids"), **args)
    for word in words:
        assert word in str(info.value)
    if error is ParamsError:
        assert isinstance(info.value, ValueError)


def test_workers_are_owners_of_train_and_val_partitions() -> None:
    s = Scheduler(["a"], num_epochs=1, train_owner={0: 3, 1: 1}, val_owner={0: 5})
    assert s.workers == [1, 3, 5] and s.idle_workers() == [1, 3, 5]
    assert s.total_hops() == 3 and s.remaining_hops() == 3 and s.remaining_hops("a") == 3


# -- one rule at a time ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_first_assign_is_maximal_pinned_and_exclusive(policy: str) -> None:
    s = make(5, 3, policy=policy)
    first = s.assign()
    assert len(first) == 3  # three idle workers, five idle models: every worker busy
    assert len({a.hop.model_id for a in first}) == 3
    assert all(a.hop.kind == "train" and s.owner(a.hop) == a.worker for a in first)
    assert s.idle_workers() == [] and s.assign() == []
    assert sorted(s.running, key=lambda a: a.worker) == s.running


@pytest.mark.parametrize("policy", POLICIES)
def test_one_model_trains_everywhere_then_validates_then_next_epoch(policy: str) -> None:
    s = make(1, 3, num_epochs=2, policy=policy)
    seen: list[Hop] = []
    ends: list[EpochEnd] = []
    while not s.done:
        (a,) = s.assign()  # one model: one hop at a time
        seen.append(a.hop)
        ends += s.complete(a.hop)
    kinds = [(h.epoch, h.kind) for h in seen]
    assert kinds == [(0, "train")] * 3 + [(0, "val")] * 3 + [(1, "train")] * 3 + [(1, "val")] * 3
    for e in range(2):
        assert sorted(h.partition for h in seen if h.epoch == e and h.kind == "train") == [0, 1, 2]
    assert ends == [EpochEnd("m0", 0), EpochEnd("m0", 1)]
    assert s.epoch_of("m0") == 2 and s.remaining_hops() == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_ends_epoch_predicts_what_complete_returns(policy: str) -> None:
    s = make(3, 2, num_epochs=2, policy=policy)
    while not s.done:
        for a in s.assign():
            other = Hop(a.hop.model_id, a.hop.epoch + 1, a.hop.kind, a.hop.partition)
            assert not s.ends_epoch(other)  # not running: never
            predicted = s.ends_epoch(a.hop)
            assert predicted == bool(s.complete(a.hop))


def test_without_validation_the_last_train_hop_ends_the_epoch() -> None:
    s = make(1, 2, val_per_worker=0, num_epochs=1, policy="lrf")
    (a,) = s.assign()
    assert s.complete(a.hop) == []
    (b,) = s.assign()
    assert s.complete(b.hop) == [EpochEnd("m0", 0)] and s.done


def test_a_worker_with_no_runnable_hop_stays_idle() -> None:
    # Two partitions on worker 0, one on worker 1; one model.
    s = Scheduler(["a"], num_epochs=1, train_owner={0: 0, 1: 0, 2: 1}, val_owner={}, policy="lrf")
    (a,) = s.assign()
    assert len(s.idle_workers()) == 1 and s.assign() == []


def test_complete_and_requeue_reject_a_hop_that_is_not_running() -> None:
    s = make(2, 2)
    (a, _) = s.assign()
    s.complete(a.hop)
    with pytest.raises(ValueError, match=r"complete\(.*not running.*assign\(\)"):
        s.complete(a.hop)
    with pytest.raises(ValueError, match="not running"):
        s.requeue(a.hop)
    with pytest.raises(ValueError, match="not running"):
        s.complete(Hop("nobody", 0, "train", 0))


@pytest.mark.parametrize("policy", POLICIES)
def test_requeue_frees_model_and_worker_and_the_hop_runs_again(policy: str) -> None:
    s = make(1, 1, val_per_worker=0, num_epochs=1, policy=policy)
    (a,) = s.assign()
    s.requeue(a.hop)
    assert s.idle_workers() == [0] and s.running == [] and s.remaining_hops() == 1
    (b,) = s.assign()
    assert b == a
    assert s.complete(b.hop) == [EpochEnd("m0", 0)] and s.done


def test_drop_model_mid_run_forgets_its_hop_and_frees_its_worker() -> None:
    s = make(2, 1, num_epochs=1, policy="lrf")
    (a,) = s.assign()
    victim = a.hop.model_id
    other = "m1" if victim == "m0" else "m0"
    s.drop_model(victim)
    s.drop_model(victim)  # twice is harmless
    assert s.idle_workers() == [0] and s.remaining_hops(victim) == 0
    assert s.total_hops() == 4 and s.remaining_hops() == 2
    with pytest.raises(ValueError, match="not running"):
        s.complete(a.hop)
    (b,) = s.assign()
    assert b.hop.model_id == other
    s.complete(b.hop)
    (c,) = s.assign()
    assert s.complete(c.hop) == [EpochEnd(other, 0)] and s.done
    with pytest.raises(ValueError, match="unknown model id 'zz'"):
        s.drop_model("zz")


def test_dropping_every_model_is_done() -> None:
    s = make(2, 2)
    s.assign()
    s.drop_model("m0")
    s.drop_model("m1")
    assert s.done and s.running == [] and s.assign() == []


# -- next hops (NOTE [ Next hops ]) ------------------------------------------------------------


def test_assign_next_queues_a_model_pinned_to_the_busy_worker_and_it_runs_next() -> None:
    s = make(4, 2, num_epochs=1)  # fixed: models 0, 2 start on one worker, 1, 3 on the other
    first = s.assign()
    assert len(first) == 2 and s.assign_next() != []
    queued = s.queued
    assert len(queued) == 2 and s.assign_next() == []  # one per worker
    for q in queued:
        assert not s.is_running(q.hop) and s.owner(q.hop) == q.worker
        running = next(a for a in first if a.worker == q.worker)
        assert s.complete(running.hop) == []
        assert s.is_running(q.hop) and q in s.running  # took its place at once
        assert q.worker not in s.idle_workers()
    assert s.queued == [] and s.assign() == []  # both workers still busy


def test_a_model_that_could_run_elsewhere_is_not_queued() -> None:
    # After training, a model could validate on either worker.
    s = Scheduler(["a", "b"], num_epochs=1, train_owner={0: 0}, val_owner={0: 0, 1: 1})
    (a,) = s.assign()  # one model trains on worker 0; the other waits for it
    other = "b" if a.hop.model_id == "a" else "a"
    assert [q.hop for q in s.assign_next()] == [Hop(other, 0, "train", 0)]
    s.complete(a.hop)
    assert [(x.worker, x.hop.kind) for x in s.assign()] == [(1, "val")]
    assert s.assign_next() == []  # the first model runs; the other has nothing left pinned


def test_nothing_is_queued_over_a_model_with_more_work_that_could_run_elsewhere() -> None:
    # a, d, e have trained epoch 0 and could validate on either worker; b, c have finished
    # epoch 0, and each one's next train hop is pinned to one worker. a, d, e rank first
    # (they validate next, and have 6 hops left against 4). Two of them validate; queueing
    # b or c would pass over the third at each hand-over until the pinned train hops ran
    # out, so nothing is queued and the third goes to the next free worker.
    s = Scheduler(list("abcde"), num_epochs=2, train_owner={0: 0, 1: 1}, val_owner={0: 0, 1: 1})
    for m, done in zip("abcde", (2, 4, 4, 2, 2), strict=True):
        for hop in s.pending_hops(m)[:done]:
            s.replay(hop)
    running = s.assign()
    assert sorted(a.hop.kind for a in running) == ["val", "val"]
    assert {a.hop.model_id for a in running} < set("ade")
    assert s.assign_next() == []
    (third,) = set("ade") - {a.hop.model_id for a in running}
    s.complete(running[0].hop)
    assert [a.hop for a in s.assign()] == [Hop(third, 0, "val", running[0].worker)]
    # No model could run elsewhere now. The first one's last val hop (5 left) goes ahead of
    # b or c (4) on the other worker; the worker it left queues b's or c's train hop.
    done = running[0]
    queued = {q.worker: q.hop for q in s.assign_next()}
    assert queued[1 - done.worker] == Hop(done.hop.model_id, 0, "val", 1 - done.worker)
    assert queued[done.worker].model_id in "bc" and queued[done.worker].kind == "train"


def test_a_model_that_could_run_elsewhere_is_queued_where_the_others_have_a_queue() -> None:
    # p, q have trained once in epoch 0 (7 hops left each), their last train hop pinned to
    # one worker; f, g, h have trained epoch 0 and could validate on either worker (6 left).
    s = Scheduler(
        list("pfqgh"),
        num_epochs=2,
        train_owner={0: 0, 1: 1},
        val_owner={0: 0, 1: 1},
        policy="lrf",
    )
    for m, done in zip("pfqgh", (1, 2, 1, 2, 2), strict=True):
        for hop in s.pending_hops(m)[:done]:
            s.replay(hop)
    pinned_to = s.owner(s.pending_hops("p")[0])
    assert s.owner(s.pending_hops("q")[0]) == pinned_to
    running = {a.worker: a.hop.model_id for a in s.assign()}
    assert running[pinned_to] in "pq" and running[1 - pinned_to] in "fgh"
    queued = {a.worker: a.hop for a in s.assign_next() + s.assign_next()}
    assert queued[pinned_to].model_id in "pq" and queued[pinned_to].kind == "train"
    # The other worker's top candidates could also validate on the first worker, but that
    # has a hop queued already, so one of them is queued behind the other worker's val.
    assert queued[1 - pinned_to].model_id in "fgh" and queued[1 - pinned_to].kind == "val"


@pytest.mark.parametrize("policy", ["fixed", "lrf"])
def test_under_fixed_a_model_that_validates_next_goes_before_one_that_trains(
    policy: str,
) -> None:
    # NOTE [ Validation first ]: "late" has all 8 hops left, "v1" and "v2" have trained
    # epoch 0 and validate next (6 left). "fixed" validates both at once and trains "late"
    # afterwards; "lrf" ranks by remaining work alone and starts "late" on its worker.
    s = Scheduler(
        ["late", "v1", "v2"],
        num_epochs=2,
        train_owner={0: 0, 1: 1},
        val_owner={0: 0, 1: 1},
        policy=policy,
    )
    for m in ("v1", "v2"):
        for hop in s.pending_hops(m)[:2]:
            s.replay(hop)
    started = sorted((a.hop.model_id, a.hop.kind) for a in s.assign())
    if policy == "fixed":
        assert started == [("v1", "val"), ("v2", "val")]
    else:
        assert started[0] == ("late", "train") and started[1][1] == "val"


def test_complete_of_a_queued_hop_names_the_hop_ahead_of_it() -> None:
    s = make(4, 2, num_epochs=1)
    s.assign()
    q = s.assign_next()[0]
    with pytest.raises(ValueError, match=r"queued behind .* complete the running hop first"):
        s.complete(q.hop)


def test_losing_or_dropping_a_worker_s_hops_frees_them_in_order() -> None:
    s = make(4, 1, num_epochs=1, val_per_worker=0)
    (a,) = s.assign()
    (q,) = s.assign_next()
    s.requeue(q.hop)  # the queued hop alone: the running one goes on
    assert s.queued == [] and s.running == [a]
    (q,) = s.assign_next()
    s.requeue(a.hop)  # the running one: the queued one starts
    assert s.running == [q] and s.queued == []
    (r,) = s.assign_next()
    s.drop_model(r.hop.model_id)  # a dropped model's queued hop is forgotten
    assert s.queued == [] and s.running == [q] and s.remaining_hops(r.hop.model_id) == 0
    (r,) = s.assign_next()
    s.drop_model(q.hop.model_id)  # a dropped running model: the queued hop starts
    assert s.running == [r] and s.queued == []
    s.complete(r.hop)
    while not s.done:  # the two models left (the first requeued) train and finish
        (x,) = s.assign()
        s.complete(x.hop)
    assert s.remaining_hops() == 0 and s.idle_workers() == [0]


def test_fixed_orders_form_a_latin_square() -> None:
    s = make(4, 4, val_per_worker=0, num_epochs=2, policy="fixed", seed=3)
    orders = {m: [h.partition for h in s.pending_hops(m) if h.epoch == 0] for m in s.model_ids}
    for k in range(4):  # at each step the models stand on different partitions
        assert len({o[k] for o in orders.values()}) == 4
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders.values())
    # The first assign starts every model on its own partition, without contention.
    assert {a.hop.partition for a in s.assign()} == {o[0] for o in orders.values()}
    # Epochs get fresh orders (seeded), and other seeds other orders.
    later = [h.partition for h in s.pending_hops("m0") if h.epoch == 1]
    other = make(4, 4, val_per_worker=0, policy="fixed", seed=4).pending_hops("m0")
    assert sorted(later) == [0, 1, 2, 3]
    assert any(
        [h.partition for h in make(4, 4, policy="fixed", seed=x).pending_hops("m0")]
        != [h.partition for h in other]
        for x in range(5)
    )


# -- resume ----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("k", [0, 1, 7, 30, 48])
def test_replay_then_continue_completes_every_hop_exactly_once(policy: str, k: int) -> None:
    scenario = make_scenario(num_workers=3, num_models=4, seed=5)
    first = simulate(scenario.scheduler(policy), scenario.duration).schedule
    assert len(first) == 48
    resumed = scenario.scheduler(policy, seed=99)  # any seed continues; fixed orders need the same
    if policy == "fixed":
        resumed = scenario.scheduler(policy)
    trace = Trace.of(scenario.scheduler(policy), policy)
    trace.completed = [(item.worker, item.hop) for item in first[:k]]
    trace.ends = [e for item in first[:k] for e in resumed.replay(item.hop)]
    assert resumed.remaining_hops() == 48 - k
    drive(resumed, trace, random_durations(k))
    check_final(resumed, trace)
    hops = [h for _, h in trace.completed]
    assert sorted(hops) == sorted(trace.planned) and len(hops) == len(set(hops))


def test_replay_rejects_hops_out_of_order_and_after_assign() -> None:
    s = make(2, 2, num_epochs=2, policy="lrf")
    with pytest.raises(ValueError, match=r"not runnable.*epoch 0"):
        s.replay(Hop("m0", 1, "train", 0))  # next epoch first
    with pytest.raises(ValueError, match="not runnable"):
        s.replay(Hop("m0", 0, "val", 0))  # val before train
    s.replay(Hop("m0", 0, "train", 1))
    with pytest.raises(ValueError, match="not runnable"):
        s.replay(Hop("m0", 0, "train", 1))  # twice
    with pytest.raises(ValueError, match="unknown model id"):
        s.replay(Hop("zz", 0, "train", 0))
    fixed = make(2, 2, policy="fixed")
    (nxt, after) = [h for h in fixed.pending_hops("m0") if h.kind == "train"][:2]
    with pytest.raises(ValueError, match="policy 'fixed'"):
        fixed.replay(after)  # out of the fixed order
    fixed.replay(nxt)
    s.assign()
    with pytest.raises(ValueError, match="after assign"):
        s.replay(Hop("m1", 0, "train", 0))


# -- determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_same_arguments_and_calls_give_the_same_assignments(policy: str) -> None:
    scenario = make_scenario(num_workers=4, num_models=9, straggler=2.0, seed=7)

    def run() -> Trace:
        s = scenario.scheduler(policy)
        return drive(s, Trace.of(s, policy), scenario.duration, fail_p=0.1, drop_p=0.02)

    a, b = run(), run()
    assert a == b


@pytest.mark.parametrize("policy", ["lrf", "random"])
def test_seed_breaks_ties_of_dynamic_policies(policy: str) -> None:
    sc = make_scenario(num_workers=4, num_models=9, seed=7)
    runs = {
        tuple(
            x.hop
            for x in simulate(sc.scheduler(policy, seed=s, use_cost=False), sc.duration).schedule
        )
        for s in range(4)
    }
    assert len(runs) > 1


def test_module_is_pure_and_its_examples_run() -> None:
    """STYLE rule 3, for every module of the scheduler package."""
    folder = Path(scheduler_module.__file__).parent
    names = sorted(p.stem for p in folder.glob("_*.py") if p.stem != "__init__")
    assert {"_policies", "_progress", "_scheduler"} <= set(names)
    for module in [scheduler_module] + [
        importlib.import_module(f"cerebro.scheduler.{n}") for n in names
    ]:
        assert module.__file__ is not None
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {
            a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import)
            for a in n.names
        }
        imported |= {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module
        }
        assert not imported & {"os", "time", "torch", "ray", "numpy", "threading"}, module
        calls = {
            n.func.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name)
            and n.func.value.id == "random"
        }
        assert calls <= {"Random"}, f"global random functions used in {module}: {calls}"
        assert doctest.testmod(module).failed == 0


# -- policies as objects ---------------------------------------------------------------------


class LowestIndexFirst(Policy):
    """A policy of one's own: the earliest model first, idle workers in id order, no rng."""

    name = "lowest-index"
    augments = False

    def worker_order(self, workers: list[int], board: Board) -> list[int]:
        return workers

    def top(self, cands: Mapping[int, None], board: Board) -> list[int]:
        return [min(cands)]


class BackwardWalks(Policy):
    """Fixed walks of one's own: each epoch trains from the last partition down."""

    name = "backward"

    def train_order(self, index: int, epoch: int, train_owner: Mapping[int, int]) -> list[int]:
        return sorted(train_owner, reverse=True)

    def runnable_train(self, todo: list[int]) -> list[int]:
        return todo[:1]


def test_a_policy_object_plugs_in_and_decides() -> None:
    def fresh(policy: Policy, seed: int = 0) -> Scheduler:
        owner = {p: p % 2 for p in range(4)}
        ids = [f"m{i}" for i in range(3)]
        return Scheduler(
            ids, num_epochs=2, train_owner=owner, val_owner=owner, policy=policy, seed=seed
        )

    s = fresh(LowestIndexFirst())
    assert [(a.worker, a.hop.model_id) for a in s.assign()] == [(0, "m0"), (1, "m1")]
    # It draws nothing from the scheduler's rng, so the seed changes nothing.
    runs = {
        tuple(
            x.hop for x in simulate(fresh(LowestIndexFirst(), seed), random_durations(2)).schedule
        )
        for seed in range(3)
    }
    assert len(runs) == 1
    s = fresh(LowestIndexFirst())
    check_final(s, drive(s, Trace.of(s, "lrf"), random_durations(4), fail_p=0.1, lookahead=True))
    # The scheduler's rules hold for walks of one's own, which every model follows.
    s = fresh(BackwardWalks())
    trace = drive(s, Trace(all_hops(s), fixed=True), random_durations(1), lookahead=True)
    check_final(s, trace)
    for m, e in [(m, e) for m in s.model_ids for e in range(2)]:
        train = [h.partition for h in trace.sequence(m) if (h.kind, h.epoch) == ("train", e)]
        assert train == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="policy 'backward'"):
        fresh(BackwardWalks()).replay(Hop("m0", 0, "train", 0))  # out of its order


@pytest.mark.parametrize(
    ("name", "policy"),
    [
        ("fixed", lambda: FixedOrder(seed=5)),
        ("lrf", MostWorkFirst),
        ("random", RandomGreedy),
    ],
)
def test_a_policy_s_name_stands_for_its_object(name: str, policy: Callable[[], Policy]) -> None:
    assert POLICIES == ("fixed", "lrf", "random")
    sc = make_scenario(num_workers=3, num_models=7, train_per_worker=2, straggler=2.0, seed=5)
    by_name = simulate(sc.scheduler(name), sc.duration, lookahead=True).schedule
    s = Scheduler(
        sc.model_ids,
        num_epochs=sc.num_epochs,
        train_owner=sc.train_owner,
        val_owner=sc.val_owner,
        policy=policy(),
        seed=sc.seed,
        cost=sc.cost,
    )
    assert simulate(s, sc.duration, lookahead=True).schedule == by_name


# -- properties over random runs -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    num_models=st.integers(1, 12),
    num_workers=st.integers(1, 6),
    train_per_worker=st.integers(1, 2),
    val_per_worker=st.integers(0, 2),
    num_epochs=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    fail_p=st.sampled_from([0.0, 0.05, 0.2]),
    drop_p=st.sampled_from([0.0, 0.0, 0.02]),
    lookahead=st.booleans(),
)
def test_every_rule_holds_under_random_durations_failures_and_drops(
    policy: str,
    num_models: int,
    num_workers: int,
    train_per_worker: int,
    val_per_worker: int,
    num_epochs: int,
    seed: int,
    fail_p: float,
    drop_p: float,
    lookahead: bool,
) -> None:
    s = make(
        num_models,
        num_workers,
        train_per_worker=train_per_worker,
        val_per_worker=val_per_worker,
        num_epochs=num_epochs,
        policy=policy,
        seed=seed,
    )
    assert s.total_hops() == s.remaining_hops() == len(all_hops(s))
    trace = Trace.of(s, policy)
    drive(
        s,
        trace,
        random_durations(seed),
        rng=random.Random(seed),
        fail_p=fail_p,
        drop_p=drop_p,
        lookahead=lookahead,
    )
    check_final(s, trace)


@settings(max_examples=30, deadline=None)
@given(
    num_models=st.integers(1, 12),
    num_workers=st.integers(1, 6),
    train_per_worker=st.integers(1, 2),
    val_per_worker=st.integers(0, 2),
    num_epochs=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    fail_p=st.sampled_from([0.0, 0.1]),
)
def test_fixed_gives_each_model_the_same_hops_whatever_the_durations(
    num_models: int,
    num_workers: int,
    train_per_worker: int,
    val_per_worker: int,
    num_epochs: int,
    seed: int,
    fail_p: float,
) -> None:
    def run(duration_seed: int, lookahead: bool) -> Trace:
        s = make(
            num_models,
            num_workers,
            train_per_worker=train_per_worker,
            val_per_worker=val_per_worker,
            num_epochs=num_epochs,
            policy="fixed",
            seed=seed,
        )
        trace = Trace.of(s, "fixed")
        drive(
            s,
            trace,
            random_durations(duration_seed),
            rng=random.Random(duration_seed),
            fail_p=fail_p,
            lookahead=lookahead,
        )
        check_final(s, trace)
        return trace

    # Queued hops (NOTE [ Next hops ]) change when hops start, not which train order.
    a, b, c = run(seed, False), run(seed + 1, False), run(seed + 2, True)
    for m in [f"m{i}" for i in range(num_models)]:
        train_a = [h for h in a.sequence(m) if h.kind == "train"]
        for other in (b, c):
            # the training result depends on this order only
            assert train_a == [h for h in other.sequence(m) if h.kind == "train"]
            # Val hops do not change the model; their order within an epoch is free.
            assert sorted(a.sequence(m)) == sorted(other.sequence(m))


# -- models that join a running fit (a search asks for them) -----------------------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("lookahead", [False, True])
def test_models_that_join_a_running_fit_get_every_hop_once(policy: str, lookahead: bool) -> None:
    s = make(2, 3, train_per_worker=2, num_epochs=2, policy=policy, seed=3)
    trace = Trace.of(s, policy)
    joins = {1: ["j0"], 4: ["j1", "j2"], 20: ["j3"]}
    drive(s, trace, random_durations(5), rng=random.Random(2), lookahead=lookahead, joins=joins)
    check_final(s, trace)
    assert s.model_ids == ["m0", "m1", "j0", "j1", "j2", "j3"]
    assert s.total_hops() == 6 * 2 * (6 + 3)


def test_a_joining_model_runs_at_once_on_an_idle_worker() -> None:
    empty = make(0, 2)
    assert empty.done and empty.live == 0 and empty.assign() == []
    empty.add_model("first")
    assert not empty.done and empty.live == 1 and len(empty.assign()) == 1
    s = make(1, 2, num_epochs=1)
    (first,) = s.assign()
    assert s.idle_workers() == [1 - first.worker]
    s.add_model("new")
    assert [a.hop.model_id for a in s.assign()] == ["new"]
    assert not s.done
    with pytest.raises(ParamsError, match="duplicate model id 'new'"):
        s.add_model("new")
    with pytest.raises(TypeError, match="str"):
        s.add_model(3)  # type: ignore[arg-type]


def test_under_fixed_a_joining_model_changes_no_earlier_model_s_hops() -> None:
    """NOTE [ Models that join ]: the models already there train in the same order (val
    order is free under every policy), and a joining model trains in the order it would
    have had from the start."""

    def run(num_models: int, joins: dict[int, list[str]]) -> Trace:
        s = make(num_models, 2, train_per_worker=3, num_epochs=3, policy="fixed", seed=7)
        return drive(s, Trace.of(s, "fixed"), random_durations(1), joins=joins)

    def train(t: Trace, m: str) -> list[tuple[int, int]]:
        return [(h.epoch, h.partition) for h in t.sequence(m) if h.kind == "train"]

    alone = run(3, {})
    joined = run(3, {2: ["a", "b"], 9: ["c"]})
    for m in ("m0", "m1", "m2"):
        assert train(joined, m) == train(alone, m)
    there = run(6, {})
    for new, old in (("a", "m3"), ("b", "m4"), ("c", "m5")):
        assert train(joined, new) == train(there, old)
