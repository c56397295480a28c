"""The original Cerebro's ImageNet notebook, its cells pasted as written.

Only the data paths, the model constructor (a tiny CNN instead of ResNet-50) and the epoch
count differ from what a user of the original wrote: imports from the original's modules,
``set_features`` as one bool per column, ``object_dir + "/" + row["filepath"]``, a spec
with its own ``__init__`` and ``val_test``, whole-object model files, positional batch
sizes, ``reset()`` and a second ``run_fit`` on the same objects.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

CLASSES = {"0": "tench", "1": "goldfish", "2": "great white shark"}


def _image_data(root: Path) -> dict[str, str]:
    """PNG files of three classes (which quarter of the image is bright), the original's
    five-column CSVs and a label-mapping JSON."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths: dict[str, str] = {}
    row_id = 0
    for split, n in (("train", 240), ("val", 60), ("test", 60), ("predict", 30)):
        folder = root / "images" / split
        (folder / "n01").mkdir(parents=True)
        rows = []
        for _ in range(n):
            label = int(rng.integers(0, 3))
            pixels = rng.integers(0, 60, size=(8, 8))
            pixels[: 4 * (label // 2 + 1), 4 * (label % 2) : 4 * (label % 2) + 4] += 190
            name = f"n01/img_{row_id:05d}.png"
            Image.fromarray(pixels.astype(np.uint8), mode="L").save(folder / name)
            rows.append({"id": row_id, "label": label, "filepath": name, "h": 8, "w": 8})
            row_id += 1
        df = pd.DataFrame(rows)
        if split == "predict":
            df["label"] = -1
        df.to_csv(root / f"{split}.csv", index=False)
        paths[f"{split}_main"] = str(root / f"{split}.csv")
        paths[f"{split}_dir"] = str(folder)
    (root / "imagenet_label_mapping.json").write_text(json.dumps(CLASSES))
    return paths


# --- the notebook's cells, as the original's users wrote them --------------------------------

NOTEBOOK = """
from cerebro.etl.etl_spec import ETLSpec
from cerebro.experiment import Experiment
from cerebro.mop.minibatch_spec import MiniBatchSpec

import torch
import torch.nn as nn


class MyETL(ETLSpec):
    def __init__(self):
        pass

    def initialize_worker(self):
        pass

    def read_misc(self, misc_path):
        pass

    def set_features(self):
        return [False, False, True, False, False]

    def row_prep(self, row, mode, object_dir):
        import numpy as np
        from PIL import Image

        image = Image.open(object_dir + "/" + row["filepath"]).convert("L")
        x = torch.tensor(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)
        if mode == "predict":
            return x, None
        return x, torch.tensor(row["label"])


def tiny_cnn():  # in place of torchvision.models.resnet50()
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )


class MySpec(MiniBatchSpec):
    def __init__(self):
        self.criterion = nn.CrossEntropyLoss()

    def initialize_worker(self):
        pass

    def read_misc(self, misc_path):
        import json

        with open(misc_path + "/imagenet_label_mapping.json") as f:
            self.label_mapping = json.load(f)

    def create_model_components(self, hyperparams):
        torch.manual_seed(0)
        model = tiny_cnn()
        optimizer = torch.optim.SGD(
            model.parameters(), lr=hyperparams["learning_rate"], momentum=0.9
        )
        return {"imagenet_model": model, "optimizer": optimizer}

    def metrics_agg(self, mode, hyperparams, metrics):
        if mode == "predict":
            return {}
        loss = sum(metrics["loss"]) / len(metrics["loss"])
        top_1 = sum(metrics["top_1_acc"]) / len(metrics["top_1_acc"])
        print(f"{mode}: loss {loss:.4f}, top-1 {top_1:.3f}")
        return {"epoch_loss": loss, "epoch_top_1_acc": top_1}

    def train(self, model_object, minibatch, hyperparams, device):
        model = model_object["imagenet_model"]
        optimizer = model_object["optimizer"]
        images, labels = minibatch
        images, labels = images.to(device), labels.to(device)
        model.train()
        optimizer.zero_grad()
        outputs = model(images)
        loss = self.criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        print(f"Loss: {loss.item()}")
        top_1 = (outputs.argmax(1) == labels).float().mean().item()
        updated_model_object = {"imagenet_model": model, "optimizer": optimizer}
        return updated_model_object, {"loss": loss.item(), "top_1_acc": top_1}

    def val_test(self, model_object, minibatch, hyperparams, device):
        model = model_object["imagenet_model"]
        images, labels = minibatch
        images, labels = images.to(device), labels.to(device)
        model.eval()
        with torch.no_grad():
            outputs = model(images)
            loss = self.criterion(outputs, labels)
        top_1 = (outputs.argmax(1) == labels).float().mean().item()
        return {"loss": loss.item(), "top_1_acc": top_1}

    def predict(self, model_object, minibatch, hyperparams, device):
        model = model_object["imagenet_model"]
        images, _ = minibatch
        model.eval()
        with torch.no_grad():
            probabilities = torch.softmax(model(images.to(device)), dim=1)
        top_p, top_class = probabilities.topk(1, dim=1)
        top_classes = [self.label_mapping[str(c)] for c in top_class[:, 0].tolist()]
        top_probabilities = top_p[:, 0].tolist()
        return top_classes, top_probabilities


etl_spec = MyETL()
spec = MySpec()
param_grid = {"learning_rate": [0.05, 0.01], "batch_size": [16, 32]}
num_epochs = 2
"""


def test_the_original_notebook_runs_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    paths = _image_data(tmp_path / "data")
    cells: dict[str, Any] = {}
    exec(compile(NOTEBOOK, "cerebro_imagenet.ipynb", "exec"), cells)  # noqa: S102
    Experiment, etl_spec, spec = cells["Experiment"], cells["etl_spec"], cells["spec"]
    param_grid, num_epochs = cells["param_grid"], cells["num_epochs"]
    params = {
        **paths,
        "misc": [str(tmp_path / "data" / "imagenet_label_mapping.json")],
        "etl_dir": str(tmp_path / "ProcessedData"),
        "models_dir": str(tmp_path / "SavedModels"),
        "output_dir": str(tmp_path / "SavedArtifacts"),
    }
    (tmp_path / "SavedModels").mkdir()

    experiment = Experiment(params)
    experiment.run_etl(etl_spec, fraction=0.5)
    assert (tmp_path / "ProcessedData" / "manifest.json").exists()  # the ETL wrote etl_dir
    result = experiment.run_fit(spec, param_grid, num_epochs)
    table = result.table
    assert set(table["status"]) == {"done"} and len(table) == 4
    history = result.history
    val = history[history["split"] == "val"]
    assert set(val["metric"]) == {"epoch_loss", "epoch_top_1_acc"}  # metrics_agg's keys
    assert len(val) == 4 * num_epochs * 2

    model_id = table["model_id"].iloc[1]
    capsys.readouterr()
    test_metrics = experiment.run_test(spec, model_id, 128)
    assert set(test_metrics) >= {"test_epoch_loss", "test_epoch_top_1_acc"}
    # metrics_agg's print, on the driver, shown with the model it was for
    assert f"[driver · {model_id}] test: loss " in capsys.readouterr().out

    # A model file as the original wrote it: the whole create_model_components dict.
    components = result.load_model(model_id)
    (tmp_path / "SavedModels" / "model_3").mkdir()
    torch.save(components, tmp_path / "SavedModels" / "model_3" / "model_object_3.pt")
    out = experiment.run_predict(spec, "model_3/model_object_3.pt", 128)
    predictions = pd.read_csv(out)
    assert len(predictions) == 30 and predictions["row_id"].is_monotonic_increasing
    assert set(predictions["output_class"]) <= set(CLASSES.values())
    assert predictions["confidence"].between(0, 1).all()
    # the same weights through Cerebro's own checkpoint give the same predictions
    same = pd.read_csv(experiment.run_predict(spec, model_id, 128))
    assert same["output_class"].tolist() == predictions["output_class"].tolist()
    assert np.allclose(same["confidence"], predictions["confidence"])
    same_test = experiment.run_test(spec, "model_3/model_object_3.pt", 128)
    assert same_test == pytest.approx(test_metrics)

    experiment.reset()
    again = experiment.run_fit(spec, param_grid, num_epochs)  # the same objects, once more
    pd.testing.assert_frame_equal(again.table, table)
    db = sqlite3.connect(Path(params["output_dir"]) / "catalog.sqlite")
    try:
        fits = db.execute("SELECT COUNT(*) FROM fits").fetchone()[0]
    finally:
        db.close()
    assert fits == 1  # the finished fit was found, not trained again
    experiment.close()
