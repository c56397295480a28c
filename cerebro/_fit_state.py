"""What the fit loop knows besides the catalog (``FitState``) and the seeds it derives.

Rebuilt from the catalog on resume (NOTE [ resume is replay ] in ``_controller.py``); the
early-stopping glue, the search glue and the controller share it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cerebro import _ranking
from cerebro.params import ModelConfig, ask_order
from cerebro.scheduler import Hop
from cerebro.search import Search
from cerebro.spec import MinibatchSpec
from cerebro.statuses import ModelStatus
from cerebro.stopping import Stopper

__all__ = ["FitState", "derive_seed"]


@functools.lru_cache(maxsize=1 << 16)  # called for every hop with a few distinct inputs
def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that depends only on ``parts``: same inputs, same seed, any machine."""
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class FitState:
    """What the loop needs besides the catalog; rebuilt from the catalog on resume."""

    fit_id: int
    spec: MinibatchSpec
    configs: dict[str, ModelConfig]
    models_dir: Path
    seed: int
    num_epochs: int
    on_error: str
    checkpoint: dict[str, str | None] = field(default_factory=dict)
    train_hops: dict[str, int] = field(default_factory=dict)
    keep: set[str] = field(default_factory=set)  # epoch-end checkpoints: never deleted
    failures: list[str] = field(default_factory=list)
    objective: str | None = None  # None: _ranking.default_objective of the first metrics
    mode: str = "min"
    best: _ranking.Best | None = None  # the fit's best so far (catalog included), for the bar
    deaths: dict[Hop, int] = field(default_factory=dict)  # worker deaths during each hop
    quiet: bool = False  # hide what metrics_agg prints (verbose=False: no progress bar)
    index: dict[str, int] = field(init=False)  # model id -> its place in ask order (seeds)
    ended: list[tuple[str, ModelStatus]] = field(default_factory=list)  # (model, status) to tell
    model_best: dict[str, _ranking.Best] = field(default_factory=dict)  # each model's best
    planned: int | None = None  # models the search will ask in all (progress)
    stopper: Stopper | None = None  # early stopping (NOTE [ stopping seam ])
    search: Search | None = None  # told each model's epochs (an Optuna trial's curve)
    stopped: set[str] = field(default_factory=set)  # models early stopping ended
    freed: bool = False  # a model paused at a rung: room for the search to ask another
    no_more: bool = False  # the stopper was told the search asks no more
    skipped: int = 0  # hops stopped models will not run (the progress bar's total shrinks)
    total_hops: int = 0  # every hop of every planned model (the bar's total before that)
    progress: Any = None  # the progress bar (run_loop's)
    threads: int | None = None  # torch threads per hop (NOTE [ same bits at any scale ])
    deterministic: bool = False
    # the fit's: "ddp", "fsdp", "auto" or a function of a model's hyperparameters
    parallelism: Any = "ddp"
    chosen: dict[str, str] = field(default_factory=dict)  # model -> its function's or auto's

    def __post_init__(self) -> None:
        self.index = {m: i for i, m in enumerate(sorted(self.configs, key=ask_order))}

    def rerank(self) -> None:
        """The fit's best so far, leaving out stopped models (NOTE [ one meaning of
        best ]): the progress bar names a model that may become ``FitResult.best``."""
        self.best = None
        for model_id, b in self.model_best.items():
            if model_id not in self.stopped and _ranking.better(b, self.best, self.mode):
                self.best = b

    def add(self, config: ModelConfig) -> None:
        """A model the search just asked for joins the fit."""
        self.configs[config.model_id] = config
        self.index[config.model_id] = len(self.index)
        self.checkpoint[config.model_id] = None
        self.train_hops[config.model_id] = 0
