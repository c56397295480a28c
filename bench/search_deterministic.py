"""What ``deterministic=True`` costs a TPE search: the same search on the bundled digits
example, once asking as models end and once in generations, side by side in one run.

    python bench/search_deterministic.py              # 24 models, 20 epochs, 2 workers
    python bench/search_deterministic.py --models 16 --epochs 3

Both runs share one warm Experiment (its workers and the ETL), so the ratio is the fit's
alone. Prints each run's fit time, the best value found, and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import optuna

from cerebro import Experiment
from cerebro.examples import write_digits
from cerebro.examples.digits import etl_spec, minibatch_spec
from cerebro.search import choice, loguniform, randint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    space = {
        "hidden": randint(16, 128, step=16),
        "lr": loguniform(1e-4, 3e-2),
        "batch_size": choice([32, 64, 128]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_digits(root / "data")
        params = {
            "train_main": str(root / "data/train.csv"),
            "val_main": str(root / "data/val.csv"),
            "output_dir": str(root / "run"),
        }
        rows = []
        with Experiment(params, workers=args.workers, verbose=False) as exp:
            exp.run_etl(etl_spec)
            for deterministic in (False, True):
                sampler = optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=4)
                start = time.perf_counter()
                result = exp.run_fit(
                    minibatch_spec,
                    space,
                    num_epochs=args.epochs,
                    seed=args.seed,
                    search=sampler,
                    num_models=args.models,
                    deterministic=deterministic,
                    overwrite=True,
                )
                rows.append((deterministic, time.perf_counter() - start, result.best["value"]))
    print(f"TPE, {args.models} models x {args.epochs} epochs, {args.workers} workers (digits)")
    for deterministic, wall, best in rows:
        print(f"  deterministic={deterministic!s:5}  fit {wall:6.1f} s   best val_loss {best:.4f}")
    print(f"deterministic / asynchronous wall: {rows[1][1] / rows[0][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
