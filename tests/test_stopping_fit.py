"""Early stopping on real workers: decisions against ones computed by hand from the
recorded metrics, the same survivors whatever the timing and after a driver SIGKILL, and
stopped models told to Optuna as pruned with their last value."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from cerebro import Experiment
from cerebro.errors import ParamsError
from cerebro.search import choice, loguniform
from toy import SlowSpec, ToySpec, computed, kill_driver_after

GRID = {"lr": [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 2.0, 4.0, 8.0], "batch_size": [16]}
SHA = {"num_epochs": 4, "early_stopping": "sha", "objective": "val_acc", "mode": "max"}


@pytest.fixture(scope="module")
def exp(tmp_path_factory: pytest.TempPathFactory, toy_data: dict[str, str]) -> Experiment:
    """One warm pair of workers for every fit of the module (each fit overwrites the last)."""
    out = tmp_path_factory.mktemp("stopping") / "run"
    with Experiment(dict(toy_data, output_dir=str(out)), workers=2, verbose=False) as e:
        yield e


def _values(result: Any, epoch: int, objective: str = "val_acc") -> dict[str, float]:
    """Each model's objective at ``epoch`` (from 1), from the result's history."""
    h = result.history
    split, name = objective.split("_", 1)
    rows = h[(h.epoch == epoch) & (h.split == split) & (h.metric == name)]
    return dict(zip(rows.model_id, rows.value, strict=True))


def _best(values: dict[str, float], keep: int) -> set[str]:
    """The ``keep`` highest, ties to the model asked first (the lower id)."""
    return set(sorted(values, key=lambda m: (-values[m], m))[:keep])


def _outcome(result: Any) -> dict[str, tuple[str, int]]:
    t = result.table
    return dict(zip(t.model_id, zip(t.status, t.epochs, strict=True), strict=True))


def test_sha_on_a_grid_keeps_the_best_third_at_each_rung(exp: Experiment) -> None:
    result = exp.run_fit(ToySpec(), GRID, overwrite=True, **SHA)
    # rungs at epochs 1 and 3 (grace 1, factor 3, 4 epochs): 9 models -> 3 -> 1
    first = _best(_values(result, 1), 3)
    last = _best({m: v for m, v in _values(result, 3).items() if m in first}, 1)
    t = result.table.set_index("model_id")
    assert set(t.index[t.epochs > 1]) == first
    assert set(t.index[t.status == "done"]) == last and set(t.epochs[list(last)]) == {4}
    assert set(t.epochs[list(first - last)]) == {3}
    assert set(t.status[t.index != next(iter(last))]) == {"stopped"}
    assert list(t.stopped_epoch.dropna()) == [
        1 if m not in first else 3 for m in t.index if m not in last
    ]
    # the best is the model that trained to the end, as the table says
    assert result.best["model_id"] in last
    assert result.table.attrs["best_among"] == "models early stopping did not stop"
    everyone = type(result)(result.catalog_path, result.fit_id, include_stopped=True)
    assert everyone.best["value"] >= result.best["value"]
    # a stopped model keeps its checkpoint: it loads, tests and predicts like any model
    stopped = sorted(first - last)[0]
    assert set(result.load_model(stopped)) == {"model", "optimizer"}
    assert set(exp.run_test(ToySpec(), model_tag=stopped)) == {"test_loss", "test_acc"}
    assert exp.run_predict(ToySpec(), model_tag=stopped).name == f"{stopped}.csv"


class NoisySpec(ToySpec):
    """Hops of random length (from the OS, not a seed): models reach rungs in any order."""

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        time.sleep(int.from_bytes(os.urandom(1), "little") / 255 * 0.004)
        return super().train(model_object, minibatch, hyperparams, device)


def test_sha_survivors_and_weights_do_not_depend_on_timing(exp: Experiment) -> None:
    # "tag" changes nothing the spec computes, only which fit this is: the second call
    # trains afresh instead of returning the first one's finished fit
    first = exp.run_fit(NoisySpec(), GRID | {"tag": [0]}, overwrite=True, **SHA)
    expected, outcome = computed(exp.output_dir / "catalog.sqlite"), _outcome(first)
    reports = _report_order(exp.output_dir)
    again = exp.run_fit(NoisySpec(), GRID | {"tag": [1]}, overwrite=True, **SHA)
    assert _outcome(again) == outcome
    assert computed(exp.output_dir / "catalog.sqlite") == expected  # every hop, bit for bit
    assert sorted(_report_order(exp.output_dir)) == sorted(reports)


def _report_order(run_dir: Path) -> list[tuple[str, int, str]]:
    con = sqlite3.connect(run_dir / "catalog.sqlite")
    try:
        return con.execute(
            "SELECT model_id, epoch, decision FROM stopping WHERE event='report' ORDER BY seq"
        ).fetchall()
    finally:
        con.close()


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from cerebro import Experiment
from test_stopping_fit import GRID, SHA
from toy import SlowSpec
exp = Experiment({params!r}, workers=2, verbose=False)
exp.run_fit(SlowSpec(0.002), GRID, **SHA)
"""


def test_sha_after_a_driver_sigkill_has_the_same_rungs_and_survivors(
    exp: Experiment, toy_data: dict[str, str], tmp_path: Path
) -> None:
    expected = exp.run_fit(SlowSpec(0.002), GRID, overwrite=True, **SHA)
    reference = computed(exp.output_dir / "catalog.sqlite")
    params = dict(toy_data, output_dir=str(tmp_path / "cut"))
    script = DRIVER.format(tests=str(Path(__file__).parent), params=params)
    # kill while some models wait at the first rung and others still train towards it
    kill_driver_after(script, tmp_path / "cut", hops=22)
    catalog = tmp_path / "cut" / "catalog.sqlite"
    waiting = [r for r in _report_order(tmp_path / "cut") if r[2] == "wait"]
    assert waiting, "killed before any model waited at the rung"
    resumed = Experiment.resume(tmp_path / "cut", verbose=False)
    assert _outcome(resumed) == _outcome(expected)
    assert computed(catalog) == reference


def test_random_search_with_asha_frees_slots_and_tells_optuna_pruned_values(
    exp: Experiment,
) -> None:
    space = {"lr": loguniform(1e-3, 8.0), "batch_size": choice([16, 32])}
    result = exp.run_fit(
        ToySpec(), space, num_epochs=4, search="random", num_models=8, max_live_models=2,
        early_stopping="asha", objective="val_acc", mode="max", seed=5, overwrite=True,
    )  # fmt: skip
    t = result.table.set_index("model_id")
    assert len(t) == 8 and set(t.status) <= {"done", "stopped"}
    assert "stopped" in set(t.status)
    # each ASHA decision by hand, from the reports in the order they were made
    seen: dict[int, list[float]] = {}
    for model_id, epoch, decision in _report_order(exp.output_dir):
        value = _values(result, epoch + 1)[model_id]
        if epoch + 1 not in (1, 3):
            assert decision == "continue"
            continue
        rung = seen.setdefault(epoch, [])
        rung.append(value)
        k = max(len(rung) // 3, 1)
        want = "continue" if value >= sorted(rung, reverse=True)[k - 1] else "stop"
        assert decision == want, (model_id, epoch, rung)
    # Optuna has every stopped model as pruned, valued at its last epoch
    for trial in result.study.trials:
        model_id = f"m{trial.number:03d}"
        curve = _values_per_epoch(result, model_id)
        assert trial.intermediate_values == curve
        if t.status[model_id] == "stopped":
            assert trial.state == optuna.trial.TrialState.PRUNED
            assert trial.value == curve[max(curve)]
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
    assert result.best["model_id"] in set(t.index[t.status == "done"])


def _values_per_epoch(result: Any, model_id: str) -> dict[int, float]:
    h = result.history
    rows = h[(h.model_id == model_id) & (h.split == "val") & (h.metric == "acc")]
    return dict(zip(rows.epoch, rows.value, strict=True))


def test_an_optuna_pruner_instance_resumes_from_the_run(exp: Experiment) -> None:
    pruner = optuna.pruners.ThresholdPruner(upper=0.3)
    grid = {"lr": [0.01, 0.1], "batch_size": [16]}
    result = exp.run_fit(ToySpec(), grid, num_epochs=2, early_stopping=pruner, overwrite=True)
    again = Experiment.resume(exp.output_dir, verbose=False)  # reads DIR/search/pruner.pkl
    assert _outcome(again) == _outcome(result)
    assert again.early_stopping["type"] == "pruner:ThresholdPruner"


def test_bad_early_stopping_is_refused_before_anything_runs(exp: Experiment) -> None:
    before = computed(exp.output_dir / "catalog.sqlite")
    with pytest.raises(ParamsError, match="early_stopping must be one of"):
        exp.run_fit(ToySpec(), GRID, num_epochs=4, early_stopping="halving")
    with pytest.raises(ParamsError, match="grace_period=4 leaves no rung"):
        from cerebro.stopping import ASHA

        exp.run_fit(ToySpec(), GRID, num_epochs=4, early_stopping=ASHA(grace_period=4))
    assert computed(exp.output_dir / "catalog.sqlite") == before


def test_tpe_with_sha_asks_past_models_that_wait_at_a_rung(exp: Experiment) -> None:
    """A synchronous rung waits for every model of the search, more than may be live at
    once: a waiting model holds no slot, so the search asks on and the rung completes."""
    space = {"lr": loguniform(1e-3, 8.0), "batch_size": choice([16, 32])}
    sampler = optuna.samplers.TPESampler(seed=2, n_startup_trials=3)
    result = exp.run_fit(
        ToySpec(), space, num_epochs=4, search=sampler, num_models=6, max_live_models=2,
        early_stopping="sha", objective="val_acc", mode="max", overwrite=True,
    )  # fmt: skip
    first = _best(_values(result, 1), 2)  # 6 // 3 at epoch 1, then max(1, 2 // 3) at 3
    last = _best({m: v for m, v in _values(result, 3).items() if m in first}, 1)
    assert {m for m, (s, e) in _outcome(result).items() if e > 1} == first
    assert {m for m, (s, _) in _outcome(result).items() if s == "done"} == last
    states = {t.number: t.state.name for t in result.study.trials}
    assert sorted(states.values()) == ["COMPLETE"] + ["PRUNED"] * 5


def test_hyperband_on_a_grid_by_hand(exp: Experiment) -> None:
    """9 models, rungs at 1 and 3 of 4 epochs: Hyperband's brackets get 9:5:3 parts, i.e.
    5, 3 and 1 models (m000-m004 halve at 1 and 3, m005-m007 at 3, m008 trains on)."""
    result = exp.run_fit(
        ToySpec(), GRID, num_epochs=4, early_stopping="hyperband", objective="val_acc",
        mode="max", overwrite=True,
    )  # fmt: skip
    ids = sorted(_outcome(result))
    at1, at3 = _values(result, 1), _values(result, 3)
    b0 = _best({m: at1[m] for m in ids[:5]}, 1)  # max(1, 5 // 3)
    b0_end = b0  # max(1, 1 // 3) = 1 of 1
    b1_end = _best({m: at3[m] for m in ids[5:8]}, 1)
    done = {m for m, (s, _) in _outcome(result).items() if s == "done"}
    assert done == b0_end | b1_end | {ids[8]}
    epochs = {m: e for m, (_, e) in _outcome(result).items()}
    assert all(epochs[m] == 1 for m in set(ids[:5]) - b0)
    assert all(epochs[m] == 3 for m in set(ids[5:8]) - b1_end)
