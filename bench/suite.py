"""Benchmark suite: Cerebro MOP against its peers on this machine, one command.

Two seeded workloads (``_workloads.py``): W1, the digits MLP grid (16 configs x 10 epochs,
tiny hops) and W2, the MNIST CNN grid (8 configs x 3 epochs). Runners, each in a fresh
Python process, one after another on a quiet machine (``_runners.py``, ``_peers.py``):

  cerebro     Cerebro MOP, local engine, 2 workers (the ``run_fit`` call; ETL apart)
  plain2      plain PyTorch loop, configs one after another, 2 torch threads
  plain1      the same on 1 thread; its per-config times give the ideal
  corun       each config on 1 thread while an identical process runs beside it
  task        task parallelism: 2 processes, each a full copy of the data, a config queue
  ray         Ray Tune, 2 trials x 1 CPU, data by tune.with_parameters, ray.init counted
  ray_reuse   the same with reuse_actors=True
  optuna      Optuna GridSampler, 2 processes sharing a journal-file study
  optuna_threads  (not run by default) Optuna with n_jobs=2 threads in one process
  X_tuned     plain1/plain2/corun started with glibc's malloc thresholds set as Cerebro's
              workers set them (cerebro/allocator.py); the ideals come from these
  cerebro_untuned  (not run by default) Cerebro with that tuning off

Figures: wall time, Cerebro's wall / each peer's, efficiency = ideal / wall where ideal =
sum of each config's single-thread time / 2, the same against the co-run ideal (two
single-thread processes side by side each run slower on this VM), Cerebro's steady-state
efficiency (wall minus the time until its first hop starts), validation accuracy (checked:
every runner must come within the workload's tolerance of the plain loop, or the suite
exits with status 1), data bytes held per worker, and Cerebro's hop overhead.

Usage::

    python bench/suite.py                     # everything (about 15 minutes on 2 cores)
    python bench/suite.py --quick             # smoke run: tiny grids, 1 epoch, no ray_reuse,
                                              # no waiting between runners (< 2 min)
    python bench/suite.py --only W2 --runners cerebro,plain1,plain2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import attempt, machine, machine_end, run_child, start_check, write_json  # noqa: E402
from _quiet import loadavg  # noqa: E402
from _runners import RUNNERS, runner_env  # noqa: E402
from _workloads import Workload, workloads  # noqa: E402

RESULTS = BENCH / "results"
# The ideals come from the "_tuned" plain runners: the same allocator settings as Cerebro's
# workers (see _runners.MALLOC_ENV), so Cerebro's efficiency is not flattered by them.
DEFAULT_RUNNERS = (
    "plain1_tuned",
    "corun_tuned",
    "cerebro",
    "plain2",
    "plain2_tuned",
    "task",
    "ray",
    "ray_reuse",
    "optuna",
)
# The smoke run leaves out ray_reuse (the same code as ray but one flag, and ~15 s of Ray
# start-up per workload) to stay under 2 minutes; --runners brings it back.
QUICK_RUNNERS = tuple(r for r in DEFAULT_RUNNERS if r != "ray_reuse")
LABELS = {
    "cerebro": "Cerebro MOP (2 workers)",
    "cerebro_lrf": "Cerebro, policy lrf",
    "plain2": "plain loop, 2 threads",
    "plain1": "plain loop, 1 thread",
    "corun": "co-run (2 x 1 thread)",
    "plain1_tuned": "plain 1 thread, tuned malloc",
    "plain2_tuned": "plain 2 thr., tuned malloc",
    "corun_tuned": "co-run, tuned malloc",
    "cerebro_untuned": "Cerebro, glibc malloc",
    "task": "task parallel (2 procs)",
    "ray": "Ray Tune (default)",
    "ray_reuse": "Ray Tune (reuse_actors)",
    "optuna": "Optuna grid (2 procs)",
    "optuna_threads": "Optuna grid (n_jobs=2)",
}
# The issue's targets are against the plain loop as a user runs it (plain2); the "_tuned"
# line holds Cerebro to the same bound against a loop on the same allocator settings.
W2_TARGETS = {"plain2": 0.9, "plain2_tuned": 0.9, "ray": 0.5, "ray_reuse": 0.8}
W1_TARGETS = {"plain2": 1.0, "plain2_tuned": 1.0}


def _attempt(runner: str, wl: Workload, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """``runner`` on ``wl`` in a fresh interpreter (``_runners.child_main``), after waiting
    for a quiet machine, and again (``--retries``) if others used the CPU meanwhile."""

    def once(i: int) -> dict[str, Any]:
        tag = log_dir / f"{wl.name}-{runner}-{i}"
        out = tag.with_suffix(".json")
        argv = [runner, wl.name, "1" if args.quick else "0", str(args.seed), str(out)]
        env = runner_env(runner)[1]
        return run_child("_runners", argv, out, tag.with_suffix(".log"), env=env)

    return attempt(once, args)


def _time_of(r: dict[str, Any]) -> float:
    return r["wall_s"] if r.get("wall_s") is not None else sum(r["config_s"])


def measure(runner: str, wl: Workload, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """``--repeat`` attempts; the one with the median time, plus every attempt's time."""
    runs = [_attempt(runner, wl, args, log_dir) for _ in range(args.repeat)]
    runs.sort(key=_time_of)
    chosen = runs[(len(runs) - 1) // 2]
    chosen["repeats"] = [_time_of(r) for r in runs]
    return chosen


# --- figures ----------------------------------------------------------------------------------


def _acc_stats(acc: list[float | None]) -> dict[str, Any]:
    got = [a for a in acc if a is not None]
    return {
        "val_acc_mean": statistics.fmean(got) if got else None,
        "val_acc_best": max(got) if got else None,
        "configs_done": len(got),
    }


def figures(wl: Workload, res: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ideals, ratios, efficiencies, accuracy check and targets of one workload."""
    n = len(wl.configs())
    fig: dict[str, Any] = {"configs": n, "epochs": wl.epochs, "runners": {}}
    ideal = corun = None
    # Prefer the runs on Cerebro's allocator settings: the faster, so the stricter ideal.
    solo = next((r for r in ("plain1_tuned", "plain1") if r in res), None)
    pair = next((r for r in ("corun_tuned", "corun") if r in res), None)
    fig["ideal_from"], fig["corun_ideal_from"] = solo, pair
    if solo:
        fig["single_thread_sum_s"] = sum(res[solo]["config_s"])
        ideal = fig["ideal_s"] = fig["single_thread_sum_s"] / 2
    if pair:
        fig["corun_sum_s"] = sum(res[pair]["config_s"])
        corun = fig["corun_ideal_s"] = fig["corun_sum_s"] / 2
        if ideal:
            fig["corun_slowdown"] = fig["corun_sum_s"] / fig["single_thread_sum_s"]
    cer = res.get("cerebro")
    ref_name = next(
        (r for r in ("plain1", "plain1_tuned", "plain2", "plain2_tuned") if r in res), None
    )
    ref = _acc_stats(res[ref_name]["val_acc"]) if ref_name else None
    failures: list[str] = []
    for name, r in res.items():
        row: dict[str, Any] = _acc_stats(r["val_acc"])
        wall = r.get("wall_s")
        row["wall_s"] = wall
        if wall:
            row["efficiency"] = ideal / wall if ideal else None
            row["efficiency_corun"] = corun / wall if corun else None
            row["cerebro_over"] = _cerebro_wall(cer, name) / wall if cer else None
        row["data_bytes_per_worker"] = r.get("data_bytes_per_worker")
        if row["configs_done"] != n:
            failures.append(f"{name}: {row['configs_done']} of {n} configs finished")
        elif ref is not None:
            for key in ("val_acc_mean", "val_acc_best"):
                if abs(row[key] - ref[key]) > wl.acc_tolerance:
                    failures.append(
                        f"{name}: {key} {row[key]:.4f} vs {ref[key]:.4f} ({ref_name}), more "
                        f"than {wl.acc_tolerance} apart"
                    )
        fig["runners"][name] = row
    fig["accuracy_reference"] = ref_name
    fig["accuracy_tolerance"] = wl.acc_tolerance
    fig["accuracy_failures"] = failures
    if cer:
        hops = cer["hops"]
        steady = cer["wall_s"] - hops["first_hop_s"]
        fig["cerebro"] = {
            "etl_s": cer["etl_s"],
            "first_hop_s": hops["first_hop_s"],
            "steady_s": steady,
            "steady_efficiency": ideal / steady if ideal else None,
            "steady_efficiency_corun": corun / steady if corun else None,
            "hop_overhead_share": hops["share"],
            "hop_overhead_in_hop_share": hops["in_hop_share"],
            "hop_overhead_between_share": hops["between_share"],
            "hop_mechanism_share": hops.get("mechanism_share"),
            "start_s": cer.get("start_s"),
            "cold_wall_s": cer.get("cold_wall_s"),
        }
        if "task" in res:
            fig["cerebro"]["data_vs_task"] = (
                cer["data_bytes_per_worker"] / res["task"]["data_bytes_per_worker"]
            )
    fig["targets"] = targets(wl.name, fig)
    return fig


# Runners whose clock includes starting their processes and importing torch; Cerebro is
# compared with them from a cold start (worker start + fit). The plain loop's clock
# excludes imports and data loading, so it is compared with the fit on started workers.
COLD_PEERS = ("task", "ray", "ray_reuse", "optuna", "optuna_threads")


def _cerebro_wall(cer: dict[str, Any], peer: str) -> float:
    if peer in COLD_PEERS and cer.get("cold_wall_s") is not None:
        return float(cer["cold_wall_s"])
    return float(cer["wall_s"])


def targets(name: str, fig: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured figure and whether it is met."""
    out: list[dict[str, Any]] = []
    rows, cer = fig["runners"], fig.get("cerebro")
    if "cerebro" not in rows:
        return out
    for peer, limit in (W2_TARGETS if name == "W2" else W1_TARGETS).items():
        if peer in rows and rows[peer].get("cerebro_over") is not None:
            v = rows[peer]["cerebro_over"]
            out.append(
                {"target": f"wall <= {limit}x {LABELS[peer]}", "value": v, "met": v <= limit}
            )
    if name == "W2" and cer:
        for key, label in (
            ("steady_efficiency", "steady-state efficiency >= 0.92 (vs ideal)"),
            ("steady_efficiency_corun", "steady-state efficiency >= 0.92 (vs co-run ideal)"),
        ):
            if cer.get(key) is not None:
                out.append({"target": label, "value": cer[key], "met": cer[key] >= 0.92})
        if cer.get("data_vs_task") is not None:
            v = cer["data_vs_task"]
            out.append(
                {
                    "target": "data per worker <= 1/2 of task parallel's (+1% for row ids)",
                    "value": v,
                    "met": v <= 0.505,
                }
            )
        # The issue's hop overhead: a worker's time outside the user's functions on state
        # load/save, IPC, scheduling and data slicing. Idle time (a stall: no hop was
        # runnable) is none of these; it is lost to the schedule and the workers' unequal
        # speed, which the efficiency targets measure, so it is shown, not judged, here.
        v = cer["hop_mechanism_share"]
        if v is not None:
            label = "hop overhead <= 2% (load/save, IPC, scheduling, slicing)"
            out.append({"target": label, "value": v, "met": v <= 0.02})
        v = cer["hop_overhead_share"]
        label = "the same with idle time (stalls) added, not a target"
        out.append({"target": label, "value": v, "met": None})
    return out


# --- printing ---------------------------------------------------------------------------------


def _f(v: Any, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{fmt}}"


def print_workload(wl: Workload, res: dict[str, dict[str, Any]], fig: dict[str, Any]) -> None:
    print(f"\n=== {wl.name}: {wl.title} ===")
    if "ideal_s" in fig:
        line = (
            f"ideal {fig['ideal_s']:.2f} s (sum of single-thread config times "
            f"{fig['single_thread_sum_s']:.2f} s / 2, from {fig['ideal_from']})"
        )
        if "corun_ideal_s" in fig:
            line += (
                f"; co-run ideal {fig['corun_ideal_s']:.2f} s (co-run slowdown "
                f"{fig.get('corun_slowdown', float('nan')):.2f}x)"
            )
        print(line)
    head = (
        f"{'runner':<25} {'wall s':>8} {'cer/x':>6} {'eff':>5} {'effCR':>5} {'acc mean':>8} "
        f"{'best':>6} {'MB/wkr':>7} {'load 1m':>11} {'foreign':>7}"
    )
    print(head)
    print("-" * len(head))
    for name, r in res.items():
        row = fig["runners"][name]
        load = f"{r['loadavg_start'][0]:.2f}>{r['loadavg_end'][0]:.2f}"
        mb = row["data_bytes_per_worker"]
        print(
            f"{LABELS.get(name, name):<25} {_f(row.get('wall_s'), '.2f', 8)} "
            f"{_f(row.get('cerebro_over'), '.2f', 6)} {_f(row.get('efficiency'), '.2f', 5)} "
            f"{_f(row.get('efficiency_corun'), '.2f', 5)} {_f(row['val_acc_mean'], '.4f', 8)} "
            f"{_f(row['val_acc_best'], '.4f', 6)} {_f(mb and mb / 1e6, '.2f', 7)} "
            f"{load:>11} {_f(r.get('foreign_cpu_s'), '.1f', 7)}"
        )
    cer = fig.get("cerebro")
    if cer:
        hops = res["cerebro"]["hops"]
        print(
            f"Cerebro: worker start {_f(cer['start_s'], '.2f', 0)} s and ETL "
            f"{cer['etl_s']:.2f} s (apart); cold = start + fit {_f(cer['cold_wall_s'], '.2f', 0)}"
            f" s (what cer/x uses against {', '.join(p for p in COLD_PEERS if p in res)}); "
            f"first hop {cer['first_hop_s']:.2f} s after run_fit; steady-state efficiency "
            f"{_f(cer['steady_efficiency'], '.2f', 0)} (co-run ideal: "
            f"{_f(cer['steady_efficiency_corun'], '.2f', 0)})"
        )
        print(
            f"  hop overhead {hops['share']:.1%} of busy worker time: in hops "
            f"{hops['in_hop_share']:.1%} (load {hops['load_s']:.2f} s, save "
            f"{hops['save_s']:.2f} s, other {hops['other_in_hop_s']:.2f} s of "
            f"{hops['hop_s']:.2f} s), between hops {hops['between_share']:.1%} "
            f"({hops['gap_s']:.2f} s, median gap {hops['gap_ms_median']:.1f} ms); "
            f"{hops['hops']} hops, median {hops['hop_ms_median']:.1f} ms; without the stalls "
            f"{_f(hops.get('mechanism_share'), '.1%', 0)}"
        )
        print(
            f"  lost to: worker start {hops['first_hop_s']:.2f} s, stalls (gaps > 10 ms, no "
            f"runnable hop) {hops['stalls_over_10ms_s']:.2f} s, last-hop imbalance "
            f"{max(hops['tail_s']) - min(hops['tail_s']):.2f} s, last hop -> run_fit return "
            f"{hops['last_hop_to_return_s']:.2f} s; of the stalls and imbalance, "
            f"{_f(hops.get('work_imbalance_s'), '.2f', 0)} s is the workers' unequal hop "
            "time, idle in any order"
        )
    if fig["targets"]:
        print("targets:")
        for t in fig["targets"]:
            mark = "info" if t["met"] is None else "met" if t["met"] else "MISSED"
            print(f"  [{mark:>6}] {t['target']}: {t['value']:.3f}")
    for msg in fig["accuracy_failures"]:
        print(f"ACCURACY CHECK FAILED: {msg}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: small grids, 1 epoch")
    p.add_argument("--only", choices=("W1", "W2"), help="one workload")
    p.add_argument("--runners", help=f"comma-separated, from: {','.join(RUNNERS)}")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per runner; the table shows the run with the median time (default 1)",
    )
    p.add_argument(
        "--retries",
        type=int,
        help="re-runs of a runner disturbed by other processes (default 1; 0 with --quick)",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=1200.0,
        help="longest wait for a quiet machine, seconds (default 1200)",
    )
    p.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    p.add_argument(
        "--out",
        help="JSON results (default bench/results/suite.json, suite-quick.json with --quick)",
    )
    args = p.parse_args(argv)
    if args.retries is None:
        args.retries = 0 if args.quick else 1
    runners = (
        args.runners.split(",")
        if args.runners
        else list(QUICK_RUNNERS if args.quick else DEFAULT_RUNNERS)
    )
    unknown = [r for r in runners if r not in RUNNERS]
    if unknown:
        p.error(f"unknown runner(s) {unknown}; choose from {', '.join(RUNNERS)}")
    wls = workloads(args.quick)
    names = [args.only] if args.only else list(wls)
    out = Path(args.out or RESULTS / ("suite-quick.json" if args.quick else "suite.json"))

    import torch

    for name in names:  # write the data and tensor caches before any clock starts
        wls[name].tensors_file()
    cores = os.cpu_count() or 1
    print(
        f"cerebro bench suite{' (quick)' if args.quick else ''}: {', '.join(names)}; runners "
        f"{', '.join(runners)}; {cores} cores, torch {torch.__version__}, Python "
        f"{platform.python_version()}"
    )
    start_quiet = start_check(args)
    report: dict[str, Any] = {
        "benchmark": "suite",
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python", "bench/suite.py", *(argv or sys.argv[1:])]),
        "machine": machine(loadavg_start=loadavg(), quiet_start=start_quiet),
        "workloads": {},
    }
    failed = False
    with tempfile.TemporaryDirectory(prefix="cerebro-suite-logs-") as logs:
        for name in names:
            wl = wls[name]
            res: dict[str, dict[str, Any]] = {}
            print(f"\n{name}: {wl.title}", flush=True)
            for runner in runners:
                print(f"  {LABELS.get(runner, runner)} ...", end=" ", flush=True)
                res[runner] = r = measure(runner, wl, args, Path(logs))
                wall = r.get("wall_s")
                times = ", ".join(f"{t:.2f}" for t in r["repeats"])
                print(
                    f"{'' if wall is None else f'{wall:.2f} s, '}process {r['process_s']:.1f} s, "
                    f"load {r['loadavg_start'][0]:.2f}>{r['loadavg_end'][0]:.2f}"
                    + (
                        f" (times of {len(r['repeats'])} runs: {times})" if args.repeat > 1 else ""
                    ),
                    flush=True,
                )
            fig = figures(wl, res)
            failed |= bool(fig["accuracy_failures"])
            report["workloads"][name] = {
                "title": wl.title,
                "grid": wl.grid,
                "epochs": wl.epochs,
                "data": {k: list(v) if isinstance(v, tuple) else v for k, v in wl.data.items()},
                "results": res,
                "figures": fig,
            }
            print_workload(wl, res, fig)
    report["machine"].update(machine_end())
    write_json(out, report)
    if failed:
        print("ACCURACY CHECK FAILED: some runner did not reach comparable accuracy (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
