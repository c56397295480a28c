"""Example experiment: an MLP on scikit-learn's 8×8 digits (1,797 images, 10 classes).

Run it with ``cerebro example digits`` or ``cerebro run path/to/digits.py``; copy this file
as the template of your own experiment. An experiment file defines, at module level,
``etl_spec``, ``minibatch_spec``, ``params``, ``param_grid`` and ``num_epochs`` (optionally
``seed``, ``fraction``, ``workers``).

The data is written on first use of ``params`` (not on import, so worker processes that
import this module to rebuild the specs write nothing) under
``$CEREBRO_EXAMPLE_DATA/digits`` (default ``./cerebro-examples/digits``).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from cerebro import ETLSpec, MinibatchSpec

__all__ = [
    "DigitsETL",
    "DigitsSpec",
    "build_mlp",
    "eval_step",
    "make_optimizer",
    "predict_step",
    "train_step",
]

# --- the model and one step of training / evaluation, as plain functions ------------------
# (bench/ trains the very same functions in a plain PyTorch loop to compare with Cerebro)


def build_mlp(hidden: int) -> torch.nn.Module:
    """64 pixels -> ``hidden`` -> 10 classes."""
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
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


class DigitsETL(ETLSpec):
    """A CSV row ``id, p0..p63, label`` -> (float pixels in [0, 1], class)."""

    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        x = torch.tensor([row[f"p{i}"] for i in range(64)], dtype=torch.float32) / 16
        return x, (None if mode == "predict" else torch.tensor(int(row["label"])))


class DigitsSpec(MinibatchSpec):
    """MLP 64-``hidden``-10, Adam (``lr``, ``weight_decay``), cross-entropy; loss and acc."""

    def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
        model = build_mlp(int(hyperparams["hidden"]))
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

etl_spec = DigitsETL()
minibatch_spec = DigitsSpec()
param_grid: dict[str, list[Any]] = {
    "hidden": [64, 128],
    "lr": [1e-3, 3e-3],
    "batch_size": [32, 64],
}
num_epochs = 5
seed = 1
workers = 2


def data_root() -> str:
    """``$CEREBRO_EXAMPLE_DATA/digits``, default ``./cerebro-examples/digits`` (absolute)."""
    base = os.environ.get("CEREBRO_EXAMPLE_DATA") or "cerebro-examples"
    return os.path.abspath(os.path.join(base, "digits"))


def make_params(root: str | None = None, output_dir: str = "runs/digits") -> dict[str, Any]:
    """Write the data (if not already there) and return the experiment's ``params``."""
    from cerebro.examples._data import write_digits

    return {**write_digits(root or data_root(), seed=seed), "output_dir": output_dir}


def __getattr__(name: str) -> Any:
    # NOTE [ lazy params ]: `params` is built, writing the data, on first access only.
    if name == "params":
        value = make_params()
        globals()["params"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
