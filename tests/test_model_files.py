"""Model files and tags as the original had them: ``model_tag`` relative to ``models_dir``,
and the original's format (``torch.save`` of the whole ``create_model_components`` dict)
for ``run_test``, ``run_predict`` and as a starting point in ``run_fit``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from cerebro import Experiment, ParamsError
from toy import ToySpec

GRID = {"lr": [0.05, 0.01], "hidden": [12], "batch_size": [32]}


@pytest.fixture(scope="module")
def fitted(
    tmp_path_factory: pytest.TempPathFactory, toy_data: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """One fit of the session's toy data, with an (empty at fit time) ``models_dir``."""
    root = tmp_path_factory.mktemp("model-files")
    models = root / "SavedModels"
    models.mkdir()
    params = dict(toy_data, models_dir=str(models))
    exp = Experiment(dict(params, output_dir=str(root / "run")), workers=2, verbose=False)
    result = exp.run_fit(ToySpec(), GRID, 1)
    yield {"exp": exp, "result": result, "models": models, "root": root}
    exp.close()


def _trained(exp: Experiment, result: Any, model_id: str) -> tuple[dict[str, Any], str]:
    """The model's components with their trained state, and its checkpoint file."""
    db = sqlite3.connect(exp.catalog_path)
    (ckpt,) = db.execute(
        "SELECT checkpoint FROM models WHERE model_id=? AND fit_id=?", (model_id, result.fit_id)
    ).fetchone()
    db.close()
    return result.load_model(model_id, ToySpec()), ckpt


def _original_file(path: Path, components: dict[str, Any]) -> Path:
    """The original's format: the whole dict, module and optimizer objects."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(components, path)
    return path


def test_model_tag_relative_to_models_dir(fitted: dict[str, Any]) -> None:
    exp, models = fitted["exp"], fitted["models"]
    _, ckpt = _trained(fitted["exp"], fitted["result"], "m001")
    (models / "cerebro").mkdir()
    (models / "cerebro" / "m001.pt").write_bytes(Path(ckpt).read_bytes())
    assert exp.run_test(ToySpec(), "cerebro/m001.pt") == exp.run_test(ToySpec(), "m001")


def test_an_original_model_file_in_run_test_and_run_predict(fitted: dict[str, Any]) -> None:
    """The file's objects are the model: its architecture (hidden=12, which ToySpec builds
    only when told) and weights, with no hyperparameters needed (ToySpec reads ``lr``);
    the numbers are those the same weights give through Cerebro's checkpoint."""
    exp = fitted["exp"]
    components, _ = _trained(fitted["exp"], fitted["result"], "m000")
    _original_file(fitted["models"] / "model_3" / "model_object_3.pt", components)

    metrics = exp.run_test(ToySpec(), "model_3/model_object_3.pt", 60)  # positional size
    assert metrics == exp.run_test(ToySpec(), "m000", 60)
    path = exp.run_predict(ToySpec(), "model_3/model_object_3.pt", 60)
    assert path == exp.output_dir / "predictions" / "model_object_3.csv"
    same = pd.read_csv(exp.run_predict(ToySpec(), "m000", 60))
    assert pd.read_csv(path).equals(same) and len(same) == 60

    db = sqlite3.connect(exp.catalog_path)
    rows = db.execute("SELECT model_id, tag, checkpoint FROM evaluations").fetchall()
    db.close()
    file = str(fitted["models"] / "model_3" / "model_object_3.pt")
    assert ("model_object_3", "model_object_3", file) in rows

    with pytest.raises(
        ParamsError,
        match=r"model file .*model_object_3\.pt records no hyperparameters, so run_test needs "
        r"the batch size: run_test\(spec, '.*model_object_3\.pt', batch_size=64\)",
    ):
        exp.run_test(ToySpec(), "model_3/model_object_3.pt")


def test_a_state_dict_file_takes_the_hyperparameters_of_the_model_it_is_named_after(
    fitted: dict[str, Any],
) -> None:
    exp = fitted["exp"]
    components, _ = _trained(fitted["exp"], fitted["result"], "m001")
    (fitted["models"] / "sd").mkdir()
    torch.save({k: v.state_dict() for k, v in components.items()}, fitted["models"] / "sd/m001.pt")
    assert exp.run_test(ToySpec(), "sd/m001.pt") == exp.run_test(ToySpec(), "m001")


def _write(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        torch.save(content, path)


ACCEPTED = (
    r"Accepted model files: a Cerebro checkpoint \(as in DIR/models/<model_id>/\), a dict of "
    r"state dicts \{component: module.state_dict\(\)\} .*, or the original Cerebro's format: "
    r"torch.save of the whole create_model_components dict"
)


@pytest.mark.parametrize(
    "content, holds",
    [
        ([1, 2, 3], r"is not a model file Cerebro can use: it holds a list"),
        ("model weights\n", r"could not be loaded with torch.load \(UnpicklingError"),
        ({"model": torch.nn.Linear(2, 2)}, r"model objects without an optimizer \(keys"),
        (torch.nn.Linear(2, 2).state_dict(), r"one module's state_dict .* torch.save\("),
        ({"epochs": 3, "note": "x"}, r"it holds a dict of int, str"),
        ({}, r"it holds an empty dict"),
    ],
    ids=["a pickled list", "a text file", "no optimizer", "a bare state dict", "a dict", "{}"],
)
def test_a_file_in_no_accepted_format_is_refused_naming_them(
    fitted: dict[str, Any], content: Any, holds: str
) -> None:
    path = fitted["models"] / "bad" / "model.pt"
    _write(path, content)
    with pytest.raises(ParamsError, match=rf"model_tag 'bad/model.pt': {path} .*{holds}"):
        fitted["exp"].run_predict(ToySpec(), "bad/model.pt", 16)
    with pytest.raises(ParamsError, match=ACCEPTED):
        fitted["exp"].run_test(ToySpec(), "bad/model.pt", 16)


def test_model_tag_path_errors(
    fitted: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = fitted["exp"]
    with pytest.raises(
        ParamsError,
        match=r"unknown model_tag 'nowhere.pt': use 'best', a model id of the latest fit "
        r"\(m000, m001\), or the path of a model file, or a path relative to models_dir .*"
        r"SavedModels\.",
    ):
        exp.run_test(ToySpec(), "nowhere.pt")
    components, _ = _trained(fitted["exp"], fitted["result"], "m000")
    _original_file(fitted["models"] / "twice" / "m.pt", components)
    _original_file(tmp_path / "twice" / "m.pt", components)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ParamsError,
        match=r"model_tag 'twice/m.pt' names two files: .*twice/m.pt \(from the working "
        r"directory\) and .*SavedModels/twice/m.pt \(in models_dir\); give the one you mean "
        r"as an absolute path",
    ):
        exp.run_test(ToySpec(), "twice/m.pt", 16)


def _weights(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def _momentum(opt: torch.optim.Optimizer) -> float:
    return float(sum(s["momentum_buffer"].double().abs().sum() for s in opt.state.values()))


class StartSpec(ToySpec):
    """Reports, with each train minibatch, the sum of the weights and of the optimizer's
    momentum as they were before that minibatch's step."""

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        before = {
            "wsum": _weights(model_object["model"]),
            "msum": _momentum(model_object["optimizer"]),
        }
        return {**super().train(model_object, minibatch, hyperparams, device), **before}


def _first_minibatch(catalog: Path, model_id: str) -> dict[str, float]:
    db = sqlite3.connect(catalog)
    (metrics,) = db.execute(
        "SELECT metrics FROM hops WHERE model_id=? AND kind='train' AND status='done' "
        "ORDER BY hop_id LIMIT 1",
        (model_id,),
    ).fetchone()
    db.close()
    return {k: v[0] for k, v in json.loads(metrics)["values"].items()}


def test_an_original_model_file_as_a_starting_point(
    fitted: dict[str, Any], tmp_path: Path
) -> None:
    """``models_dir/m000.pt`` in the original's format: m000 starts from its weights and
    momentum, exactly as from the same state in a Cerebro checkpoint; m001 starts fresh."""
    components, _ = _trained(fitted["exp"], fitted["result"], "m000")
    x = torch.randn(8, 6)
    components["optimizer"].zero_grad()
    torch.nn.functional.cross_entropy(components["model"](x), torch.zeros(8).long()).backward()
    components["optimizer"].step()  # momentum to carry over
    want_w, want_m = _weights(components["model"]), _momentum(components["optimizer"])
    pre = tmp_path / "pre"
    start = _original_file(pre / "m000.pt", components)
    saved = start.read_bytes()
    data = fitted["exp"].data_dir
    params = {"etl_dir": str(data), "models_dir": str(pre), "output_dir": str(tmp_path / "run")}
    with Experiment(params, workers=2, verbose=False) as exp:
        result = exp.run_fit(StartSpec(), GRID, 1)
        assert set(result.table["status"]) == {"done"}
        got = {m: _first_minibatch(exp.catalog_path, m) for m in ("m000", "m001")}
    assert got["m000"]["wsum"] == pytest.approx(want_w, rel=1e-12)
    assert got["m000"]["msum"] == pytest.approx(want_m, rel=1e-12) and want_m > 0
    assert got["m001"]["msum"] == 0  # no file: a fresh model
    assert start.read_bytes() == saved and sorted(p.name for p in pre.iterdir()) == ["m000.pt"]
    # the converted copy was a step like any other: superseded by the first hop's
    assert not list((tmp_path / "run" / "models" / "m000").glob("imported-*"))


def test_a_bad_starting_point_is_refused_before_any_work(
    fitted: dict[str, Any], tmp_path: Path
) -> None:
    pre = tmp_path / "pre"
    _write(pre / "m001.pt", "not a model\n")
    data = fitted["exp"].data_dir
    params = {"etl_dir": str(data), "models_dir": str(pre), "output_dir": str(tmp_path / "run")}
    exp = Experiment(params, workers=2, verbose=False)
    with pytest.raises(
        ParamsError,
        match=r"the starting point of model m001: .*m001.pt could not be loaded with "
        r"torch.load .*Accepted model files: a Cerebro checkpoint",
    ):
        exp.run_fit(ToySpec(), GRID, 1)
    exp.close()
