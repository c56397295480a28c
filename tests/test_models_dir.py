"""``models_dir``: a model whose ``models_dir/<model_id>.pt`` is a Cerebro checkpoint (as
kept in ``DIR/models/<model_id>/``) starts from it, optimizer state included; the others
start fresh. (A plain ``{component: state_dict}`` file: ``test_evaluate``.)"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch

from cerebro import Experiment
from toy import ToyETL, ToySpec, write_toy_csvs

GRID = {"lr": [0.05, 0.01], "batch_size": [32]}


def _weight_sum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def _momentum_sum(opt: torch.optim.Optimizer) -> float:
    bufs = [s["momentum_buffer"] for s in opt.state.values() if "momentum_buffer" in s]
    return float(sum(b.double().abs().sum() for b in bufs))


class StartSpec(ToySpec):
    """Reports, with each train minibatch, the model's weights and the optimizer's momentum
    as they were before that minibatch's step."""

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        before = {
            "wsum": _weight_sum(model_object["model"]),
            "msum": _momentum_sum(model_object["optimizer"]),
        }
        return {**super().train(model_object, minibatch, hyperparams, device), **before}


def _first_train_minibatch(catalog: Path, model_id: str) -> dict[str, float]:
    """The metrics of the first minibatch of the model's first train hop."""
    db = sqlite3.connect(catalog)
    try:
        (metrics,) = db.execute(
            "SELECT metrics FROM hops WHERE model_id=? AND kind='train' AND status='done' "
            "ORDER BY hop_id LIMIT 1",
            (model_id,),
        ).fetchone()
    finally:
        db.close()
    return {k: v[0] for k, v in json.loads(metrics)["values"].items()}


def test_a_cerebro_checkpoint_in_models_dir_is_the_starting_point(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("models-dir")
    pre = root / "pretrained"
    pre.mkdir()  # empty for the first fit: every model starts fresh
    params = dict(write_toy_csvs(root / "csv"), models_dir=str(pre), output_dir=str(root / "run"))
    with Experiment(params, workers=2, verbose=False) as exp:
        exp.run_etl(ToyETL(), seed=1)
        first = exp.run_fit(StartSpec(), GRID, num_epochs=1, seed=1)
        assert set(first.table["status"]) == {"done"}
        fresh = {m: _first_train_minibatch(exp.catalog_path, m) for m in ("m000", "m001")}
        # m000's epoch-end checkpoint, as Cerebro keeps it, becomes m000's starting point
        kept = sorted((root / "run" / "models" / "m000").glob("step-*.pt"))
        assert len(kept) == 1
        shutil.copyfile(kept[0], pre / "m000.pt")
        saved = (pre / "m000.pt").read_bytes()
        ckpt = torch.load(pre / "m000.pt", weights_only=False)
        assert {"components", "rng"} <= set(ckpt)  # a Cerebro checkpoint, not a state dict
        start = StartSpec().create_model_components({"lr": 0.05, "batch_size": 32})
        for name, sd in ckpt["components"].items():
            start[name].load_state_dict(sd)
        want_w, want_m = _weight_sum(start["model"]), _momentum_sum(start["optimizer"])
        assert want_m > 0  # it holds the optimizer's momentum too

        # a new fit (another num_epochs) on the same warm workers
        second = exp.run_fit(StartSpec(), GRID, num_epochs=2, seed=1, overwrite=True)
        assert set(second.table["status"]) == {"done"}
        got = {m: _first_train_minibatch(exp.catalog_path, m) for m in ("m000", "m001")}

    # m000's first step started from the checkpoint's weights and momentum ...
    assert got["m000"]["wsum"] == pytest.approx(want_w, rel=1e-12, abs=1e-12)
    assert got["m000"]["msum"] == pytest.approx(want_m, rel=1e-12, abs=1e-12)
    # ... not from the fresh model it started from while models_dir had no file for it
    assert fresh["m000"]["msum"] == 0 and fresh["m000"]["wsum"] != pytest.approx(want_w)
    # m001 has no file there: it starts fresh again, exactly as in the first fit
    assert got["m001"] == fresh["m001"]
    assert (pre / "m000.pt").read_bytes() == saved  # the user's file is left as it was
