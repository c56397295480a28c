"""Early-stopping rules as pure logic: each decision checked against one computed by hand."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import optuna
import pandas as pd
import pytest

from cerebro._settings import FitSettings
from cerebro.errors import ParamsError
from cerebro.scheduler import Scheduler
from cerebro.stopping import (
    ASHA,
    Hyperband,
    MedianStopping,
    OptunaPruner,
    SuccessiveHalving,
    bracket_sizes,
    parse_early_stopping,
    rung_epochs,
)

IDS = [f"m{i:03d}" for i in range(9)]


def test_rungs_and_bracket_sizes() -> None:
    assert rung_epochs(1, 3, 9) == [1, 3]
    assert rung_epochs(1, 3, 10) == [1, 3, 9]
    assert rung_epochs(2, 2, 9) == [2, 4, 8]
    # Hyperband's n_s for 2 rungs, eta 3: 9, 5, 3 (Li et al.), scaled to the models
    assert bracket_sizes(17, 3, 3) == [9, 5, 3]
    assert bracket_sizes(32, 3, 3) == [17, 9, 6]
    assert bracket_sizes(1, 2, 3) == [1, 0]
    assert sum(bracket_sizes(100, 4, 2)) == 100


def _halve(values: dict[str, float], keep: int, mode: str = "min") -> set[str]:
    """The best ``keep`` by hand; ties to the model asked first."""
    sign = 1 if mode == "min" else -1
    return set(sorted(values, key=lambda m: (sign * values[m], IDS.index(m)))[:keep])


@pytest.mark.parametrize("mode", ["min", "max"])
def test_sha_survivors_are_the_best_third_whatever_the_report_order(mode: str) -> None:
    rng = random.Random(7)
    epoch1 = {m: round(rng.random(), 3) for m in IDS}
    epoch3 = {m: round(rng.random(), 3) for m in IDS}
    first = _halve(epoch1, 3, mode)  # 9 // 3
    second = _halve({m: epoch3[m] for m in first}, 1, mode)  # max(1, 3 // 3)
    for trial in range(20):
        order = IDS[:]
        random.Random(trial).shuffle(order)
        s = SuccessiveHalving().make(num_epochs=9, num_models=9, mode=mode)
        for m in IDS:
            s.add(m)
        decided: dict[str, str] = {}
        for i, m in enumerate(order):
            answer = s.report(m, 1, epoch1[m])
            assert answer == ("wait" if i < 8 else ("continue" if m in first else "stop"))
            decided |= dict(s.resolved())
        assert {m for m, d in decided.items() if d == "continue"} == first - {order[-1]}
        assert {m for m, d in decided.items() if d == "stop"} == set(IDS) - first - {order[-1]}
        survivors = sorted(first)
        random.Random(trial).shuffle(survivors)
        for m in survivors:
            assert s.report(m, 2, 0.5) == "continue"  # not a rung
        answers = {m: s.report(m, 3, epoch3[m]) for m in survivors}
        answers |= dict(s.resolved())
        assert {m for m, d in answers.items() if d == "continue"} == second


def test_sha_does_not_wait_for_a_failed_model_nor_for_models_never_asked() -> None:
    s = SuccessiveHalving().make(num_epochs=9, num_models=9, mode="min")
    for m in IDS[:6]:  # the search stops asking after 6
        s.add(m)
    for i, m in enumerate(IDS[:5]):
        assert s.report(m, 1, float(i)) == "wait"
    s.end(IDS[5], "failed")  # m005 fails in its first epoch
    assert s.resolved() == []  # 3 of 9 not asked yet: the rung is not complete
    s.no_more_models()
    # 5 reported: the best 5 // 3 = 1 continues, in the fixed order of the ranking
    assert s.resolved() == [("m000", "continue")] + [(m, "stop") for m in IDS[1:5]]


def test_nan_ranks_last_and_ties_go_to_the_model_asked_first() -> None:
    s = SuccessiveHalving(reduction_factor=2).make(num_epochs=3, num_models=4, mode="max")
    for m in IDS[:4]:
        s.add(m)
    for m, v in zip(IDS[:4], [math.nan, 0.5, 0.9, 0.9], strict=True):
        s.report(m, 1, v)
    assert dict(s.resolved()) | {"m003": "stop"} == {
        "m000": "stop", "m001": "stop", "m002": "continue", "m003": "stop"
    }  # fmt: skip


def test_hyperband_brackets_stop_from_later_and_later_rungs() -> None:
    ids = [f"m{i:03d}" for i in range(17)]
    s = Hyperband().make(num_epochs=9, num_models=17, mode="min")
    for m in ids:
        s.add(m)
    # bracket 0: m000-m008, rungs 1 and 3; bracket 1: m009-m013, rung 3; bracket 2: none
    answers = {m: s.report(m, 1, float(i)) for i, m in enumerate(ids)}
    assert all(answers[m] == "wait" for m in ids[:8])
    assert answers["m008"] == "stop" and all(answers[m] == "continue" for m in ids[9:])
    assert dict(s.resolved()) == {m: "continue" if m < "m003" else "stop" for m in ids[:8]}
    answers = {m: s.report(m, 3, -float(i)) for i, m in enumerate(ids[9:], 9)}
    # bracket 1 keeps max(1, 5 // 3) = 1: the lowest value, m013
    assert answers["m013"] == "continue" or dict(s.resolved()).get("m013") == "continue"
    assert all(answers[m] == "continue" for m in ids[14:])  # bracket 2 never stops


def _asha_by_hand(values: list[tuple[str, float]], rf: int) -> dict[str, str]:
    """Optuna's SuccessiveHalvingPruner rule for one rung, mode min: a model continues if
    its value is among the best ``len(seen) // rf`` of the values seen there so far
    (itself included), or, while fewer than ``rf`` were seen, if it is the best."""
    seen: list[float] = []
    out = {}
    for m, v in values:
        seen.append(v)
        k = max(len(seen) // rf, 1)
        out[m] = "continue" if v <= sorted(seen)[k - 1] else "stop"
    return out


def test_asha_decides_at_once_from_what_the_rung_has_seen() -> None:
    rng = random.Random(3)
    values = [(m, round(rng.random(), 4)) for m in IDS]
    s = ASHA().make(num_epochs=9, num_models=9, mode="min")
    for m in IDS:
        s.add(m)
    got = {m: s.report(m, 1, v) for m, v in values}
    assert got == _asha_by_hand(values, 3)
    assert "wait" not in got.values()


def test_median_rule_by_hand() -> None:
    s = MedianStopping(grace_period=2, min_samples=3).make(9, 9, "min")
    rng = random.Random(5)
    history: dict[str, list[float]] = {}
    for epoch in range(1, 5):
        for m in IDS:
            if history.get(m, [None])[-1] == "stopped":
                continue
            v = round(rng.random(), 3)
            others = [h[epoch - 1] for o, h in history.items() if o != m and len(h) >= epoch]
            others = [x for x in others if x != "stopped"]
            best = min([x for x in history.get(m, []) if x != "stopped"] + [v])
            want = (
                "stop"
                if epoch >= 2 and len(others) >= 3 and best > statistics.median(others)
                else "continue"
            )
            assert s.report(m, epoch, v) == want, (m, epoch)
            history.setdefault(m, []).append(v)
            if want == "stop":
                history[m].append("stopped")


def test_any_optuna_pruner() -> None:
    rule = parse_early_stopping(optuna.pruners.ThresholdPruner(upper=0.5), num_epochs=4)
    assert isinstance(rule, OptunaPruner) and rule.to_json()["type"] == "pruner:ThresholdPruner"
    s = rule.make(4, 3, "min")
    for m in IDS[:3]:
        s.add(m)
    assert [s.report(m, 1, v) for m, v in zip(IDS[:3], [0.2, 0.7, 0.4], strict=True)] == [
        "continue", "stop", "continue"
    ]  # fmt: skip
    s.end("m001", "stopped")
    s.end("m000", "done")
    states = [t.state.name for t in s.study.trials]  # type: ignore[attr-defined]
    assert states == ["COMPLETE", "PRUNED", "RUNNING"]
    assert s.study.trials[1].value == 0.7  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "epochs", "message"),
    [
        ("bogus", 9, "early_stopping must be one of 'sha', 'hyperband', 'asha', 'median'"),
        (SuccessiveHalving(grace_period=9), 9, "grace_period=9 leaves no rung"),
        (ASHA(reduction_factor=1), 9, "reduction_factor must be at least 2"),
        (Hyperband(brackets=4), 9, "at most 3 brackets"),
        (MedianStopping(grace_period=3), 3, "median: grace_period=3 leaves no rung"),
    ],
)
def test_bad_rules_say_what_to_change(value: object, epochs: int, message: str) -> None:
    with pytest.raises(ParamsError, match=message.replace("(", r"\(")):
        parse_early_stopping(value, epochs)


def test_rule_type_errors() -> None:
    with pytest.raises(TypeError, match="grace_period must be an int"):
        parse_early_stopping(ASHA(grace_period=1.5), 9)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="optuna.pruners.BasePruner or None, got dict"):
        parse_early_stopping({"type": "asha"}, 9)


def test_deterministic_search_refuses_early_stopping() -> None:
    with pytest.raises(ParamsError, match="search='random'.*early_stopping='sha'"):
        FitSettings.check(
            {"lr": [0.1], "batch_size": [8]}, 3, search="tpe", num_models=4,
            deterministic=True, early_stopping="sha",
        )  # fmt: skip


def test_rules_round_trip_through_the_record() -> None:
    from cerebro.stopping._config import from_json

    for rule in (SuccessiveHalving(2, 4), Hyperband(brackets=2), ASHA(), MedianStopping(1, 5)):
        assert from_json(rule.to_json()) == rule


def test_scheduler_paused_model_waits_while_the_others_train() -> None:
    s = Scheduler(["a", "b"], num_epochs=2, train_owner={0: 0, 1: 1}, val_owner={})
    for _ in range(2):  # both models' first epoch: two rounds of two hops
        for x in s.assign():
            s.complete(x.hop)
    assert [s.epoch_of(m) for m in "ab"] == [1, 1]
    s.pause("a")
    assert s.paused == 1 and s.live == 2 and s.remaining_hops("a") == 2
    assert [x.hop.model_id for x in s.assign()] == ["b"]  # a's worker trains b meanwhile
    assert s.assign_next() == []  # nothing of a is queued either
    with pytest.raises(ValueError, match="only a live model between hops can wait"):
        s.pause("b")  # b runs a hop
    s.resume("a")
    assert [x.hop.model_id for x in s.assign()] == ["a"]
    s.stop_model("b")
    assert s.live == 1 and s.paused == 0 and s.remaining_hops("b") == 0


def test_the_progress_bar_says_when_models_wait_and_when_workers_idle(tmp_path: Path) -> None:
    from cerebro._bar import postfix
    from cerebro._fit_state import FitState
    from cerebro.params import ModelConfig
    from toy import ToySpec

    owners = {0: 0, 1: 1, 2: 2}
    sched = Scheduler(["m000", "m001"], num_epochs=2, train_owner=owners, val_owner={})
    configs = {m: ModelConfig(m, {"lr": 0.1}) for m in ("m000", "m001")}
    state = FitState(1, ToySpec(), configs, tmp_path, 1, 2, "continue")
    assert postfix(state, sched) == "epoch 1/2, tail: 2 models left for 3 workers"
    sched.pause("m000")
    assert postfix(state, sched) == (
        "epoch 1/2, tail: 1 model left for 3 workers, 1 waiting at a rung"
    )
    state.planned = 4  # a search that will ask two more: no tail yet
    assert postfix(state, sched) == "epoch 1/2, models 0/4, 1 waiting at a rung"


def test_a_model_stopped_while_it_waits_leaves_the_scheduler() -> None:
    s = Scheduler(["a", "b"], num_epochs=3, train_owner={0: 0}, val_owner={})
    s.pause("a")
    s.stop_model("a")
    assert (s.paused, s.live, s.remaining_hops("a")) == (0, 1, 0)
    assert [x.hop.model_id for x in s.assign()] == ["b"]
    with pytest.raises(ValueError, match="only a live model"):
        s.pause("a")


def test_status_names_the_models_that_wait_at_a_rung() -> None:
    from cerebro._early_stopping import waiting

    log = [
        {"event": "report", "model_id": "m000", "epoch": 0, "decision": "continue"},
        {"event": "report", "model_id": "m001", "epoch": 0, "decision": "wait"},
        {"event": "report", "model_id": "m000", "epoch": 2, "decision": "wait"},
        {"event": "report", "model_id": "m002", "epoch": 0, "decision": "stop"},
        {"event": "no_more", "model_id": None, "epoch": None, "decision": None},
    ]
    assert waiting(log) == {"m000", "m001"}


def test_a_pruner_fit_cannot_resume_without_its_saved_pruner(tmp_path: Path) -> None:
    rule = parse_early_stopping(optuna.pruners.ThresholdPruner(upper=0.5), num_epochs=3)
    settings = FitSettings.check({"lr": [0.1], "batch_size": [8]}, 3, early_stopping=rule)
    record = settings.to_json()
    with pytest.raises(ParamsError, match="holds no saved pruner"):
        FitSettings.from_json(record, tmp_path / "search")
    settings.make_stopper(tmp_path / "search")  # a fit's start keeps it
    back = FitSettings.from_json(record, tmp_path / "search")
    assert back.early_stopping == settings.early_stopping


def test_an_unknown_walk_is_refused() -> None:
    with pytest.raises(ParamsError, match="walk must be one of"):
        Scheduler(["a"], num_epochs=1, train_owner={0: 0}, val_owner={}, walk="zigzag")


def test_best_is_never_a_stopped_model_unless_asked(tmp_path: Path) -> None:
    from cerebro.catalog import Catalog
    from cerebro.result import FitResult

    path = tmp_path / "catalog.sqlite"
    cat = Catalog(path)
    fits = []
    for second in ("done", "stopped"):
        fit = cat.create_fit(json.dumps({"early_stopping": {"type": "sha"}, "n": second}), {}, [])
        cat.add_models(fit, [("m000", {"lr": 0.1}), ("m001", {"lr": 0.2})])
        cat.epoch_done(fit, "m000", 0, {"val": {"loss": 0.1}}, None)
        cat.epoch_done(fit, "m001", 0, {"val": {"loss": 0.5}}, None)
        cat.set_model_status(fit, "m000", "stopped")
        cat.set_model_status(fit, "m001", second)
        fits.append(fit)
    cat.close()
    assert FitResult(path, fits[0]).best["model_id"] == "m001"  # the better m000 stopped
    everyone = FitResult(path, fits[0], include_stopped=True)
    assert everyone.best["model_id"] == "m000"
    table = everyone.table.set_index("model_id")
    assert table.loc["m000", "stopped_epoch"] == 1 and pd.isna(table.loc["m001", "stopped_epoch"])
    assert table.attrs["best_among"] == "every model"
    with pytest.raises(ValueError, match="early stopping stopped every model that has a value"):
        _ = FitResult(path, fits[1]).best  # every model stopped
