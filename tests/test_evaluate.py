"""Test, predict and reload trained models (real workers, real files)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from cerebro import Experiment, ParamsError, UserCodeError
from toy import ToySpec

GRID = {"lr": [0.05, 0.01], "batch_size": [32]}


@pytest.fixture(scope="module")
def fitted(
    tmp_path_factory: pytest.TempPathFactory, toy_data: dict[str, str]
) -> tuple[Experiment, Any]:
    root = tmp_path_factory.mktemp("eval")
    exp = Experiment(dict(toy_data, output_dir=str(root / "run")), workers=2, verbose=False)
    return exp, exp.run_fit(ToySpec(), GRID, num_epochs=2)


def test_run_test_best_and_by_id(fitted: tuple[Experiment, Any]) -> None:
    exp, result = fitted
    best = exp.run_test(ToySpec(), model_tag="best")
    assert set(best) == {"test_loss", "test_acc"} and 0.5 < best["test_acc"] <= 1.0
    same = exp.run_test(ToySpec(), model_tag=result.best["model_id"])
    assert same == best
    bigger = exp.run_test(ToySpec(), model_tag="best", batch_size=60)
    assert bigger["test_acc"] == pytest.approx(best["test_acc"])
    import sqlite3

    db = sqlite3.connect(exp.catalog_path)
    rows = db.execute("SELECT model_id, tag, name FROM evaluations").fetchall()
    db.close()
    assert (result.best["model_id"], "best", "acc") in rows


def test_run_predict_writes_sorted_csv(
    toy_csvs: dict[str, str], fitted: tuple[Experiment, Any]
) -> None:
    exp, _ = fitted
    path = exp.run_predict(ToySpec(), model_tag="best")
    assert path == exp.output_dir / "predictions" / "best.csv"
    df = pd.read_csv(path)
    assert list(df.columns) == ["row_id", "output_class", "confidence"]
    expected = sorted(pd.read_csv(toy_csvs["predict_main"])["id"])
    assert df["row_id"].tolist() == expected
    assert df["confidence"].between(0.5, 1.0).all()
    first = path.read_bytes()
    assert exp.run_predict(ToySpec(), model_tag="best").read_bytes() == first  # deterministic
    # predictions agree with test labels as often as run_test says
    test = pd.read_csv(toy_csvs["test_main"]).set_index("id")
    acc = (df.set_index("row_id")["output_class"] == test["label"]).mean()
    assert acc == pytest.approx(exp.run_test(ToySpec())["test_acc"])


def test_checkpoint_path_as_tag(toy_csvs: dict[str, str], fitted: tuple[Experiment, Any]) -> None:
    exp, result = fitted
    # the first epoch's checkpoint of the model that is not the best: neither "best" nor
    # any model's latest state, so only that very file gives these predictions
    other = next(m for m in ("m000", "m001") if m != result.best["model_id"])
    db = sqlite3.connect(exp.catalog_path)
    (ckpt,) = db.execute(
        "SELECT path FROM checkpoints WHERE model_id=? AND epoch=0", (other,)
    ).fetchone()
    db.close()
    path = exp.run_predict(ToySpec(), model_tag=ckpt)
    assert path.name == Path(ckpt).stem + ".csv"
    got = pd.read_csv(path)
    # what plain PyTorch predicts from that file's weights, row by row
    state = torch.load(ckpt, weights_only=False)
    assert state["model_id"] == other
    model = ToySpec().create_model_components(state["hyperparams"])["model"]
    model.load_state_dict(state["components"]["model"])
    rows = pd.read_csv(toy_csvs["predict_main"]).sort_values("id")
    x = torch.tensor(rows[[f"f{i}" for i in range(6)]].values, dtype=torch.float32)
    with torch.no_grad():
        conf, cls = torch.softmax(model.eval()(x), 1).max(1)
    assert got["row_id"].tolist() == rows["id"].tolist()
    assert got["output_class"].tolist() == cls.tolist()
    assert got["confidence"].to_numpy() == pytest.approx(conf.numpy(), rel=1e-6)
    best = pd.read_csv(exp.run_predict(ToySpec(), model_tag="best"))
    assert not np.allclose(best["confidence"], got["confidence"])  # another model's output


def test_load_model_for_plain_pytorch(
    toy_csvs: dict[str, str], fitted: tuple[Experiment, Any]
) -> None:
    exp, result = fitted
    components = result.load_model("best")
    model = components["model"].eval()
    test = pd.read_csv(toy_csvs["test_main"])
    x = torch.tensor(test[[f"f{i}" for i in range(6)]].values, dtype=torch.float32)
    acc = (model(x).argmax(1).numpy() == test["label"].values).mean()
    assert acc == pytest.approx(exp.run_test(ToySpec())["test_acc"])
    with pytest.raises(ValueError, match="unknown model id 'm999'"):
        result.load_model("m999")


def test_unknown_model_tag(fitted: tuple[Experiment, Any]) -> None:
    exp, _ = fitted
    with pytest.raises(
        ParamsError,
        match=r"unknown model_tag 'm42': use 'best', a model id "
        r"of the latest fit \(m000, m001\)",
    ):
        exp.run_test(ToySpec(), model_tag="m42")


class ShortPredict(ToySpec):
    def predict(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> Any:
        classes, conf = super().predict(model_object, minibatch, hyperparams, device)
        return classes[:-1], conf


def test_predict_returning_wrong_length(fitted: tuple[Experiment, Any]) -> None:
    exp, _ = fitted
    with pytest.raises(
        UserCodeError,
        match=r"ShortPredict.predict failed for model m00\d .*"
        r"returned 29 classes and 30 confidences for a minibatch of 30 rows",
    ):
        exp.run_predict(ShortPredict(), model_tag="best")
    assert not list((exp.output_dir / "predictions").glob(".best.csv.tmp*"))


def test_models_dir_starts_from_pretrained_weights(
    fitted: tuple[Experiment, Any], tmp_path: Path
) -> None:
    exp, result = fitted
    pre = tmp_path / "pretrained"
    pre.mkdir()
    trained = torch.load(result.best["checkpoint"], weights_only=False)["components"]
    torch.save({"model": trained["model"]}, pre / "m000.pt")  # a plain state-dict file
    params = exp.params.as_dict()
    params.update(models_dir=str(pre), output_dir=str(tmp_path / "run"), etl_dir=str(exp.data_dir))
    warm = Experiment(params, workers=2, verbose=False).run_fit(
        ToySpec(), {"lr": [0.001], "batch_size": [32]}, num_epochs=1
    )
    cold = Experiment(
        dict(params, models_dir=None, output_dir=str(tmp_path / "cold")), workers=2, verbose=False
    ).run_fit(ToySpec(), {"lr": [0.001], "batch_size": [32]}, num_epochs=1)
    assert warm.table["val_loss"].iloc[0] < cold.table["val_loss"].iloc[0] / 2
    assert (pre / "m000.pt").is_file()  # the user's file is never cleaned up
