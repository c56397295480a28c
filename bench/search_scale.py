"""Driver cost of a large search: the real fit loop (controller, scheduler, search and
catalog: ``cerebro._fit.run_fit_loop``, as ``run_fit`` calls it) on ``cerebro.testing``'s
FakeEngine, whose hops take no time, so every second measured is the driver's.

    python bench/search_scale.py                 # 2,000 random-search models, 8 workers
    python bench/search_scale.py --models 500 --search tpe

Prints the driver's time per hop (target: under 1 ms) and how it splits between asking
the search and the rest of the loop.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cerebro._fit import run_fit_loop
from cerebro._settings import FitSettings
from cerebro.catalog import Catalog
from cerebro.engine.messages import HopTask
from cerebro.search import choice, loguniform, randint
from cerebro.spec import MinibatchSpec
from cerebro.testing import FakeEngine, HopResult, done


class _Spec(MinibatchSpec):
    """Never runs: the fake engine answers every hop itself."""

    def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def train(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        raise NotImplementedError

    def valtest(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        raise NotImplementedError


def _instant(worker: int, task: HopTask) -> HopResult:
    """Every hop is done at the next poll, its loss falling with lr (for the search)."""
    return done(task, loss=1.0 / (1.0 + float(task.hyperparams["lr"]) * 100))


def fit(settings: FitSettings, workers: int) -> tuple[float, int, list[str]]:
    """One simulated fit in a fresh catalog: its driver seconds, hops and model statuses."""
    engines: list[FakeEngine] = []

    def make_engine(owned: list[dict[str, list[int]]]) -> FakeEngine:
        engines.append(FakeEngine(len(owned), run=_instant))
        return engines[-1]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        catalog = Catalog(root / "catalog.sqlite")
        fit_id = catalog.create_fit("bench", {"workers": workers}, [])
        sizes = {"sizes": [1] * workers}  # one partition per worker, each split
        manifest = {"partitions": workers, "splits": {"train": sizes, "val": sizes}}
        start = time.perf_counter()
        run_fit_loop(
            catalog,
            fit_id,
            _Spec(),
            manifest,
            settings,
            workers=workers,
            models_dir=root / "models",
            start_dir=None,
            search_dir=root / "search",
            make_engine=make_engine,
            verbose=False,
        )
        wall = time.perf_counter() - start
        statuses = sorted({r["status"] for r in catalog.models(fit_id)})
        catalog.close()
    return wall, len(engines[0].submitted) - 1, statuses  # less the probe


def ask_share(settings: FitSettings, workers: int) -> float:
    """The share of a fit's driver time spent in the search's ``ask``, from a second fit
    run under cProfile (which slows it, so only the share is kept)."""
    prof = cProfile.Profile()
    prof.runcall(fit, settings, workers)
    stats = pstats.Stats(prof)
    asks = [
        cum
        for (path, _line, name), (_cc, _nc, _tt, cum, _callers) in stats.stats.items()  # type: ignore[attr-defined]
        if name == "ask" and f"cerebro{os.sep}search" in path
    ]
    return max(asks, default=0.0) / stats.total_tt  # type: ignore[attr-defined]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--models", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--search", default="random", choices=("random", "tpe"))
    args = ap.parse_args()
    w = args.workers
    space = {
        "lr": loguniform(1e-4, 1e-1),
        "hidden": randint(8, 512),
        "batch_size": choice([32, 64]),
    }
    settings = FitSettings.check(space, args.epochs, 1, search=args.search, num_models=args.models)
    wall, hops, statuses = fit(settings, w)
    share = ask_share(settings, w)
    print(
        f"{args.search} search, {args.models} models x {args.epochs} epoch(s) on {w} workers: "
        f"{hops} hops in {wall:.1f} s of driver time"
    )
    print(
        f"driver time per hop: {wall / hops * 1e3:.3f} ms (target < 1 ms)   statuses: {statuses}"
    )
    print(
        f"  of which asking the search: {share:.0%} ({share * wall / hops * 1e3:.3f} ms per "
        "hop, its share under cProfile); the rest is the scheduler, the catalog and the loop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
