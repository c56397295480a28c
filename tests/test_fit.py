"""End-to-end MOP fits with real worker processes and a real catalog."""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cerebro import Experiment, ParamsError, UserCodeError
from cerebro.report import read_status, status_text
from toy import ToySpec

GRID = {"lr": [0.05, 0.01], "hidden": [4, 8], "batch_size": [16, 32]}


@pytest.fixture
def exp(toy_data: dict[str, str], tmp_path: Path) -> Experiment:
    return Experiment(dict(toy_data, output_dir=str(tmp_path / "run")), workers=2, verbose=False)


def _rows(exp: Experiment, sql: str, *args: Any) -> list[sqlite3.Row]:
    db = sqlite3.connect(exp.catalog_path)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


class CountingSpec(ToySpec):
    """Records set-up calls per process, and what metrics_agg receives."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir

    def initialize_worker(self) -> None:
        with open(os.path.join(self.log_dir, f"init-{os.getpid()}"), "a") as f:
            f.write("x")

    def metrics_agg(
        self, mode: str, hyperparams: dict[str, Any], metrics: dict[str, list[float]]
    ) -> dict[str, float]:
        out = super().metrics_agg(mode, hyperparams, metrics)
        out["minibatches"] = float(len(metrics["loss"]))
        return out


def test_every_hop_exactly_once_and_validation_each_epoch(exp: Experiment, tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.mkdir()
    epochs = 3
    result = exp.run_fit(CountingSpec(str(log)), GRID, num_epochs=epochs, seed=1)
    models = [f"m{i:03d}" for i in range(8)]
    done = _rows(exp, "SELECT * FROM hops WHERE status='done'")
    train = Counter(
        (h["model_id"], h["partition"], h["epoch"]) for h in done if h["kind"] == "train"
    )
    assert train == Counter({(m, p, e): 1 for m in models for p in (0, 1) for e in range(epochs)})
    val = Counter((h["model_id"], h["partition"], h["epoch"]) for h in done if h["kind"] == "val")
    assert val == Counter({(m, p, e): 1 for m in models for p in (0, 1) for e in range(epochs)})
    # partitions are pinned: partition p always ran on worker p
    assert all(h["worker"] == h["partition"] for h in done)
    # a model is on one worker at a time and validated only after its epoch's train hops
    for m in models:
        hops = sorted((h for h in done if h["model_id"] == m), key=lambda h: h["start"])
        for a, b in zip(hops, hops[1:], strict=False):
            assert a["end"] <= b["start"] + 1e-6
        order = [(h["epoch"], h["kind"]) for h in hops]
        assert order == sorted(order, key=lambda t: (t[0], t[1] == "val"))
    # persistent workers: two processes ran every hop, each set up once
    assert len({h["pid"] for h in done}) == 2
    assert sorted(p.read_text() for p in log.iterdir()) == ["x", "x"]
    # per-epoch metrics for train and val, and metrics_agg saw one epoch at a time
    table = result.table
    assert len(table) == 8 and set(table["status"]) == {"done"}
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(table.columns)
    hist = result.history
    mb = hist[(hist.metric == "minibatches") & (hist.split == "train")]
    for m in models:
        counts = mb[mb.model_id == m].sort_values("epoch")["value"].tolist()
        assert len(counts) == epochs and len(set(counts)) == 1  # not cumulative
    bs16 = mb[mb.model_id == "m000"]["value"].iloc[0]
    assert bs16 == 2 * 8  # 120 rows per partition / 16 = 8 minibatches, 2 partitions
    best = result.best
    assert best["model_id"] in models
    vals = hist[
        (hist.model_id == best["model_id"]) & (hist.split == "val") & (hist.metric == "loss")
    ].set_index("epoch")["value"]
    assert best["value"] == vals.min() and best["epoch"] == vals.idxmin()
    assert best["value"] == min(table["best_val_loss"])
    assert table.set_index("model_id").loc[best["model_id"], "best_epoch"] == best["epoch"]
    assert (table["train_seconds"] > 0).all()
    # learning happened
    assert table["val_acc"].max() > 0.8


def test_same_seed_same_results(toy_data: dict[str, str], tmp_path: Path) -> None:
    def run(out: str, seed: int) -> Any:
        e = Experiment(dict(toy_data, output_dir=str(tmp_path / out)), workers=2, verbose=False)
        return e.run_fit(
            ToySpec(),
            {"lr": [0.05], "hidden": [8], "batch_size": [16, 32]},
            num_epochs=2,
            seed=seed,
        ).history

    a, b, c = run("a", 1), run("b", 1), run("c", 2)
    assert a.equals(b)  # bit-identical metrics, whatever the timing
    assert not a.equals(c)


def test_rerun_resumes_instead_of_recomputing(exp: Experiment) -> None:
    grid = {"lr": [0.05], "batch_size": [32, 64]}
    first = exp.run_fit(ToySpec(), grid, num_epochs=2)
    n = len(_rows(exp, "SELECT * FROM hops"))
    again = exp.run_fit(ToySpec(), grid, num_epochs=2)
    assert len(_rows(exp, "SELECT * FROM hops")) == n
    assert again.history.equals(first.history)
    with pytest.raises(ParamsError, match="already holds a different fit"):
        exp.run_fit(ToySpec(), grid, num_epochs=3)
    third = exp.run_fit(ToySpec(), grid, num_epochs=3, overwrite=True)
    assert set(third.table["epochs"]) == {3}


def test_checkpoints_are_kept_per_epoch(exp: Experiment) -> None:
    result = exp.run_fit(ToySpec(), {"lr": [0.05], "batch_size": [32]}, num_epochs=2)
    ckpts = _rows(exp, "SELECT * FROM checkpoints ORDER BY epoch")
    assert [c["epoch"] for c in ckpts] == [0, 1]
    assert all(Path(c["path"]).is_file() for c in ckpts)
    files = sorted(p.name for p in (exp.output_dir / "models" / "m000").iterdir())
    assert files == ["step-00002.pt", "step-00004.pt"]  # intermediate states cleaned up
    # epochs a user reads count from 1; the catalog counts from 0 inside
    assert set(result.history["epoch"]) == {1, 2}
    assert result.best["epoch"] in (1, 2)
    assert result.table["best_epoch"].iloc[0] == result.best["epoch"]
    assert result.best["checkpoint"] == ckpts[result.best["epoch"] - 1]["path"]
    st = read_status(exp.output_dir)
    assert st.best is not None and st.best["epoch"] == result.best["epoch"]
    assert [m.epochs_done for m in st.models] == [2]
    text = status_text(exp.output_dir)
    assert f"epoch {result.best['epoch']} of 2" in text and " 2/2 " in text


class BrokenSpec(ToySpec):
    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        if hyperparams["lr"] == 0.01:
            raise RuntimeError("shape mismatch in my layer")
        return super().train(model_object, minibatch, hyperparams, device)


def test_failing_model_does_not_stop_the_others(exp: Experiment) -> None:
    grid = {"lr": [0.05, 0.01], "batch_size": [32]}
    result = exp.run_fit(BrokenSpec(), grid, num_epochs=2)
    table = result.table.set_index("model_id")
    assert table.loc["m000", "status"] == "done"
    assert table.loc["m001", "status"] == "failed"
    err = table.loc["m001", "error"]
    assert "BrokenSpec.train failed for model m001" in err
    assert json.dumps({"lr": 0.01, "batch_size": 32}) in err
    assert "RuntimeError: shape mismatch in my layer" in err
    assert result.best["model_id"] == "m000"


def test_on_error_stop(exp: Experiment) -> None:
    with pytest.raises(UserCodeError, match="BrokenSpec.train failed for model m001"):
        exp.run_fit(
            BrokenSpec(), {"lr": [0.05, 0.01], "batch_size": [32]}, num_epochs=2, on_error="stop"
        )


class NaNSpec(ToySpec):
    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        out = super().train(model_object, minibatch, hyperparams, device)
        return {**out, "loss": float("nan")} if hyperparams["lr"] > 1 else out


def test_diverged_model_is_marked_not_crashed(exp: Experiment) -> None:
    result = exp.run_fit(NaNSpec(), {"lr": [0.05, 5.0], "batch_size": [32]}, num_epochs=2)
    table = result.table.set_index("model_id")
    assert table.loc["m001", "status"] == "diverged"
    assert "became NaN or infinite" in table.loc["m001", "error"]
    assert table.loc["m000", "status"] == "done"


class BadMetricsSpec(ToySpec):
    def valtest(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> Any:
        return {"loss": [1.0, 2.0]}


def test_non_scalar_metric_is_named_before_training(
    exp: Experiment, capsys: pytest.CaptureFixture[str]
) -> None:
    exp.verbose = True  # the progress bar is shown, then cleared by the error
    with pytest.raises(UserCodeError) as err:
        exp.run_fit(BadMetricsSpec(), {"lr": [0.05], "batch_size": [32]}, num_epochs=1)
    bar = capsys.readouterr().err
    assert "MOP hops" in bar
    # no line of its own left behind: the error follows where the bar was
    assert "\n" not in bar[bar.rindex("MOP hops") :] and bar.endswith("\r")
    assert "BadMetricsSpec.valtest failed for model m000" in str(err.value)
    assert "returned metric 'loss' = list" in str(err.value)
    assert "checked on one minibatch before training" in str(err.value)
    assert not _rows(exp, "SELECT * FROM hops")  # no training hop ran


def test_unknown_objective_is_an_error_before_training(exp: Experiment) -> None:
    with pytest.raises(
        ParamsError,
        match="objective 'val_accuracy' is not a metric this spec "
        "returns; choose one of train_acc, train_loss, val_acc, val_loss",
    ):
        exp.run_fit(
            ToySpec(), {"lr": [0.05], "batch_size": [32]}, num_epochs=1, objective="val_accuracy"
        )
    assert not _rows(exp, "SELECT * FROM hops")


class OriginalFormSpec(ToySpec):
    """The deployed original returned (model_object, metrics) from train."""

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> Any:
        return model_object, super().train(model_object, minibatch, hyperparams, device)


def test_train_may_return_model_and_metrics(exp: Experiment) -> None:
    result = exp.run_fit(OriginalFormSpec(), {"lr": [0.05], "batch_size": [32]}, num_epochs=1)
    assert result.table["status"].iloc[0] == "done"
