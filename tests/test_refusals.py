"""A refused call leaves its run directory byte for byte as it was; a fit whose spec the probe
rejected is replaced by the fixed one; a resume with edited spec code is refused unless
allowed; run_predict without a predict hook fails on the driver. Real runs, one per test."""

from __future__ import annotations

import hashlib
import importlib
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from cerebro import Experiment
from cerebro.errors import ParamsError, SpecError, UserCodeError
from toy import ToyETL, ToySpec, done_hops

GRID = {"lr": [0.05, 0.01], "batch_size": [32]}

# A module the test edits between an interrupt and the resume: its spec is pickled by
# reference (as one imported from the user's own module), so a resume runs the edited code.
# metrics_agg runs on the driver: while the file STOP exists, the end of the first train
# epoch interrupts the fit as Ctrl-C would, after some hops are in the catalog.
EDITABLE = """
import os
from toy import ToySpec

class EditableSpec(ToySpec):
    def __init__(self, stop):
        self.stop = stop

    def train(self, model_object, minibatch, hyperparams, device):
        out = super().train(model_object, minibatch, hyperparams, device)
        return out  # VERSION

    def metrics_agg(self, mode, hyperparams, metrics):
        if mode == "train" and os.path.exists(self.stop):
            raise KeyboardInterrupt
        return super().metrics_agg(mode, hyperparams, metrics)
"""


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file under ``run_dir`` by its sha256 (the lock file only as being there: its
    content is the pid of whoever last held it)."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(run_dir))
            out[rel] = "lock" if rel == ".lock" else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _import_editable(folder: Path, version: str) -> Any:
    """(Re)write and import the module ``editable_spec`` in ``folder`` at ``version``."""
    (folder / "editable_spec.py").write_text(EDITABLE.replace("return out  # VERSION", version))
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)
    sys.modules.pop("editable_spec", None)
    importlib.invalidate_caches()
    return importlib.import_module("editable_spec")


def _fit_row(run_dir: Path) -> tuple[int, str]:
    db = sqlite3.connect(run_dir / "catalog.sqlite")
    try:
        return db.execute("SELECT fit_id, status FROM fits").fetchone()  # type: ignore[no-any-return]
    finally:
        db.close()


class OtherETL(ToyETL):
    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        x, y = super().row_prep(row, mode, object_dir)
        return x * 2, y


def test_refusals_change_nothing_and_edited_code_needs_allowing(
    toy_params: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod_dir = tmp_path / "mod"
    mod_dir.mkdir()
    monkeypatch.syspath_prepend(str(mod_dir))  # before the workers start: they get sys.path
    monkeypatch.delitem(sys.modules, "editable_spec", raising=False)
    v1 = _import_editable(mod_dir, "return out")
    run = Path(toy_params["output_dir"])
    stop = tmp_path / "stop"
    stop.touch()
    with Experiment(toy_params, workers=2, verbose=False) as exp:
        with pytest.raises(KeyboardInterrupt):
            exp.run(ToyETL(), v1.EditableSpec(str(stop)), GRID, 2)
    assert _fit_row(run)[1] == "stopped" and done_hops(run / "catalog.sqlite") > 0
    before = snapshot(run)
    assert not any(name.endswith(("-wal", "-shm")) for name in before)

    exp = Experiment(toy_params, workers=2, verbose=False)
    refusals = [
        # another grid, through run (it used to rewrite experiment.json and specs/ first)
        (
            lambda: exp.run(
                ToyETL(), v1.EditableSpec(str(stop)), {"lr": [0.1], "batch_size": [32]}, 2
            ),
            "already holds a different fit",
        ),
        (
            lambda: exp.run_fit(v1.EditableSpec(str(stop)), GRID, 3),
            "already holds a different fit",
        ),
        # other ETL code: the ETL would replace the stopped fit's data
        (lambda: exp.run(OtherETL(), v1.EditableSpec(str(stop)), GRID, 2), r"on other data"),
        # more workers than the partitions the ETL makes
        (
            lambda: Experiment(toy_params, workers=3, verbose=False).run(
                ToyETL(), v1.EditableSpec(str(stop)), GRID, 2, partitions=2
            ),
            "3 workers but the data has 2 partitions",
        ),
        (lambda: exp.run_predict(_no_predict()), r"define predict\(self, model_object"),
    ]
    for act, match in refusals:
        with pytest.raises((ParamsError, SpecError), match=match):
            act()
        assert snapshot(run) == before, match

    # train() edited between the interrupt and the resume: refused, through each way in
    v2 = _import_editable(mod_dir, 'return {**out, "edited": 1.0}')
    for act in (
        lambda: Experiment.resume(run, verbose=False),
        lambda: exp.run_fit(v2.EditableSpec(str(stop)), GRID, 2),
        lambda: exp.run(ToyETL(), v2.EditableSpec(str(stop)), GRID, 2),
    ):
        with pytest.raises(ParamsError, match=r"trained with other code.*allow_changed_code=True"):
            act()
        assert snapshot(run) == before
    exp.close()

    # the original fit is still there to continue, with the new code once allowed
    stop.unlink()
    result = Experiment.resume(run, verbose=False, allow_changed_code=True)
    assert set(result.table["status"]) == {"done"}
    assert _fit_row(run)[1] == "done"
    assert not [p.name for p in run.iterdir() if p.name.endswith(("-wal", "-shm"))]
    # the new code is now the fit's: resuming with it again is no longer refused
    assert Experiment.resume(run, verbose=False).fit_id == result.fit_id


def _spec_source(train_returns: str) -> str:
    return f"""
import torch
from cerebro import MinibatchSpec

class Spec(MinibatchSpec):
    def create_model_components(self, hyperparams):
        model = torch.nn.Linear(6, 2)
        return {{"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}}

    def train(self, model_object, minibatch, hyperparams, device):
        x, y = minibatch
        model_object["optimizer"].zero_grad()
        loss = torch.nn.functional.cross_entropy(model_object["model"](x), y)
        loss.backward()
        model_object["optimizer"].step()
        return {train_returns}

    def valtest(self, model_object, minibatch, hyperparams, device):
        x, y = minibatch
        return {{"loss": torch.nn.functional.cross_entropy(model_object["model"](x), y).item()}}
"""


def _spec(train_returns: str) -> Any:
    """A spec class ``Spec`` as a user's file defines it, by value (not importable): the
    same name in both versions of the file, as when the user fixes it in place."""
    ns: dict[str, Any] = {"__name__": "users_file"}
    exec(compile(_spec_source(train_returns), "users_file.py", "exec"), ns)
    return ns["Spec"]()


def _no_predict() -> Any:
    return _spec('{"loss": loss.item()}')


def test_a_fixed_spec_replaces_the_fit_the_probe_refused(
    toy_params: dict[str, str], tmp_path: Path
) -> None:
    class FailingETL(ToyETL):  # defined here: it travels by value, as in an experiment file
        def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
            if mode == "val":
                raise ValueError("no such column")  # ROW_PREP_LINE
            return super().row_prep(row, mode, object_dir)

    with Experiment(toy_params, workers=2, verbose=False) as exp:
        # a failing row_prep's traceback names this file and line, not <dynamic-code>
        with pytest.raises(UserCodeError) as e:
            exp.run_etl(FailingETL())
        line = next(
            i + 1
            for i, text in enumerate(Path(__file__).read_text().splitlines())
            if text.rstrip().endswith("# ROW_PREP_LINE")
        )
        assert "<dynamic-code>" not in e.value.user_traceback
        assert f'File "{__file__}", line {line}, in row_prep' in e.value.user_traceback
        assert 'raise ValueError("no such column")' in e.value.user_traceback

        # train returns a tensor: the probe refuses it before any hop is recorded ...
        with pytest.raises(UserCodeError, match="checked on one minibatch"):
            exp.run(ToyETL(), _spec("loss"), GRID, 1)
        assert done_hops(exp.catalog_path) == 0
        # ... and the fixed spec (the same class name, other code) simply runs
        result = exp.run(ToyETL(), _spec('{"loss": loss.item()}'), GRID, 1)
        assert set(result.table["status"]) == {"done"}
        # a broken spec in a fit of its own, then a different fit: no overwrite needed,
        # since the broken one trained nothing
        other = {"lr": [0.1], "batch_size": [16]}
        with pytest.raises(UserCodeError, match="checked on one minibatch"):
            exp.run_fit(_spec("[loss.item()]"), other, 1, overwrite=True)
        result = exp.run_fit(ToySpec(), GRID, 1)
        assert set(result.table["status"]) == {"done"}
        # predict without a predict hook: named on the driver, before any worker is asked
        with pytest.raises(SpecError, match=r"Spec has no predict hook.*define predict\("):
            exp.run_predict(_no_predict())
