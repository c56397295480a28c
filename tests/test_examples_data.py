"""The bundled examples: data writers, experiment files and their specs (no engine)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from cerebro.examples import EXAMPLES, digits, example_path, mnist
from cerebro.examples._data import load_mnist_5k, write_digits, write_mnist
from cerebro.spec import ETLSpec, MinibatchSpec, check_spec

SMALL = {"n_train": 60, "n_val": 20, "n_test": 20}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def _ids(path: str) -> set[int]:
    return set(pd.read_csv(path)["id"])


@pytest.fixture(scope="module")
def digits_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_digits(tmp_path_factory.mktemp("digits"), seed=1)


@pytest.fixture(scope="module")
def mnist_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_mnist(tmp_path_factory.mktemp("mnist"), seed=1, **SMALL)


# --- digits --------------------------------------------------------------------------------


def test_digits_splits(digits_paths: dict[str, str]) -> None:
    assert sorted(digits_paths) == ["predict_main", "test_main", "train_main", "val_main"]
    frames = {k: pd.read_csv(v) for k, v in digits_paths.items()}
    train, val, test = frames["train_main"], frames["val_main"], frames["test_main"]
    assert list(train.columns) == ["id", *[f"p{i}" for i in range(64)], "label"]
    assert (len(train), len(val), len(test)) == (1258, 270, 269)
    ids = [set(f["id"]) for f in (train, val, test)]
    assert sum(map(len, ids)) == 1797 and set.union(*ids) == set(range(1797))
    assert all(f["id"].is_unique for f in frames.values())
    assert "label" not in frames["predict_main"].columns
    assert set(frames["predict_main"]["id"]) == ids[2]
    assert train["label"].between(0, 9).all() and train.iloc[:, 1:65].max().max() <= 16


def test_digits_idempotent_and_deterministic(tmp_path: Path) -> None:
    first = write_digits(tmp_path / "a", seed=3)
    before = _mtimes(tmp_path / "a")
    assert write_digits(tmp_path / "a", seed=3) == first
    assert _mtimes(tmp_path / "a") == before
    write_digits(tmp_path / "b", seed=3)
    write_digits(tmp_path / "c", seed=4)
    for name in ("train.csv", "val.csv", "test.csv", "predict.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/train.csv").read_bytes() != (tmp_path / "c/train.csv").read_bytes()


# --- mnist ---------------------------------------------------------------------------------


def test_mnist_source_format() -> None:
    images, labels = load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255


def test_mnist_splits_and_pngs(mnist_paths: dict[str, str]) -> None:
    from PIL import Image

    image_dir = Path(mnist_paths["train_dir"])
    assert {mnist_paths[f"{s}_dir"] for s in ("train", "val", "test", "predict")} == {
        str(image_dir)
    }
    frames = {s: pd.read_csv(mnist_paths[f"{s}_main"]) for s in ("train", "val", "test")}
    assert [len(f) for f in frames.values()] == [60, 20, 20]
    assert list(frames["train"].columns) == ["id", "image", "label"]
    ids = [set(f["id"]) for f in frames.values()]
    assert sum(map(len, ids)) == len(set.union(*ids)) == 100
    predict = pd.read_csv(mnist_paths["predict_main"])
    assert list(predict.columns) == ["id", "image"] and set(predict["id"]) == ids[2]
    assert len(list(image_dir.glob("*.png"))) == 100
    images, labels = load_mnist_5k()
    for row in pd.concat(frames.values()).itertuples():
        with Image.open(image_dir / row.image) as img:
            assert img.mode == "L" and img.size == (28, 28)
            np.testing.assert_array_equal(np.asarray(img), images[row.id])
        assert row.label == labels[row.id]


def test_mnist_idempotent_deterministic_and_repairs(tmp_path: Path) -> None:
    a = write_mnist(tmp_path / "a", seed=2, **SMALL)
    before = _mtimes(tmp_path / "a")
    assert write_mnist(tmp_path / "a", seed=2, **SMALL) == a
    assert _mtimes(tmp_path / "a") == before
    # Without the stamp every file is compared: still nothing rewritten.
    (tmp_path / "a" / ".cerebro-stamp.json").unlink()
    write_mnist(tmp_path / "a", seed=2, **SMALL)
    after = _mtimes(tmp_path / "a")
    assert {k: v for k, v in after.items() if "stamp" not in k} == {
        k: v for k, v in before.items() if "stamp" not in k
    }
    # A damaged image is noticed and rewritten.
    png = next((tmp_path / "a" / "images").glob("*.png"))
    good = png.read_bytes()
    png.write_bytes(b"garbage")
    write_mnist(tmp_path / "a", seed=2, **SMALL)
    assert png.read_bytes() == good
    write_mnist(tmp_path / "b", seed=2, **SMALL)
    assert _ids(str(tmp_path / "a/train.csv")) == _ids(str(tmp_path / "b/train.csv"))
    write_mnist(tmp_path / "c", seed=5, **SMALL)
    assert _ids(str(tmp_path / "a/train.csv")) != _ids(str(tmp_path / "c/train.csv"))


def test_mnist_split_sizes(tmp_path: Path) -> None:
    paths = write_mnist(tmp_path, n_train=30, n_val=10, n_test=0)
    assert sorted(paths) == ["train_dir", "train_main", "val_dir", "val_main"]
    assert len(pd.read_csv(paths["val_main"])) == 10
    with pytest.raises(ValueError, match="5000"):
        write_mnist(tmp_path, n_train=4000, n_val=1000, n_test=1)
    with pytest.raises(ValueError):
        write_mnist(tmp_path, n_train=0)


# --- the experiment files ------------------------------------------------------------------


def test_example_path() -> None:
    assert sorted(EXAMPLES) == ["digits", "mnist"]
    assert example_path("digits") == digits.__file__
    assert example_path("mnist") == mnist.__file__
    with pytest.raises(ValueError, match="digits, mnist"):
        example_path("cifar")


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_params_are_written_lazily(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CEREBRO_EXAMPLE_DATA", str(tmp_path))
    spec = importlib.util.spec_from_file_location(f"_fresh_{name}", example_path(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not any(tmp_path.iterdir())  # importing writes nothing
    if name == "mnist":  # keep it fast: write a small slice, as `params` would in full
        params = module.make_params(n_train=30, n_val=10, n_test=10)
    else:
        params = module.params
    assert params["output_dir"] == f"runs/{name}"
    assert Path(params["train_main"]).is_file()
    assert Path(params["train_main"]).parent == tmp_path / name
    assert "batch_size" in module.param_grid
    assert math.prod(len(v) for v in module.param_grid.values()) == 8


@pytest.mark.parametrize("module", [digits, mnist], ids=["digits", "mnist"])
def test_specs_pass_check(module: Any) -> None:
    check_spec(module.etl_spec, ETLSpec)
    check_spec(module.minibatch_spec, MinibatchSpec)


def _batch(module: Any, paths: dict[str, str], n: int, mode: str = "train") -> Any:
    split = "test" if mode == "predict" else "train"
    rows = pd.read_csv(paths[f"{split}_main"]).head(n).to_dict(orient="records")
    object_dir = paths.get(f"{split}_dir")
    pairs = [module.etl_spec.row_prep(r, mode, object_dir) for r in rows]
    x = torch.stack([p[0] for p in pairs])
    if mode == "predict":
        assert all(p[1] is None for p in pairs)
        return x, torch.tensor([r["id"] for r in rows])
    return x, torch.stack([p[1] for p in pairs])


def test_row_prep_shapes(digits_paths: dict[str, str], mnist_paths: dict[str, str]) -> None:
    x, y = _batch(digits, digits_paths, 4)
    assert x.shape == (4, 64) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert y.dtype == torch.int64 and y.shape == (4,)
    x, y = _batch(mnist, mnist_paths, 4)
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() == 1.0
    images, labels = load_mnist_5k()
    row = pd.read_csv(mnist_paths["train_main"]).iloc[0]
    np.testing.assert_allclose(x[0, 0].numpy() * 255, images[row["id"]], atol=1e-3)
    assert y[0].item() == labels[row["id"]]


@pytest.mark.parametrize("module", [digits, mnist], ids=["digits", "mnist"])
def test_train_valtest_predict(
    module: Any, digits_paths: dict[str, str], mnist_paths: dict[str, str]
) -> None:
    paths = digits_paths if module is digits else mnist_paths
    spec = module.minibatch_spec
    hp = {k: v[0] for k, v in module.param_grid.items()}
    torch.manual_seed(0)
    components = spec.create_model_components(hp)
    assert isinstance(components["model"], torch.nn.Module) and "optimizer" in components
    minibatch = _batch(module, paths, 16)
    first = spec.valtest(components, minibatch, hp, torch.device("cpu"))
    losses = []
    for _ in range(5):
        metrics = spec.train(components, minibatch, hp, torch.device("cpu"))
        assert set(metrics) == {"loss", "acc"}
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
        assert 0.0 <= metrics["acc"] <= 1.0
        losses.append(metrics["loss"])
    after = spec.valtest(components, minibatch, hp, torch.device("cpu"))
    assert set(after) == {"loss", "acc"} and after["loss"] < first["loss"]  # it learns
    assert losses[-1] < 3 * math.log(10)
    x, row_ids = _batch(module, paths, 7, mode="predict")
    classes, confidences = spec.predict(components, (x, row_ids), hp, torch.device("cpu"))
    assert isinstance(classes, list) and isinstance(confidences, list)
    assert len(classes) == len(confidences) == 7
    assert all(c in range(10) for c in classes)
    assert all(0.1 <= p <= 1.0 for p in confidences)  # max of a 10-way softmax


def test_cnn_feature_size() -> None:
    model = mnist.build_cnn(32)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert digits.build_mlp(16)(torch.zeros(3, 64)).shape == (3, 10)


def test_plain_benchmark_runner(digits_paths: dict[str, str]) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        from _plain import load_split, run_plain
    finally:
        sys.path.pop(0)
    train = load_split(digits.etl_spec, digits_paths["train_main"], None, "train")
    val = load_split(digits.etl_spec, digits_paths["val_main"], None, "val")
    assert train[0].shape == (1258, 64) and val[1].shape == (270,)
    configs = [
        {"hidden": 32, "lr": 3e-3, "batch_size": 64},
        {"hidden": 16, "lr": 1e-3, "batch_size": 128},
    ]
    wall, results = run_plain(digits, configs, train, val, num_epochs=2, threads=1)
    assert len(results) == 2 and wall >= sum(r.wall_s for r in results) > 0
    assert [r.hyperparams for r in results] == configs
    assert results[0].val_acc > 0.5  # 2 epochs of digits are plenty to beat chance
    again = run_plain(digits, configs[:1], train, val, num_epochs=2, threads=1)[1][0]
    assert again.val_loss == results[0].val_loss  # seeded: same init and order
