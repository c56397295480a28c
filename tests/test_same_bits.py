"""Same results at any scale: a deterministic fit gives bit-identical models and metrics on
1, 2 or 3 workers over the same 6 partitions (NOTE [ same bits at any scale ])."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch

from cerebro import Experiment
from toy import ToyETL, WideSpec, computed

GRID = {"lr": [0.05, 0.2], "hidden": [16384, 20000], "batch_size": [16]}


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory, toy_csvs: dict[str, str]) -> dict[str, str]:
    """The toy data in 6 partitions (more than any worker count below)."""
    root = tmp_path_factory.mktemp("six")
    with Experiment(dict(toy_csvs, output_dir=str(root)), workers=2, verbose=False) as exp:
        exp.run_etl(ToyETL(), seed=1, partitions=6)
    return {"etl_dir": str(exp.data_dir)}


def tensors(run_dir: Path) -> dict[tuple[str, int | None], dict[str, torch.Tensor]]:
    """Every checkpoint the fit kept (each epoch's and each model's last), by (model,
    epoch), as flat ``{component.name: tensor}``."""
    con = sqlite3.connect(run_dir / "catalog.sqlite")
    try:
        paths = {
            (m, e): p for m, e, p in con.execute("SELECT model_id, epoch, path FROM checkpoints")
        }
        paths |= {(m, None): p for m, p in con.execute("SELECT model_id, checkpoint FROM models")}
    finally:
        con.close()
    out = {}
    for key, path in paths.items():
        state = torch.load(path, map_location="cpu", weights_only=False)
        out[key] = {f"{c}.{k}": v for c, sd in state["components"].items() for k, v in _flat(sd)}
    return out


def _flat(sd: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(sd, torch.Tensor):
        return [(prefix, sd)]
    if isinstance(sd, dict):
        return [x for k, v in sd.items() for x in _flat(v, f"{prefix}.{k}")]
    if isinstance(sd, list | tuple):
        return [x for i, v in enumerate(sd) for x in _flat(v, f"{prefix}.{i}")]
    return [(prefix, torch.tensor(float(sd)))] if isinstance(sd, int | float) else []


def _same(a: dict[Any, dict[str, torch.Tensor]], b: dict[Any, dict[str, torch.Tensor]]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys(), key
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)


def test_one_two_and_three_workers_train_the_same_bits(
    six: dict[str, str], tmp_path: Path
) -> None:
    runs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        with Experiment(dict(six, output_dir=str(out)), workers=workers, verbose=False) as exp:
            exp.run_fit(WideSpec(), GRID, num_epochs=2, seed=3, deterministic=True)
        runs.append((computed(out / "catalog.sqlite"), tensors(out)))
    (hops, metrics), weights = runs[0]
    assert len(weights) == 4 * 3  # 4 models: 2 epochs' checkpoints and the last
    for (other_hops, other_metrics), other_weights in runs[1:]:
        assert other_hops == hops  # every hop's per-minibatch metrics
        assert other_metrics == metrics  # every epoch metric
        _same(weights, other_weights)
