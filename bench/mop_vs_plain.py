"""Benchmark: a Cerebro (MOP) fit vs. a plain PyTorch loop on the same grid, same cores.

The MNIST CNN example (``cerebro.examples.mnist``: 8 configs, 3 epochs, 4,000 train and
1,000 val images read from PNG files) is trained

(a) by Cerebro with ``--workers`` worker processes (one torch thread each on a machine
    with as many cores), ETL timed apart from the fit;
(b) by a plain loop, configs one after another in one process on ``--threads`` torch
    threads (default: as many as the workers), on tensors loaded once;
(c) "ideal": the sum of each config's single-thread time divided by the workers, i.e. MOP
    with perfect packing and zero overhead.

The figure compared with the plain loop is Cerebro's *fit* wall time (ETL is a one-off
that later fits reuse, as the plain loop's tensor loading is). Targets: cerebro/plain
<= 0.9 and ideal/cerebro >= 0.9. Results go to ``bench/results/mop_vs_plain.json``.

Usage::

    python bench/mop_vs_plain.py            # the full benchmark (a few minutes on 2 cores)
    python bench/mop_vs_plain.py --quick    # smoke run: 2 configs, 1 epoch, 1,000 images
    python bench/mop_vs_plain.py --skip-cerebro   # only the plain loop and the ideal
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_json  # noqa: E402
from _hops import hop_stats  # noqa: E402
from _plain import load_split, run_plain, single_thread_times  # noqa: E402

from cerebro.examples import mnist, write_mnist  # noqa: E402
from cerebro.params import expand_grid  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FULL: dict[str, Any] = {"grid": mnist.param_grid, "epochs": 3, "n_train": 4000, "n_val": 1000}
QUICK: dict[str, Any] = {
    "grid": {"channels": [64], "lr": [1e-3, 3e-3], "batch_size": [64]},
    "epochs": 1,
    "n_train": 800,
    "n_val": 200,
}


def run_cerebro(
    params: dict[str, Any], grid: dict[str, list[Any]], epochs: int, workers: int, seed: int
) -> dict[str, Any]:
    """ETL then fit in a fresh run directory; returns timings and the results table."""
    try:
        from cerebro import Experiment
    except ImportError as e:
        return {"error": f"cerebro.Experiment is not available ({e}); skipped the MOP run."}
    exp = Experiment(params, workers=workers, verbose=False)
    t0 = time.perf_counter()
    exp.run_etl(mnist.etl_spec, fraction=1.0, seed=seed)
    t1 = time.perf_counter()
    result = exp.run_fit(mnist.minibatch_spec, param_grid=grid, num_epochs=epochs, seed=seed)
    t2 = time.perf_counter()
    table = result.table
    done = table[table["status"] == "done"]
    return {
        "etl_s": t1 - t0,
        "fit_s": t2 - t1,
        "hops": hop_stats(Path(params["output_dir"]) / "catalog.sqlite", t2 - t1, workers),
        "models": len(table),
        "done": len(done),
        "val_acc_mean": float(done["val_acc"].mean()) if len(done) else None,
        "val_acc_best": float(done["val_acc"].max()) if len(done) else None,
        "table": json.loads(
            table.drop(columns=["error"], errors="ignore").to_json(orient="records")
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 configs, 1 epoch")
    p.add_argument("--workers", type=int, default=2, help="Cerebro workers (default 2)")
    p.add_argument("--threads", type=int, help="plain-loop torch threads (default: workers)")
    p.add_argument("--epochs", type=int, help="override the number of epochs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-cerebro", action="store_true", help="only the plain loop + ideal")
    p.add_argument("--skip-ideal", action="store_true", help="skip the single-thread runs")
    p.add_argument(
        "--data-root",
        default=os.path.join(tempfile.gettempdir(), "cerebro-bench", "mnist"),
        help="where the PNGs and CSVs are written (reused across runs)",
    )
    p.add_argument("--out", default=str(RESULTS / "mop_vs_plain.json"), help="JSON results")
    args = p.parse_args(argv)
    setup: dict[str, Any] = dict(QUICK if args.quick else FULL)
    if args.epochs:
        setup["epochs"] = args.epochs
    threads = args.threads or args.workers
    grid, epochs, workers = setup["grid"], setup["epochs"], args.workers
    configs = [c.hyperparams for c in expand_grid(grid)]
    cores = os.cpu_count() or 1
    print(
        f"MNIST CNN: {len(configs)} configs x {epochs} epochs, {setup['n_train']} train / "
        f"{setup['n_val']} val images; {cores} cores, torch {torch.__version__}"
    )
    if workers > cores:
        print(f"warning: {workers} workers on {cores} cores: workers will share cores")

    root = Path(args.data_root) / f"{setup['n_train']}-{setup['n_val']}-s{args.seed}"
    paths = write_mnist(
        root, seed=args.seed, n_train=setup["n_train"], n_val=setup["n_val"], n_test=0
    )
    report: dict[str, Any] = {
        "benchmark": "mop_vs_plain",
        "quick": args.quick,
        "machine": {
            "cores": cores,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "loadavg_at_start": os.getloadavg(),
        },
        "setup": {**setup, "configs": len(configs), "workers": workers, "plain_threads": threads},
    }

    # (a) Cerebro: ETL, then the MOP fit, in a fresh run directory.
    if not args.skip_cerebro:
        run_dir = Path(tempfile.mkdtemp(prefix="cerebro-bench-run-"))
        try:
            print(f"\n(a) Cerebro, {workers} workers ...", flush=True)
            cer = run_cerebro(
                {**paths, "output_dir": str(run_dir)}, grid, epochs, workers, args.seed
            )
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        report["cerebro"] = cer
        if "error" in cer:
            print(f"    {cer['error']}")
        else:
            print(f"    ETL {cer['etl_s']:.1f} s (not compared), fit {cer['fit_s']:.1f} s")
            hops = cer["hops"]
            if hops.get("busy") is not None and hops.get("user") is not None:
                n = sum(v["hops"] for v in hops["by_kind"].values())
                print(
                    f"    {n} hops; workers busy {hops['busy']:.0%} of the fit, "
                    f"of which {hops['user']:.0%} in train/valtest"
                )

    # (b) the plain loop, on tensors made once by the same row_prep.
    print(f"\n(b) plain PyTorch loop, {threads} threads ...", flush=True)
    t0 = time.perf_counter()
    train = load_split(mnist.etl_spec, paths["train_main"], paths["train_dir"], "train")
    val = load_split(mnist.etl_spec, paths["val_main"], paths["val_dir"], "val")
    load_s = time.perf_counter() - t0
    plain_s, plain = run_plain(mnist, configs, train, val, epochs, threads, args.seed)
    vals = [r.val_acc for r in plain]
    report["plain"] = {
        "load_s": load_s,
        "fit_s": plain_s,
        "val_acc_mean": statistics.fmean(vals),
        "val_acc_best": max(vals),
        "configs": [r.as_dict() for r in plain],
    }
    print(f"    loading {load_s:.1f} s (not compared), training {plain_s:.1f} s")

    # (c) ideal MOP: sum of single-thread times / workers.
    if not args.skip_ideal:
        print("\n(c) single-thread time of each config (for the ideal) ...", flush=True)
        single = single_thread_times(mnist, configs, train, val, epochs, args.seed)
        total = sum(r.wall_s for r in single)
        report["ideal"] = {
            "fit_s": total / workers,
            "single_thread_total_s": total,
            "single_thread_s": [r.wall_s for r in single],
        }
        print(f"    sum {total:.1f} s -> ideal {total / workers:.1f} s on {workers} workers")

    report["machine"]["loadavg_at_end"] = os.getloadavg()
    _summary(report)
    load = report["machine"]["loadavg_at_end"][1]
    if load > cores:
        print(
            f"\nnote: the 5-minute load average was {load:.1f} on {cores} cores: other "
            "processes shared the machine, so these timings are noisy."
        )
    out = Path(args.out)
    write_json(out, report)
    return 0


def _summary(report: dict[str, Any]) -> None:
    plain = report["plain"]
    cer = report.get("cerebro") or {}
    ideal = report.get("ideal")
    print("\n=== fit wall time (ETL / tensor loading excluded) ===")
    print(f"plain loop ({report['setup']['plain_threads']} threads): {plain['fit_s']:8.1f} s")
    if ideal:
        print(f"ideal MOP ({report['setup']['workers']} workers):     {ideal['fit_s']:8.1f} s")
    figures: dict[str, Any] = {}
    if cer.get("fit_s") is not None:
        print(f"cerebro ({report['setup']['workers']} workers):       {cer['fit_s']:8.1f} s")
        figures["cerebro_over_plain"] = cer["fit_s"] / plain["fit_s"]
        print(f"cerebro / plain = {figures['cerebro_over_plain']:.2f}   (target <= 0.9)")
        if ideal:
            figures["efficiency"] = ideal["fit_s"] / cer["fit_s"]
            print(f"ideal / cerebro = {figures['efficiency']:.2f}   (target >= 0.9)")
    if ideal:
        figures["ideal_over_plain"] = ideal["fit_s"] / plain["fit_s"]
        # The single-thread runs are the plain loop on 1 thread: a second baseline, and the
        # stronger one wherever intra-op threading of such small models does not pay.
        one = ideal["single_thread_total_s"]
        print(f"plain loop (1 thread):      {one:8.1f} s   (= sum of single-thread times)")
        if cer.get("fit_s") is not None:
            best = min(one, plain["fit_s"])
            figures["cerebro_over_best_plain"] = cer["fit_s"] / best
            print(f"cerebro / best plain = {figures['cerebro_over_best_plain']:.2f}")
    print("\n=== validation accuracy (last epoch) ===")
    print(f"plain:   mean {plain['val_acc_mean']:.4f}  best {plain['val_acc_best']:.4f}")
    if cer.get("val_acc_mean") is not None:
        print(f"cerebro: mean {cer['val_acc_mean']:.4f}  best {cer['val_acc_best']:.4f}")
    report["figures"] = figures


if __name__ == "__main__":
    sys.exit(main())
