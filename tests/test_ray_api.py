"""The same experiment through the public API on the Ray engine (a local Ray instance)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install 'cerebro-mop[ray]'")

from cerebro import Experiment  # noqa: E402
from toy import ToyETL, ToySpec  # noqa: E402


def test_experiment_on_ray_matches_local(toy_params: dict[str, str], tmp_path: Path) -> None:
    import ray

    grid = {"lr": [0.05, 0.01], "batch_size": [32]}
    local = Experiment(
        dict(toy_params, output_dir=str(tmp_path / "local")), workers=2, verbose=False
    )
    local.run_etl(ToyETL(), seed=1)
    expected = local.run_fit(ToySpec(), grid, num_epochs=2, seed=1)
    try:
        exp = Experiment(toy_params, workers=2, engine="ray", verbose=False)
        exp.run_etl(ToyETL(), seed=1)
        result = exp.run_fit(ToySpec(), grid, num_epochs=2, seed=1)
        assert set(result.table["status"]) == {"done"}
        a = result.table.set_index("model_id")["val_acc"]
        b = expected.table.set_index("model_id")["val_acc"]
        assert (abs(a - b) <= 0.01).all()
        assert exp.run_test(ToySpec())["test_acc"] > 0.5
        again = Experiment.from_dir(toy_params["output_dir"], verbose=False)
        assert again.engine == "ray"
    finally:
        ray.shutdown()
