"""Search spaces and the Optuna-backed search, without workers: pure asks and tells."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from cerebro.errors import ParamsError
from cerebro.search import (
    GridSearch,
    Space,
    choice,
    grid_points,
    loguniform,
    parse_space,
    randint,
    uniform,
)
from cerebro.search._optuna import OptunaSearch, make_sampler, study_storage


@pytest.mark.parametrize(
    ("space", "search", "error", "words"),
    [
        ({"lr": uniform(1e-2, 1e-3), "batch_size": [8]}, "random", ParamsError,
         ["'lr'", "low must be below high", "uniform(0.001, 0.01)"]),
        ({"lr": loguniform(0, 1), "batch_size": [8]}, "tpe", ParamsError,
         ["'lr'", "low > 0"]),
        ({"lr": uniform(0.1, 1, step=0.1, log=True), "batch_size": [8]}, "tpe", ParamsError,
         ["'lr'", "step and log"]),
        ({"n": randint(5, 1), "batch_size": [8]}, "random", ParamsError,
         ["'n'", "randint(1, 5)"]),
        ({"act": choice([]), "batch_size": [8]}, "random", ParamsError,
         ["'act'", "at least one value"]),
        ({"lr": loguniform(1e-4, 1e-1), "batch_size": [8]}, "grid", ParamsError,
         ["'lr'", "search='grid'", "search='random'"]),
        ({"lr": 0.1, "batch_size": [8]}, "random", TypeError, ["'lr'", "'lr': [0.1]"]),
        ({"lr": {1, 2}, "batch_size": [8]}, "random", TypeError, ["'lr'", "distribution"]),
        ({"lr": [0.1]}, "grid", ParamsError, ["batch_size"]),
        ({"batch_size": uniform(1, 64)}, "random", ParamsError, ["batch_size", "randint"]),
        ({"batch_size": randint(0, 64)}, "random", ParamsError, ["batch_size", "at least 1"]),
        ([{"batch_size": [8]}, {}], "grid", ParamsError, ["sub-space 1", "empty"]),
        ("lr", "grid", TypeError, ["dict", "list of such dicts"]),
    ],
)  # fmt: skip
def test_every_mistake_names_the_key_and_the_fix(
    space: object, search: str, error: type, words: list[str]
) -> None:
    with pytest.raises(error) as e:
        parse_space(space, search=search)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_a_list_of_grids_is_their_union_in_order() -> None:
    space = parse_space([{"a": [1, 2], "batch_size": [8]}, {"b": ["x"], "batch_size": [4, 16]}])
    assert space.is_grid
    got = [(c.model_id, c.hyperparams) for c in grid_points(space)]
    assert got == [
        ("m000", {"a": 1, "batch_size": 8}),
        ("m001", {"a": 2, "batch_size": 8}),
        ("m002", {"b": "x", "batch_size": 4}),
        ("m003", {"b": "x", "batch_size": 16}),
    ]
    g = GridSearch(space)
    assert [g.ask() for _ in range(5)][-1] is None and g.finished


def test_a_space_survives_its_json_form() -> None:
    space = parse_space(
        {"lr": loguniform(1e-4, 1e-1), "n": randint(1, 9, step=2), "u": uniform(0, 1, step=0.25),
         "c": choice([[1, 2], {"k": 3}]), "batch_size": [8, 16]},
        search="tpe",
    )  # fmt: skip
    assert Space.from_json(space.to_json()) == space


def _search(tmp: Path, sampler: object, n: int = 6, live: int = 2, **kw: object) -> OptunaSearch:
    space = parse_space(
        {"lr": loguniform(1e-4, 1e-1), "wd": loguniform(1e-4, 1e-1), "hidden": randint(8, 64),
         "act": ["relu", "tanh"], "batch_size": choice([16, 32])},
        search="random",
    )  # fmt: skip
    return OptunaSearch(
        space, sampler, num_models=n, max_live=live, mode="min", search_dir=tmp, **kw
    )


def test_random_search_draws_each_hyperparameter_independently_within_its_range(
    tmp_path: Path,
) -> None:
    s = _search(tmp_path, make_sampler("random", 3), n=40)
    configs = [s.ask() for _ in range(40)]
    assert s.ask() is None and s.finished
    assert [c.model_id for c in configs] == [f"m{i:03d}" for i in range(40)]
    lr = [c.hyperparams["lr"] for c in configs]
    wd = [c.hyperparams["wd"] for c in configs]
    assert all(1e-4 <= v <= 1e-1 for v in lr + wd)
    assert lr != wd  # same range, independent draws (the Spark-based Cerebro drew the same)
    assert min(lr) < 1e-3 and max(lr) > 1e-2  # log scale: every decade is reached
    assert {c.hyperparams["act"] for c in configs} == {"relu", "tanh"}
    assert all(isinstance(c.hyperparams["hidden"], int) for c in configs)


def test_the_study_is_one_optuna_reads_with_every_end_told(tmp_path: Path) -> None:
    s = _search(tmp_path, make_sampler("tpe", 1), n=3)
    a, b, c = s.ask(), s.ask(), s.ask()
    assert a and b and c
    s.tell(a.model_id, 0.25, "done")
    s.tell(b.model_id, None, "failed")
    s.tell(c.model_id, float("nan"), "diverged")
    study = optuna.load_study(study_name="cerebro", storage=study_storage(tmp_path))
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "FAIL", "FAIL"]
    assert study.best_trial.number == 0 and study.best_value == 0.25
    assert study.trials[2].user_attrs == {"model_id": "m002", "cerebro_status": "diverged"}


def test_a_maximised_objective_maximises(tmp_path: Path) -> None:
    space = parse_space({"x": uniform(0, 1), "batch_size": [8]}, search="tpe")
    s = OptunaSearch(
        space, make_sampler("tpe", 0), num_models=2, max_live=1, mode="max", search_dir=tmp_path
    )
    for value in (0.2, 0.9):
        cfg = s.ask()
        assert cfg is not None
        s.tell(cfg.model_id, value, "done")
    assert s.study.best_value == 0.9


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_search_asks_what_an_uninterrupted_one_asks(
    tmp_path: Path, sampler: str
) -> None:
    def tell(s: OptunaSearch, cfg: object) -> float:
        value = sum(v for v in cfg.hyperparams.values() if isinstance(v, float))  # type: ignore[attr-defined]
        s.tell(cfg.model_id, value, "done")  # type: ignore[attr-defined]
        return value

    whole = _search(tmp_path / "whole", make_sampler(sampler, 5), n=14, live=1)
    expected = []
    while (cfg := whole.ask()) is not None:
        expected.append(cfg)
        tell(whole, cfg)

    first = _search(tmp_path / "cut", make_sampler(sampler, 5), n=14, live=1)
    got, ends = [], []
    for _ in range(12):
        cfg = first.ask()
        got.append(cfg)
        ends.append((cfg, "done", tell(first, cfg)))
    extra = first.ask()  # asked, then the driver dies before the catalog records it
    assert extra is not None
    # a new driver: a fresh sampler object, as a resumed run builds one
    again = _search(tmp_path / "cut", make_sampler(sampler, 5), n=14, live=1)
    again.restore(ends)
    while (cfg := again.ask()) is not None:
        got.append(cfg)
        tell(again, cfg)
    assert got == expected


def test_deterministic_asks_wait_for_the_earlier_generations(tmp_path: Path) -> None:
    s = _search(tmp_path, make_sampler("tpe", 2), n=5, live=2, deterministic=True)
    a, b = s.ask(), s.ask()
    assert a and b
    c = s.ask()  # generation 1 may start only once generation 0 is told...
    assert c is None
    s.tell(a.model_id, 1.0, "done")
    assert s.ask() is None
    s.tell(b.model_id, None, "failed")  # ...failed counts as told
    c, d = s.ask(), s.ask()
    assert c and d and s.ask() is None
    s.tell(d.model_id, 0.5, "done")
    s.tell(c.model_id, 0.7, "done")
    e = s.ask()
    assert e is not None and e.model_id == "m004" and s.ask() is None and s.finished


def test_an_unknown_search_says_what_is_accepted() -> None:
    with pytest.raises(ParamsError, match="'grid', 'random', 'tpe' or an Optuna sampler"):
        make_sampler("bayes", 1)
    qmc = optuna.samplers.QMCSampler(seed=1)
    assert make_sampler(qmc, 1) is qmc


def test_fit_settings_keep_a_grid_fit_s_identity_and_read_back_a_search(tmp_path: Path) -> None:
    import json

    import numpy as np

    from cerebro._settings import FitSettings
    from toy import ToySpec

    grid = FitSettings.check({"lr": [0.1, 0.2], "batch_size": [8]}, 2, np.int64(3))
    assert grid.seed == 3 and isinstance(grid.seed, int)  # a numpy seed is stored as JSON
    # a grid fit's signature and record are what they were before searches existed, so
    # run directories made then still resume
    sig = json.loads(grid.signature(ToySpec(), "fp", 2))
    assert set(sig) == {"grid", "num_epochs", "seed", "policy", "spec", "data", "workers"}
    assert sig["grid"] == {"lr": [0.1, 0.2], "batch_size": [8]}
    assert grid.to_json()["param_grid"] == sig["grid"] and "search" not in grid.to_json()
    space = {"lr": loguniform(1e-4, 1e-1), "batch_size": choice([8, 16])}
    tpe = FitSettings.check(space, 2, 1, search="tpe", num_models=5, deterministic=True)
    back = FitSettings.from_json(json.loads(json.dumps(tpe.to_json())), tmp_path)
    assert back == tpe and back.signature(ToySpec(), "fp", 2) == tpe.signature(ToySpec(), "fp", 2)
    assert tpe.max_live(3) == 8 and grid.max_live(3) is None  # deterministic: generations of 8
    with pytest.raises(TypeError, match="seed must be an int, got str"):
        FitSettings.check({"batch_size": [8]}, 1, "x")


def test_a_sampler_s_settings_are_part_of_the_search_s_identity(tmp_path: Path) -> None:
    """NOTE [ a sampler's identity ]: another TPE configuration is another fit (it does
    not silently continue the earlier search's pickled sampler); a fresh instance with the
    same settings, or the record a resume reads, is the same fit."""
    import json

    from cerebro._settings import FitSettings
    from toy import ToySpec

    space = {"lr": loguniform(1e-4, 1e-1), "batch_size": [8]}

    def sig(sampler: object) -> str:
        s = FitSettings.check(space, 1, 1, search=sampler, num_models=4)
        return s.signature(ToySpec(), "fp", 2)

    tpe = optuna.samplers.TPESampler
    assert sig(tpe(seed=4, n_startup_trials=2)) == sig(tpe(seed=4, n_startup_trials=2))
    assert sig(tpe(seed=4, n_startup_trials=2)) != sig(tpe(seed=4, n_startup_trials=5))
    first = FitSettings.check(space, 1, 1, search=tpe(seed=4), num_models=4)
    OptunaSearch(  # it asks, so its sampler pickles otherwise now...
        first.space, first.sampler, num_models=4, max_live=2, mode="min", search_dir=tmp_path
    ).ask()
    back = FitSettings.from_json(json.loads(json.dumps(first.to_json())), tmp_path)
    assert back.signature(ToySpec(), "fp", 2) == first.signature(ToySpec(), "fp", 2)  # ...yet
