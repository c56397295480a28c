"""One meaning of "best" (NOTE [ one meaning of best ]): FitResult, the progress bar,
`cerebro status` and the report rank models the same way, by the best value at any epoch,
and say which metric and direction they used. Pure catalog data: no worker starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cerebro import FitResult, cli
from cerebro._bar import postfix
from cerebro._controller import replay
from cerebro._fit_state import FitState
from cerebro._ranking import Best, default_objective, rank
from cerebro._rundir import save_experiment
from cerebro.catalog import Catalog
from cerebro.params import expand_grid
from cerebro.report import read_status, status_text, write_report
from cerebro.scheduler import Scheduler
from toy import ToySpec

GRID = {"lr": [0.1, 0.2, 0.3], "batch_size": [16]}
SIGNATURE = {"grid": GRID, "num_epochs": 3, "seed": 1, "policy": "fixed"}
# The metric names of the original Cerebro's notebooks: no plain "loss" key. By each
# model's LAST epoch m001 is best (0.55); at ANY epoch m000 and m002 reach 0.5, m002 one
# epoch earlier, so m002 is best. The train loss would pick m001 as well.
VAL_LOSS = {"m000": [0.9, 0.5, 0.6], "m001": [0.8, 0.7, 0.55], "m002": [0.5, 0.9, 0.9]}
VAL_ACC = {"m000": [0.6, 0.7, 0.9], "m001": [0.6, 0.9, 0.8], "m002": [0.7, 0.7, 0.7]}
TRAIN_LOSS = {"m000": [0.4, 0.3, 0.2], "m001": [0.3, 0.2, 0.1], "m002": [0.5, 0.4, 0.3]}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished 3-epoch fit's catalog, written through the Catalog API."""
    configs = expand_grid(GRID)
    cat = Catalog(tmp_path / "catalog.sqlite")
    fit_id = cat.create_fit(
        json.dumps(SIGNATURE, sort_keys=True),
        {"models": 3, "workers": 2},
        [(c.model_id, c.hyperparams) for c in configs],
    )
    for c in configs:
        m = c.model_id
        for e in range(3):
            metrics = {
                "train": {"epoch_loss": TRAIN_LOSS[m][e]},
                "val": {"epoch_loss": VAL_LOSS[m][e], "epoch_top_1_acc": VAL_ACC[m][e]},
            }
            cat.epoch_done(fit_id, m, e, metrics, None)
        cat.set_model_status(fit_id, m, "done")
    cat.set_fit_status(fit_id, "done")
    cat.close()
    return tmp_path


def test_the_default_objective_is_a_validation_metric() -> None:
    assert default_objective({"train_loss", "val_loss", "val_acc"}) == "val_loss"
    names = {"train_loss", "train_epoch_loss", "val_epoch_top_1_acc", "val_epoch_loss"}
    assert default_objective(names) == "val_epoch_loss"
    assert default_objective({"train_loss", "val_top_1_acc", "val_f1"}) == "val_f1"
    assert default_objective({"train_acc", "train_loss"}) == "train_loss"  # no val split
    assert default_objective(set()) == "val_loss"


def test_rank_best_epoch_then_earliest_then_lowest_id() -> None:
    rows = [
        {"model_id": m, "epoch": e, "split": "val", "name": "loss", "value": v}
        for m, vs in {"m000": [0.5, 0.4], "m001": [0.4, 0.9], "m002": [0.4, float("nan")]}.items()
        for e, v in enumerate(vs)
    ]
    assert rank(rows, "val_loss", "min") == [
        Best("m001", 0, 0.4),
        Best("m002", 0, 0.4),
        Best("m000", 1, 0.4),
    ]
    assert rank(rows, "val_loss", "max")[0] == Best("m001", 1, 0.9)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max', got 'lowest'"):
        rank(rows, "val_loss", "lowest")


def test_result_status_and_report_name_the_same_best(run_dir: Path) -> None:
    result = FitResult(run_dir / "catalog.sqlite", 1)
    assert (result.objective, result.mode) == ("val_epoch_loss", "min")
    best = result.best
    assert (best["model_id"], best["epoch"], best["value"]) == ("m002", 1, 0.5)
    assert (best["objective"], best["mode"]) == ("val_epoch_loss", "min")
    table = result.table.set_index("model_id")
    assert table.loc["m000", "best_epoch"] == 2 and table.loc["m000", "best_val_epoch_loss"] == 0.5
    assert table.attrs == {
        "objective": "val_epoch_loss",
        "mode": "min",
        "best_among": "models early stopping did not stop",
    }
    assert set(result.history["epoch"]) == {1, 2, 3}

    st = read_status(run_dir)
    assert st.best is not None
    assert (st.objective, st.mode, st.best["model_id"], st.best["epoch"]) == (
        "val_epoch_loss",
        "min",
        "m002",
        1,
    )
    text = status_text(run_dir)
    assert "best by val_epoch_loss (min): m002 val_epoch_loss=0.5, epoch 1 of 3" in text
    page = write_report(run_dir).read_text()
    assert "best model by val_epoch_loss (min)" in page
    assert 'm002 <span class="obj">val_epoch_loss = 0.5</span>' in page
    assert "at epoch 1 of 3" in page

    by_acc = FitResult(run_dir / "catalog.sqlite", 1, "val_epoch_top_1_acc", "max").best
    st_acc = read_status(run_dir, "val_epoch_top_1_acc", "max")
    assert st_acc.best is not None
    assert by_acc["model_id"] == st_acc.best["model_id"] == "m001"  # 0.9 in epoch 2, first
    assert by_acc["epoch"] == st_acc.best["epoch"] == 2


def test_without_an_objective_everything_ranks_as_the_fit_was_run(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fit = {**{"param_grid": GRID}, **{k: v for k, v in SIGNATURE.items() if k != "grid"}}
    fit |= {"on_error": "continue", "objective": "val_epoch_top_1_acc", "mode": "max"}
    save_experiment(run_dir, {"fit": fit}, "fit", ToySpec())  # what run_fit records
    result = FitResult(run_dir / "catalog.sqlite", 1)
    assert (result.objective, result.mode, result.best["model_id"]) == (
        "val_epoch_top_1_acc",
        "max",
        "m001",
    )
    st = read_status(run_dir)
    assert st.best is not None and st.best["model_id"] == "m001"
    assert "best by val_epoch_top_1_acc (max): m001" in status_text(run_dir)
    assert cli.main(["status", str(run_dir)]) == 0  # no --mode: not "min" either
    assert "best by val_epoch_top_1_acc (max): m001" in capsys.readouterr().out
    # another objective given: its own mode, not the one the fit was run with
    assert FitResult(run_dir / "catalog.sqlite", 1, "val_epoch_loss").mode == "min"


def _state(run_dir: Path, **kw: Any) -> tuple[Catalog, FitState, Scheduler]:
    configs = expand_grid(GRID)
    sched = Scheduler(
        [c.model_id for c in configs],
        num_epochs=3,
        train_owner={0: 0, 1: 1},
        val_owner={0: 0, 1: 1},
        policy="fixed",
    )
    state = FitState(
        1, ToySpec(), {c.model_id: c for c in configs}, run_dir / "models", 1, 3, "continue", **kw
    )
    return Catalog(run_dir / "catalog.sqlite"), state, sched


def test_a_resumed_progress_bar_shows_the_best_of_the_whole_fit(run_dir: Path) -> None:
    catalog, state, sched = _state(run_dir)
    try:
        replay(catalog, state, sched)  # what a resumed fit does first
    finally:
        catalog.close()
    assert state.objective == "val_epoch_loss"
    assert state.best == Best("m002", 0, 0.5)
    assert postfix(state, sched) == "epoch 1/3, best val_epoch_loss=0.5 (min)"
    catalog, state, sched = _state(run_dir, objective="val_epoch_top_1_acc", mode="max")
    try:
        replay(catalog, state, sched)
    finally:
        catalog.close()
    assert postfix(state, sched) == "epoch 1/3, best val_epoch_top_1_acc=0.9 (max)"
