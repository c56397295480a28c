"""Cerebro: deep-learning model selection with Model Hopper Parallelism."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cerebro.errors import CerebroError, ParamsError, SpecError, UserCodeError, WorkerError
from cerebro.spec import ETLSpec, MinibatchSpec

if TYPE_CHECKING:
    from cerebro.experiment import Experiment
    from cerebro.result import FitResult

__all__ = [
    "CerebroError",
    "ETLSpec",
    "Experiment",
    "FitResult",
    "MinibatchSpec",
    "ParamsError",
    "SpecError",
    "UserCodeError",
    "WorkerError",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use: worker processes import cerebro (for the spec base classes)
    # and should not pay for pandas and the driver's modules (~0.35 s each).
    if name == "Experiment":
        from cerebro.experiment import Experiment

        return Experiment
    if name == "FitResult":
        from cerebro.result import FitResult

        return FitResult
    raise AttributeError(f"module 'cerebro' has no attribute {name!r}")
