"""Driver cost of a large search: the real controller, scheduler, search and catalog, with
an engine whose hops take no time, so every second measured is the driver's.

    python bench/search_scale.py                 # 2,000 random-search models, 8 workers
    python bench/search_scale.py --models 500 --search tpe

Prints the driver's time per hop (target: under 1 ms) and how it splits between asking
the search and the rest of the loop.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cerebro import _live
from cerebro._controller import FitState, run_loop
from cerebro._settings import FitSettings
from cerebro.catalog import Catalog
from cerebro.engine.messages import HopDone, HopOutcome, HopTask
from cerebro.etl import owner
from cerebro.scheduler import Scheduler
from cerebro.search import choice, loguniform, randint
from cerebro.spec import MinibatchSpec


class _Spec(MinibatchSpec):
    """Never runs: the engine below answers every hop itself."""

    def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def train(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        raise NotImplementedError

    def valtest(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        raise NotImplementedError


class InstantEngine:
    """Every submitted hop is done at the next poll, with one minibatch's metrics."""

    def __init__(self, workers: int):
        self.workers = workers
        self.queues: dict[int, list[HopTask]] = {w: [] for w in range(workers)}
        self.hops = 0

    def submit(self, worker: int, task: HopTask) -> None:
        self.queues[worker].append(task)

    def poll(self, timeout: float | None = None) -> list[Any]:
        events: list[Any] = []
        for w, tasks in self.queues.items():
            for task in tasks:
                loss = 1.0 / (1.0 + float(task.hyperparams["lr"]) * 100)
                outcome = HopOutcome({"loss": [loss]}, [32], 32, 0.0, 0.0, 0.0, 0.0, 0.0)
                events.append(HopDone(w, task, outcome))
            self.hops += len(tasks)
            tasks.clear()
        return events

    def shutdown(self) -> None:
        pass


class _NoBar:
    disable = True


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
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        catalog = Catalog(root / "catalog.sqlite")
        fit_id = catalog.create_fit("bench", {"models": args.models, "workers": w}, [])
        owners = {p: owner(p, w) for p in range(w)}
        sched = Scheduler([], num_epochs=args.epochs, train_owner=owners, val_owner=owners)
        state = FitState(fit_id, _Spec(), {}, root / "models", 1, args.epochs, "continue")
        search = settings.make_search(root / "search", w)
        asking = [0.0]
        ask = search.ask

        def timed_ask() -> Any:
            t = time.perf_counter()
            try:
                return ask()
            finally:
                asking[0] += time.perf_counter() - t

        search.ask = timed_ask  # type: ignore[method-assign]
        engine = InstantEngine(w)
        start = time.perf_counter()
        _live.add_models(catalog, state, sched, search)
        run_loop(catalog, state, sched, engine, _NoBar(), search)
        wall = time.perf_counter() - start
        done = {r["status"] for r in catalog.models(fit_id)}
        n_models = len(catalog.models(fit_id))
        catalog.close()
    per_hop = wall / engine.hops * 1e3
    print(
        f"{args.search} search, {n_models} models x {args.epochs} epoch(s) on {w} workers: "
        f"{engine.hops} hops in {wall:.1f} s of driver time"
    )
    print(f"driver time per hop: {per_hop:.3f} ms (target < 1 ms)   statuses: {sorted(done)}")
    print(
        f"  of which asking the search: {asking[0]:.1f} s ({asking[0] / engine.hops * 1e3:.3f} "
        "ms per hop); the rest is the scheduler, the catalog and the loop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
