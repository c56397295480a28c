from __future__ import annotations

from pathlib import Path

import pytest

from cerebro import ParamsError
from cerebro.params import expand_grid, validate_params


def test_valid(toy_params: dict[str, str]) -> None:
    p = validate_params(toy_params)
    assert set(p.mains) == {"train", "val", "test", "predict"}
    assert p.output_dir == Path(toy_params["output_dir"]).resolve()


@pytest.mark.parametrize(
    "key, value, match",
    [
        (
            "trian_main",
            "x.csv",
            r"unknown params key\(s\): 'trian_main' \(did you mean 'train_main'",
        ),
        (
            "val_main",
            "/nonexistent/val.csv",
            r"params\['val_main'\] = '/nonexistent/val.csv': no ",
        ),
        ("train_dir", "/nonexistent", r"params\['train_dir'\].*no such folder"),
        ("misc", ["/nonexistent/vocab.txt"], r"params\['misc'\] lists '/nonexistent/vocab.txt'"),
        ("etl_dir", "/nonexistent", r"params\['etl_dir'\].*no such folder"),
    ],
)
def test_bad_values(toy_params: dict[str, str], key: str, value: object, match: str) -> None:
    toy_params[key] = value  # type: ignore[assignment]
    with pytest.raises(ParamsError, match=match):
        validate_params(toy_params)


def test_wrong_type(toy_params: dict[str, str]) -> None:
    toy_params["train_main"] = 3  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"params\['train_main'\] must be a path"):
        validate_params(toy_params)
    with pytest.raises(TypeError, match="params must be a dict"):
        validate_params(["train.csv"])  # type: ignore[arg-type]


def test_missing_required(toy_params: dict[str, str]) -> None:
    no_out = dict(toy_params)
    del no_out["output_dir"]
    with pytest.raises(ParamsError, match="needs 'output_dir'"):
        validate_params(no_out)
    no_train = dict(toy_params)
    del no_train["train_main"]
    with pytest.raises(ParamsError, match="needs 'train_main'"):
        validate_params(no_train)


def test_grid_expansion_is_stable() -> None:
    grid = {"lr": [0.1, 0.01], "batch_size": [16, 32, 64]}
    configs = expand_grid(grid)
    assert [c.model_id for c in configs] == [f"m{i:03d}" for i in range(6)]
    assert configs[0].hyperparams == {"lr": 0.1, "batch_size": 16}
    assert configs[5].hyperparams == {"lr": 0.01, "batch_size": 64}
    assert expand_grid(grid) == configs


@pytest.mark.parametrize(
    "grid, exc, match",
    [
        ({}, ParamsError, "param_grid is empty"),
        ({"lr": [0.1]}, ParamsError, "param_grid needs 'batch_size'"),
        ({"batch_size": [0]}, ParamsError, "positive integers, got 0"),
        ({"batch_size": [-4]}, ParamsError, "positive integers, got -4"),
        ({"batch_size": [32.5]}, ParamsError, "positive integers, got 32.5"),
        ({"batch_size": []}, ParamsError, "empty list"),
        (
            {"batch_size": 32},
            TypeError,
            r"must be a list of values, got 32; write 'batch_size': \[32\]",
        ),
        ({"batch_size": [32], "act": [object()]}, TypeError, "cannot be stored in the catalog"),
        ([("batch_size", [32])], TypeError, "param_grid must be a dict"),
    ],
)
def test_bad_grid(grid: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        expand_grid(grid)  # type: ignore[arg-type]
