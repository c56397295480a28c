"""Benchmark: the Ray engine vs. the local engine, same machine, same workers, start-up included.

The MNIST CNN grid of ``cerebro.examples.mnist`` (8 configs, 3 epochs, 4,000 train and
1,000 val images read from PNG files, as ``bench/mop_vs_plain.py``) is run twice, each in a
fresh Python process, from nothing to a finished fit:

(a) ``Experiment(engine="local")``: ``run_etl`` (a process pool; the worker processes
    start beside it) then ``run_fit``;
(b) ``Experiment(engine="ray")``: ``import ray`` + ``ray.init`` (a local instance, started
    here to time it apart), ``run_etl`` (row_prep on the worker actors) then the same
    ``run_fit``.

Both use ``--workers`` slots (default 2) with the same threads each and the "fixed" policy,
so they train the very same models: the final metrics must be equal. Printed: both walls,
their ratio (target <= 1.15), and where the time goes (ray.init, actor start, ETL, hops,
exit). Results go to ``bench/results/ray_vs_local.json``.

Usage::

    python bench/ray_vs_local.py            # the full benchmark (about 1 minute on 2 cores)
    python bench/ray_vs_local.py --repeat 3 # 3 runs each, alternating order: medians
    python bench/ray_vs_local.py --quick    # smoke run: 2 configs, 1 epoch, 1,000 images
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import write_json  # noqa: E402

RESULTS = BENCH / "results"
FULL: dict[str, Any] = {"epochs": 3, "n_train": 4000, "n_val": 1000, "quick": False}
QUICK: dict[str, Any] = {"epochs": 1, "n_train": 800, "n_val": 200, "quick": True}
QUICK_GRID: dict[str, list[Any]] = {"channels": [64], "lr": [1e-3, 3e-3], "batch_size": [64]}


def run_one(engine: str, paths: dict[str, str], setup: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: ETL then fit on ``engine``; returns the phase timings."""
    t_start = time.perf_counter()
    from _hops import hop_overhead

    from cerebro import Experiment
    from cerebro.examples import mnist

    grid = QUICK_GRID if setup["quick"] else mnist.param_grid
    out: dict[str, Any] = {"engine": engine}
    run_dir = Path(tempfile.mkdtemp(prefix=f"cerebro-bench-{engine}-"))
    try:
        exp = Experiment(
            {**paths, "output_dir": str(run_dir)},
            workers=setup["workers"],
            engine=engine,
            verbose=False,
        )
        out["imports_s"] = time.perf_counter() - t_start
        t0 = time.perf_counter()
        if engine == "ray":
            t = time.perf_counter()
            import ray  # timed apart: Ray's own import

            out["import_ray_s"] = time.perf_counter() - t
            # Started here to time it apart; Cerebro uses a connection that exists.
            t = time.perf_counter()
            ray.init(
                address="local",
                num_cpus=os.cpu_count(),
                include_dashboard=False,
                logging_level="WARNING",
            )
            out["ray_init_s"] = time.perf_counter() - t
        t = time.perf_counter()
        manifest = exp.run_etl(mnist.etl_spec, fraction=1.0, seed=setup["seed"])
        out["etl_s"] = time.perf_counter() - t
        if engine == "ray":
            out["etl_actor_start_s"] = manifest["ray"]["seconds"]["actors_s"]
            out["etl_rows_s"] = manifest["ray"]["seconds"]["rows_s"]
        fit_start = time.time()
        t = time.perf_counter()
        result = exp.run_fit(
            mnist.minibatch_spec, param_grid=grid, num_epochs=setup["epochs"], seed=setup["seed"]
        )
        fit_end = time.time()
        out["fit_s"] = time.perf_counter() - t
        out["wall_s"] = time.perf_counter() - t0
        hops = hop_overhead(exp.catalog_path, fit_start, fit_end)
        # From the run_fit call to the first hop: the workers' start (or, on Ray, taking
        # the actors the ETL left), their set-up and the probe minibatch.
        out["first_hop_s"] = hops["first_hop_s"]
        out["hops"] = {
            "hops": hops["hops"],
            "wall_s": hops["hop_s"],
            "user_s": hops["user_s"],
            "load_s": hops["load_s"],
            "save_s": hops["save_s"],
        }
        table = result.table
        out["val_acc"] = {r["model_id"]: r.get("val_acc") for r in table.to_dict("records")}
        out["history"] = result.history.sort_values(
            ["model_id", "epoch", "split", "metric"]
        ).to_dict("list")
        exp.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


def _child(engine: str, paths: dict[str, str], setup: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`run_one` in a fresh interpreter; adds the whole process's wall time."""
    bench = str(Path(__file__).resolve().parent)
    code = (
        f"import json, sys; sys.path.insert(0, {bench!r}); import ray_vs_local as b; "
        f"print('RESULT ' + json.dumps(b.run_one({engine!r}, {paths!r}, {setup!r})))"
    )
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir()
    )
    process_s = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {engine} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    out: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    out["process_s"] = process_s
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 configs, 1 epoch")
    p.add_argument("--workers", type=int, default=2, help="worker slots (default 2)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per engine, alternating which goes first; medians are reported",
    )
    p.add_argument(
        "--data-root",
        default=os.path.join(tempfile.gettempdir(), "cerebro-bench", "mnist"),
        help="where the PNGs and CSVs are written (reused across runs)",
    )
    p.add_argument("--out", default=str(RESULTS / "ray_vs_local.json"), help="JSON results")
    args = p.parse_args(argv)
    setup = dict(QUICK if args.quick else FULL, workers=args.workers, seed=args.seed)

    from cerebro.examples import write_mnist

    root = Path(args.data_root) / f"{setup['n_train']}-{setup['n_val']}-s{args.seed}"
    paths = write_mnist(
        root, seed=args.seed, n_train=setup["n_train"], n_val=setup["n_val"], n_test=0
    )
    cores = os.cpu_count() or 1
    report: dict[str, Any] = {
        "benchmark": "ray_vs_local",
        "setup": setup,
        "machine": {
            "cores": cores,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(),
        },
    }
    try:
        import ray

        report["machine"]["ray"] = ray.__version__
    except ImportError:
        raise SystemExit("Ray is not installed: pip install 'cerebro-mop[ray]'") from None
    print(
        f"MNIST CNN, {setup['epochs']} epochs, {setup['n_train']} train / {setup['n_val']} val "
        f"images, {args.workers} workers, {cores} cores, load average "
        f"{report['machine']['loadavg_at_start'][0]:.2f}"
    )
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
    for i in range(args.repeat):
        for engine in ("local", "ray") if i % 2 == 0 else ("ray", "local"):
            load = os.getloadavg()[0]
            print(f"\n({engine}, run {i + 1}, load average {load:.2f}) ...", flush=True)
            r = _child(engine, paths, setup)
            r["loadavg_at_start"] = load
            runs[engine].append(r)
            print(f"    wall {r['wall_s']:.1f} s (process {r['process_s']:.1f} s)")
    for engine, rs in runs.items():  # the median run (by wall time) stands for the engine
        report[engine] = sorted(rs, key=lambda r: r["wall_s"])[(len(rs) - 1) // 2]
        report[f"{engine}_walls_s"] = [r["wall_s"] for r in rs]
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    _summary(report)
    write_json(Path(args.out), report)
    return 0


def _summary(report: dict[str, Any]) -> None:
    local, ray = report["local"], report["ray"]
    figures = {
        "ray_over_local": ray["wall_s"] / local["wall_s"],
        "ray_over_local_process": ray["process_s"] / local["process_s"],
        "same_metrics": local["history"] == ray["history"],
    }
    report["figures"] = figures
    if len(report["local_walls_s"]) > 1:
        walls = {
            e: ", ".join(f"{w:.1f}" for w in report[f"{e}_walls_s"]) for e in ("local", "ray")
        }
        print(f"\nall runs (s): local {walls['local']}; ray {walls['ray']} (medians below)")
    print("\n=== wall time, start-up included ===")
    print(f"local engine: {local['wall_s']:7.1f} s   (whole process {local['process_s']:.1f} s)")
    print(f"Ray engine:   {ray['wall_s']:7.1f} s   (whole process {ray['process_s']:.1f} s)")
    print(
        f"ray / local = {figures['ray_over_local']:.2f} (target <= 1.15); whole processes "
        f"{figures['ray_over_local_process']:.2f}"
    )
    print("\n=== where the time goes (s) ===")
    print(f"{'':26}{'local':>8}{'ray':>8}")
    rows = [
        ("import ray", None, ray.get("import_ray_s")),
        ("ray.init", None, ray.get("ray_init_s")),
        ("ETL: actor start", None, ray.get("etl_actor_start_s")),
        ("ETL (all)", local["etl_s"], ray["etl_s"]),
        ("fit: until the first hop", local["first_hop_s"], ray["first_hop_s"]),
        ("fit (all)", local["fit_s"], ray["fit_s"]),
        ("hops: sum of hop walls", local["hops"]["wall_s"], ray["hops"]["wall_s"]),
        ("hops: in train/valtest", local["hops"]["user_s"], ray["hops"]["user_s"]),
        ("hops: state load", local["hops"]["load_s"], ray["hops"]["load_s"]),
        ("hops: state save", local["hops"]["save_s"], ray["hops"]["save_s"]),
        (
            "process start + exit",
            local["process_s"] - local["wall_s"],
            ray["process_s"] - ray["wall_s"],
        ),
    ]
    for name, a, b in rows:
        fa = f"{a:8.2f}" if a is not None else f"{'-':>8}"
        fb = f"{b:8.2f}" if b is not None else f"{'-':>8}"
        print(f"{name:26}{fa}{fb}")
    print(f"\nsame metrics on both engines: {figures['same_metrics']}")
    load = report["machine"]["loadavg_at_end"][1]
    if load > report["machine"]["cores"] * 0.5:
        print(
            f"note: the 5-minute load average was {load:.1f} on {report['machine']['cores']} "
            "cores: other processes shared the machine, so these timings are noisy."
        )


if __name__ == "__main__":
    sys.exit(main())
