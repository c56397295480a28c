"""Cerebro: deep-learning model selection with Model Hopper Parallelism."""

from __future__ import annotations

from cerebro.errors import CerebroError, ParamsError, SpecError, UserCodeError, WorkerError
from cerebro.experiment import Experiment
from cerebro.result import FitResult
from cerebro.spec import ETLSpec, MinibatchSpec

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
