"""Searches on real workers: models asked from Optuna while the MOP fit runs, told their
ends, kept in a study Optuna reads, and resumed after a driver SIGKILL."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest

from cerebro import Experiment
from cerebro.errors import ParamsError
from cerebro.report import status_text
from cerebro.report._data import load_run
from cerebro.report._search import importances
from cerebro.search import choice, loguniform, randint
from toy import ToySpec, computed, kill_driver_after

SPACE = {
    "lr": loguniform(1e-3, 3e-1),
    "hidden": randint(4, 16),
    "batch_size": choice([16, 32]),
}


@pytest.fixture(scope="module")
def exp(tmp_path_factory: pytest.TempPathFactory, toy_data: dict[str, str]) -> Experiment:
    """One warm pair of workers for every fit of the module (each fit overwrites the last)."""
    out = tmp_path_factory.mktemp("search") / "run"
    with Experiment(dict(toy_data, output_dir=str(out)), workers=2, verbose=False) as e:
        yield e


def _hyperparams(result: Any) -> list[dict[str, Any]]:
    names = ["lr", "hidden", "batch_size"]
    return [{k: row[k] for k in names} for _, row in result.table.iterrows()]


def _hop_spans(run_dir: Path) -> dict[str, tuple[float, float]]:
    con = sqlite3.connect(run_dir / "catalog.sqlite")
    try:
        rows = con.execute(
            "SELECT model_id, MIN(start), MAX(end) FROM hops WHERE status='done' GROUP BY model_id"
        ).fetchall()
    finally:
        con.close()
    return {m: (a, b) for m, a, b in rows}


def test_random_search_asks_while_the_fit_runs_and_tells_every_end(exp: Experiment) -> None:
    result = exp.run_fit(
        ToySpec(), SPACE, num_epochs=2, search="random", num_models=6, max_live_models=2,
        seed=3, overwrite=True,
    )  # fmt: skip
    table = result.table
    assert list(table["model_id"]) == [f"m{i:03d}" for i in range(6)]
    assert list(table["trial"]) == list(range(6))
    assert set(table["status"]) == {"done"} and set(table["epochs"]) == {2}
    assert all(1e-3 <= v <= 3e-1 for v in table["lr"])
    assert len({round(v, 12) for v in table["lr"]}) == 6  # drawn, not a grid
    # never more than 2 models live: model k+2 starts only after one of the first k+2 ended
    spans = _hop_spans(exp.output_dir)
    for k in range(4):
        later = spans[f"m{k + 2:03d}"][0]
        ends = sorted(spans[f"m{i:03d}"][1] for i in range(k + 2))
        assert later >= ends[k], f"m{k + 2:03d} started while 2 others were live"
    # the study is Optuna's own, told each model's best objective at any epoch
    study = optuna.load_study(
        study_name="cerebro",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(exp.output_dir / "search/study.log"))
        ),
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    values = dict(zip(table["model_id"], table["best_val_loss"], strict=True))
    assert [t.value for t in study.trials] == [values[f"m{i:03d}"] for i in range(6)]
    assert study.best_value == result.best["value"]
    assert result.study.best_trial.number == int(result.best["model_id"][1:])
    for t in study.trials:  # what was asked is what trained
        row = table[table["trial"] == t.number].iloc[0]
        assert t.params == {
            "lr": row["lr"],
            "hidden": row["hidden"],
            "batch_size": row["batch_size"],
        }
    # the report shows the search: objective in ask order, best so far, importance
    page = result.report().read_text()
    assert "<h2>Search</h2>" in page and (exp.output_dir / "plots/search.png").is_file()
    imp = importances(load_run(exp.output_dir))
    assert imp is not None and set(imp) == {"lr", "hidden", "batch_size"}
    assert sum(imp.values()) == pytest.approx(1.0)
    # a grid fit after it has no study, and its report no search
    grid = exp.run_fit(ToySpec(), {"lr": [0.05], "batch_size": [32]}, 1, overwrite=True)
    assert "<h2>Search</h2>" not in grid.report().read_text()
    assert not (exp.output_dir / "plots/search.png").exists()
    with pytest.raises(ValueError, match="grid fit"):
        grid.study  # noqa: B018


def test_random_search_gives_the_same_models_with_1_and_2_workers(
    exp: Experiment, toy_data: dict[str, str], tmp_path: Path
) -> None:
    kw: dict[str, Any] = {"num_epochs": 1, "search": "random", "num_models": 4, "seed": 8}
    two = exp.run_fit(ToySpec(), SPACE, overwrite=True, **kw)
    with Experiment(dict(toy_data, output_dir=str(tmp_path)), workers=1, verbose=False) as one:
        single = one.run_fit(ToySpec(), SPACE, **kw)
    assert _hyperparams(single) == _hyperparams(two)
    # and adding models to a search changes none of the ones already there, not a bit
    first = _epoch_metrics(exp.output_dir)
    more = exp.run_fit(ToySpec(), SPACE, overwrite=True, **{**kw, "num_models": 6})
    assert _hyperparams(more)[:4] == _hyperparams(two)
    assert {k: v for k, v in _epoch_metrics(exp.output_dir).items() if k[0] < "m004"} == first


def _epoch_metrics(run_dir: Path) -> dict[tuple[Any, ...], float]:
    return {(m, e, s, n): v for m, e, s, n, v in computed(run_dir / "catalog.sqlite")[1]}


def test_any_optuna_sampler_and_mode_max(exp: Experiment) -> None:
    sampler = optuna.samplers.QMCSampler(seed=1, warn_independent_sampling=False)
    result = exp.run_fit(
        ToySpec(), {"lr": loguniform(1e-3, 3e-1), "batch_size": [32]}, num_epochs=1,
        search=sampler, num_models=4, objective="val_acc", mode="max", overwrite=True,
    )  # fmt: skip
    assert len(result.table) == 4 and result.mode == "max"
    assert result.study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert result.study.best_value == result.table["best_val_acc"].max() == result.best["value"]


def test_a_failing_model_is_told_failed_and_the_search_goes_on(exp: Experiment) -> None:
    class Picky(ToySpec):
        """Wide models fail in their third minibatch (past the one-minibatch probe)."""

        def train(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
            net = model_object["model"]
            net.calls = getattr(net, "calls", 0) + 1
            if hyperparams["hidden"] > 10 and net.calls > 2:
                raise ValueError("too wide")
            return super().train(model_object, minibatch, hyperparams, device)

    space = {"lr": [0.05], "hidden": randint(4, 16), "batch_size": [32]}
    result = exp.run_fit(
        Picky(), space, num_epochs=1, search="random", num_models=8, seed=2, overwrite=True
    )
    status = dict(zip(result.table["model_id"], result.table["status"], strict=True))
    wide = {
        m for m, h in zip(result.table["model_id"], result.table["hidden"], strict=True) if h > 10
    }
    assert wide and {status[m] for m in wide} == {"failed"}
    assert len(status) == 8
    states = {f"m{t.number:03d}": t.state.name for t in result.study.trials}
    assert {m for m, s in states.items() if s == "FAIL"} == wide


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"search": "tpe"}, "needs num_models=N"),
        ({"search": "grid", "num_models": 3}, "num_models is for search='random'"),
        ({"search": "bayes", "num_models": 3}, "'grid', 'random', 'tpe' or an Optuna sampler"),
        ({"search": "random", "num_models": 0}, "num_models must be at least 1"),
        ({"deterministic": True, "policy": "lrf"}, "deterministic=True needs policy='fixed'"),
        ({"threads_per_hop": 0}, "threads_per_hop must be at least 1"),
    ],
)
def test_search_arguments_are_checked_before_anything_runs(
    toy_data: dict[str, str], tmp_path: Path, kwargs: dict[str, Any], words: str
) -> None:
    exp = Experiment(dict(toy_data, output_dir=str(tmp_path / "run")), workers=2, verbose=False)
    grid = {"lr": [0.1], "batch_size": [8]}
    with pytest.raises(ParamsError, match=words.replace("(", r"\(").replace(")", r"\)")):
        exp.run_fit(ToySpec(), grid, num_epochs=1, **kwargs)
    with pytest.raises(ParamsError, match="search='grid' can only enumerate lists"):
        exp.run_fit(ToySpec(), SPACE, num_epochs=1)
    assert not (tmp_path / "run" / "experiment.json").exists()


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from cerebro import Experiment
from test_search_fit import SPACE, tpe
from toy import SlowSpec
exp = Experiment({params!r}, workers=2, verbose=False)
exp.run_fit(SlowSpec(0.002), SPACE, **tpe())
"""


def tpe() -> dict[str, Any]:
    """A TPE search that leaves its random start-up after 2 trials (Optuna's default is
    10), in generations of 2."""
    sampler = optuna.samplers.TPESampler(seed=4, n_startup_trials=2)
    return {"num_epochs": 2, "search": sampler, "num_models": 8, "max_live_models": 2,
            "deterministic": True, "seed": 4}  # fmt: skip


def test_deterministic_tpe_survives_a_driver_sigkill_bit_for_bit(
    exp: Experiment, toy_data: dict[str, str], tmp_path: Path
) -> None:
    """The same seed gives the same models, metrics and weights, uninterrupted (on the
    module's warm workers) or killed mid-search and resumed (the study and the sampler's
    state come back from DIR)."""
    from toy import SlowSpec

    expected = exp.run_fit(SlowSpec(0.002), SPACE, overwrite=True, **tpe())
    reference = computed(exp.output_dir / "catalog.sqlite")
    expected_values = [t.value for t in expected.study.trials]
    params = dict(toy_data, output_dir=str(tmp_path / "cut"))
    script = DRIVER.format(tests=str(Path(__file__).parent), params=params)
    kill_driver_after(script, tmp_path / "cut", hops=20)
    catalog = tmp_path / "cut" / "catalog.sqlite"
    assert "of 8 models asked" in status_text(tmp_path / "cut")  # the rest is to come
    resumed = Experiment.resume(tmp_path / "cut", verbose=False)
    assert _hyperparams(resumed) == _hyperparams(expected)
    assert computed(catalog) == reference
    assert [t.value for t in resumed.study.trials] == expected_values
    saved = json.loads((tmp_path / "cut" / "experiment.json").read_text())["fit"]
    assert saved["search"] == "sampler:TPESampler" and saved["num_models"] == 8
