"""What ``deterministic=True`` costs a grid fit: the bundled MNIST example (W2: 8 CNNs,
3 epochs) with the default numerics and in deterministic mode, side by side in one run.

    python bench/deterministic_cost.py               # 1 and 2 workers, medians of 3
    python bench/deterministic_cost.py --repeats 1 --epochs 1

Deterministic mode runs every hop with one torch thread (``threads_per_hop=1``) and torch's
deterministic algorithms (NOTE [ same bits at any scale ]). On 2 cores, 2 workers already
get one thread each, so that ratio is the flag's cost alone; 1 worker loses its second
thread. Each worker count shares one warm Experiment (workers and ETL), the two modes
alternate, and each fit is a fresh one (``overwrite`` of a fit with another seed tag), so
the ratio is the fits' alone. Writes ``bench/results/deterministic_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cerebro import Experiment
from cerebro.examples import mnist


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=mnist.num_epochs)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    out: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        params = mnist.make_params(root=str(Path(tmp) / "data"), output_dir=str(Path(tmp) / "r"))
        for w in args.workers:
            walls: dict[str, list[float]] = {"default": [], "deterministic": []}
            params = dict(params, output_dir=str(Path(tmp) / f"run{w}"))
            with Experiment(params, workers=w, verbose=False) as exp:
                exp.run_etl(mnist.etl_spec, partitions=2)
                for r in range(args.repeats):
                    for mode in walls:
                        grid = dict(mnist.param_grid, tag=[r])  # a new fit each time
                        start = time.perf_counter()
                        exp.run_fit(
                            mnist.minibatch_spec,
                            grid,
                            num_epochs=args.epochs,
                            deterministic=mode == "deterministic",
                            overwrite=True,
                        )
                        walls[mode].append(time.perf_counter() - start)
            out[str(w)] = walls
    print(f"W2 grid (8 CNNs x {args.epochs} epochs, 2 partitions), median of {args.repeats}")
    for w, walls in out.items():
        d, t = (statistics.median(walls[m]) for m in ("default", "deterministic"))
        print(f"  {w} worker(s): default {d:6.1f} s  deterministic {t:6.1f} s  ratio {t / d:.2f}")
    path = Path(__file__).parent / "results" / "deterministic_cost.json"
    path.write_text(json.dumps({"epochs": args.epochs, "walls": out}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
