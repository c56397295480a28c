"""Sanity of the MOP simulator: bounds, a trivially balanced case, stragglers, determinism."""

from __future__ import annotations

import ast
import doctest
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cerebro.simulate as simulate_module
from cerebro.scheduler import POLICIES, Hop, Scheduler
from cerebro.simulate import lower_bound, make_scenario, simulate


def unit(hop: Hop, worker: int) -> float:
    return 1.0


@pytest.mark.parametrize("policy", ["fixed", "lrf"])
@pytest.mark.parametrize("n", [1, 3, 4, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_case_meets_the_lower_bound(policy: str, n: int, seed: int) -> None:
    # As many models as workers, every hop 1: a perfect rotation exists and is found.
    s = Scheduler(
        [f"m{i}" for i in range(n)],
        num_epochs=2,
        train_owner={p: p for p in range(n)},
        val_owner={p: p for p in range(n)},
        policy=policy,
        seed=seed,
    )
    result = simulate(s, unit)
    assert result.lower_bound == 4.0 * n  # n models x 2 epochs x 2n hops / n workers
    assert result.makespan == 4.0 * n and result.ratio == 1.0
    assert result.busy == dict.fromkeys(range(n), 4.0 * n)
    assert len(result.schedule) == 4 * n * n and s.done


def test_random_greedy_is_not_always_optimal_but_bounded() -> None:
    # The original's randomized greedy may leave a worker idle that a rotation would use.
    ratios = []
    for seed in range(5):
        ids = [f"m{i}" for i in range(4)]
        s = Scheduler(
            ids,
            num_epochs=2,
            train_owner={p: p for p in range(4)},
            val_owner={p: p for p in range(4)},
            policy="random",
            seed=seed,
        )
        ratios.append(simulate(s, unit).ratio)
    assert all(1.0 <= r <= 2.0 for r in ratios) and max(ratios) > 1.0


def test_lower_bound_takes_the_largest_model_and_the_busiest_worker() -> None:
    s = Scheduler(["big", "small"], num_epochs=1, train_owner={0: 0, 1: 1}, val_owner={})
    assert lower_bound(s, lambda h, w: 10.0 if h.model_id == "big" else 1.0) == 20.0
    assert lower_bound(s, lambda h, w: 10.0 if w == 1 else 1.0) == 20.0
    assert lower_bound(s, unit) == 2.0


@pytest.mark.parametrize(("latency", "lookahead"), [(0.0, False), (0.3, False), (0.3, True)])
def test_schedule_is_consistent(latency: float, lookahead: bool) -> None:
    sc = make_scenario(num_workers=3, num_models=5, train_per_worker=2, straggler=3.0, seed=2)
    result = simulate(sc.scheduler("lrf"), sc.duration, latency=latency, lookahead=lookahead)
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for item in result.schedule:
        assert item.end - item.start == pytest.approx(sc.duration(item.hop, item.worker))
        by_worker.setdefault(item.worker, []).append((item.start, item.end))
    for spans in by_worker.values():  # a worker runs one hop at a time
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert result.makespan == max(item.end for item in result.schedule)
    assert sum(result.busy.values()) == pytest.approx(
        sum(i.end - i.start for i in result.schedule)
    )


def test_next_hops_hide_the_round_trip_that_plain_assignment_waits_for() -> None:
    sc = make_scenario(num_workers=4, num_models=16, train_per_worker=2, seed=5)
    hops = sc.scheduler("fixed").total_hops()
    base = simulate(sc.scheduler("fixed"), sc.duration)
    slow = simulate(sc.scheduler("fixed"), sc.duration, latency=0.2)
    hidden = simulate(sc.scheduler("fixed"), sc.duration, latency=0.2, lookahead=True)
    # Without next hops every hop waits for its task: at least hops/workers round trips.
    assert slow.makespan >= base.makespan + 0.2 * hops / 4 * 0.9
    assert hidden.makespan < base.makespan + 0.2 * hops / 4 * 0.5
    # The same hops ran, in the same train order per model ("fixed").
    for m in sc.model_ids:
        order = [i.hop for i in base.schedule if i.hop.model_id == m and i.hop.kind == "train"]
        assert order == [
            i.hop for i in hidden.schedule if i.hop.model_id == m and i.hop.kind == "train"
        ]


def test_straggler_slows_its_worker_and_raises_the_bound() -> None:
    base = make_scenario(num_workers=4, num_models=16, seed=3)
    slow = make_scenario(num_workers=4, num_models=16, straggler=3.0, seed=3)
    (w,) = [w for w, f in slow.slowdown.items() if f == 3.0]
    hop = Hop("m000", 0, "train", 0)
    assert slow.duration(hop, w) == pytest.approx(3 * base.duration(hop, w))
    assert simulate(slow.scheduler("lrf"), slow.duration).lower_bound > lower_bound(
        base.scheduler("lrf"), base.duration
    )


def test_scenarios_are_seeded_and_checked() -> None:
    a, b = (
        make_scenario(num_workers=5, num_models=7, seed=4),
        make_scenario(num_workers=5, num_models=7, seed=4),
    )
    assert a == b and simulate(a.scheduler("random"), a.duration) == simulate(
        b.scheduler("random"), b.duration
    )
    assert all(1.0 <= v <= 10.0 for v in a.size.values())
    with pytest.raises(ValueError, match="num_workers=0"):
        make_scenario(num_workers=0, num_models=1)
    with pytest.raises(ValueError, match="0.5"):
        make_scenario(num_workers=1, num_models=1, straggler=0.5)


def test_module_is_pure_and_its_examples_run() -> None:
    tree = ast.parse(Path(simulate_module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"os", "time", "torch", "ray"}
    assert doctest.testmod(simulate_module).failed == 0


@settings(max_examples=25, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    num_workers=st.integers(1, 6),
    num_models=st.integers(1, 12),
    train_per_worker=st.integers(1, 2),
    val_per_worker=st.integers(0, 2),
    straggler=st.sampled_from([1.0, 2.0]),
    seed=st.integers(0, 1000),
)
def test_makespan_is_between_the_lower_bound_and_the_serial_time(
    policy: str,
    num_workers: int,
    num_models: int,
    train_per_worker: int,
    val_per_worker: int,
    straggler: float,
    seed: int,
) -> None:
    sc = make_scenario(
        num_workers=num_workers,
        num_models=num_models,
        train_per_worker=train_per_worker,
        val_per_worker=val_per_worker,
        straggler=straggler,
        seed=seed,
    )
    s = sc.scheduler(policy)
    total = s.total_hops()
    result = simulate(s, sc.duration)
    serial = sum(i.end - i.start for i in result.schedule)
    assert len(result.schedule) == total
    assert result.lower_bound - 1e-9 <= result.makespan <= serial + 1e-9
