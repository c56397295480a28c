from __future__ import annotations

from pathlib import Path

from cerebro.params import expand_grid, validate_params


def test_valid(toy_params: dict[str, str]) -> None:
    p = validate_params(toy_params)
    assert set(p.mains) == {"train", "val", "test", "predict"}
    assert p.output_dir == Path(toy_params["output_dir"]).resolve()


def test_grid_expansion_is_stable() -> None:
    grid = {"lr": [0.1, 0.01], "batch_size": [16, 32, 64]}
    configs = expand_grid(grid)
    assert [c.model_id for c in configs] == [f"m{i:03d}" for i in range(6)]
    assert configs[0].hyperparams == {"lr": 0.1, "batch_size": 16}
    assert configs[5].hyperparams == {"lr": 0.01, "batch_size": 64}
    assert expand_grid(grid) == configs
