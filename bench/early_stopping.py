"""Benchmark W3: successive halving on the MNIST-5k CNN, Cerebro against its peers.

32 configs drawn once (seeded) from channels (the hidden fc width) in {32, 64, 128, 256},
lr log-uniform in [1e-4, 1e-2], batch_size in {32, 64, 128}, weight_decay log-uniform in
[1e-6, 1e-3]; successive halving with grace 1 epoch, reduction factor 3, at most 9 epochs;
validation accuracy after every epoch is the objective (mode max). Runners
(``_es_runners.py``), each in a fresh Python process, one after another, ``--repeats``
rounds of all of them:

  cerebro_asha  Cerebro, run_fit(..., early_stopping="asha"), 2 workers
  cerebro_sha   the same with early_stopping="sha" (synchronous rungs)
  ray           Ray Tune, ASHAScheduler(max_t=9, grace_period=1, reduction_factor=3),
                2 concurrent 1-CPU trials
  ray_reuse     the same with reuse_actors=True
  optuna1       Optuna, SuccessiveHalvingPruner(min_resource=1, reduction_factor=3), the
                configs enqueued, one process
  optuna2       the same in 2 processes sharing a journal-file study
  plain_sha     a plain PyTorch loop doing synchronous successive halving by hand
  cerebro_grid  Cerebro's full grid, no stopping (the epochs a search without stopping
                trains)

Each wall time counts everything after the imports until the best config is known: data
loading, process and worker start, and for Cerebro its ETL from the CSVs and PNGs. The
table shows each runner's median wall time, and the epochs trained and best validation
accuracy of that median run; the targets compare Cerebro asha with the peers.

Usage::

    python bench/early_stopping.py                 # -> bench/results/early_stopping.json
    python bench/early_stopping.py --quick         # smoke run (~75 s), 1 round; its targets
                                                   # mean nothing (ETL outweighs the fits)
    python bench/early_stopping.py --runners cerebro_asha,plain_sha --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import (  # noqa: E402
    attempt,
    begin,
    driver_args,
    driver_parser,
    machine_end,
    print_targets,
    run_child,
    run_rounds,
    write_json,
)
from _es_runners import RUNNERS, w3  # noqa: E402

RESULTS = BENCH / "results"
LABELS = {
    "cerebro_asha": "Cerebro asha (2 workers)",
    "cerebro_sha": "Cerebro sha (2 workers)",
    "ray": "Ray Tune ASHA",
    "ray_reuse": "Ray Tune ASHA, reuse_actors",
    "optuna1": "Optuna SHA pruner, 1 proc",
    "optuna2": "Optuna SHA pruner, 2 procs",
    "plain_sha": "plain loop, sync SHA",
    "cerebro_grid": "Cerebro full grid",
}
ACC_TOLERANCE = 0.005


def attempt_runner(
    runner: str, args: argparse.Namespace, log_dir: Path, rnd: int
) -> dict[str, Any]:
    """``runner`` in a fresh interpreter (``_es_runners.child_main``), after waiting for
    a quiet machine, and again (``--retries``) if others used the CPU meanwhile."""

    def once(i: int) -> dict[str, Any]:
        tag = log_dir / f"{runner}-{rnd}-{i}"
        out = tag.with_suffix(".json")
        argv = [runner, "1" if args.quick else "0", str(args.seed), str(out)]
        return run_child("_es_runners", argv, out, tag.with_suffix(".log"))

    return attempt(once, args)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run (by wall time) and every run's wall, epochs and best accuracy."""
    order = sorted(range(len(runs)), key=lambda i: runs[i]["wall_s"])
    med = runs[order[(len(order) - 1) // 2]]
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "walls_s": [r["wall_s"] for r in runs],
        "epochs": med["epochs"],
        "epochs_all": [r["epochs"] for r in runs],
        "best": med["best"],
        "best_val_acc_all": [r["best"]["val_acc"] for r in runs],
        "median_run": order[(len(order) - 1) // 2],
    }


def targets(agg: dict[str, dict[str, Any]], who: str = "cerebro_asha") -> list[dict[str, Any]]:
    """The issue's targets for ``who``: wall ratios, best accuracy, epochs trained."""
    out: list[dict[str, Any]] = []
    if who not in agg:
        return out
    me = agg[who]
    for peer, limit in (("ray", 0.5), ("ray_reuse", 0.8)):
        if peer in agg:
            v = me["wall_s"] / agg[peer]["wall_s"]
            out.append({"target": f"wall <= {limit}x {LABELS[peer]}", "value": v, "limit": limit})
    fast = [p for p in ("optuna1", "optuna2", "plain_sha") if p in agg]
    if fast:
        best = min(fast, key=lambda p: agg[p]["wall_s"])
        v = me["wall_s"] / agg[best]["wall_s"]
        label = f"wall <= 0.9x the best of Optuna and the plain loop (here {LABELS[best]})"
        out.append({"target": label, "value": v, "limit": 0.9})
    for t in out:
        t["met"] = t["value"] <= t["limit"]
    top = max(a for r in agg.values() for a in r["best_val_acc_all"])
    mine = statistics.median(me["best_val_acc_all"])
    out.append(
        {
            "target": f"best val acc within {ACC_TOLERANCE} of the best any runner found "
            f"({top:.4f}; value: the gap, of the median of {who}'s runs {mine:.4f})",
            "value": top - mine,
            "limit": ACC_TOLERANCE,
            "met": top - mine <= ACC_TOLERANCE + 1e-9,
        }
    )
    if "cerebro_grid" in agg:
        v = statistics.median(me["epochs_all"]) / agg["cerebro_grid"]["epochs"]
        out.append(
            {
                "target": "epochs trained <= 1/3 of the full grid's",
                "value": v,
                "limit": 1 / 3,
                "met": v <= 1 / 3 + 1e-9,
            }
        )
    return out


def _hp(hp: dict[str, Any]) -> str:
    return (
        f"C={hp['channels']} lr={hp['lr']:.3g} bs={hp['batch_size']} wd={hp['weight_decay']:.3g}"
    )


def print_table(agg: dict[str, dict[str, Any]], raw: dict[str, list[dict[str, Any]]]) -> None:
    head = (
        f"{'runner':<29} {'wall s':>7} {'(range)':>13} {'epochs':>6} {'best acc':>8} "
        f"{'ep':>2}  config"
    )
    print(head)
    print("-" * (len(head) + 40))
    for name, a in agg.items():
        walls = a["walls_s"]
        rng = f"{min(walls):.1f}-{max(walls):.1f}" if len(walls) > 1 else ""
        b = a["best"]
        ep = "/".join(str(e) for e in a["epochs_all"]) if len(a["epochs_all"]) > 1 else ""
        print(
            f"{LABELS.get(name, name):<29} {a['wall_s']:>7.2f} {rng:>13} {a['epochs']:>6} "
            f"{b['val_acc']:>8.4f} {b['epoch']:>2}  #{b['config']} {_hp(b['hyperparams'])}"
            + (f"  (epochs of each run {ep})" if ep else "")
        )
    for name in ("cerebro_asha", "cerebro_sha", "cerebro_grid"):
        if name not in agg:
            continue
        r = raw[name][agg[name]["median_run"]]
        p = r["profile"]
        ws = p["workers"].values()
        busy = [sum(w["busy_s"].values()) for w in ws]
        print(
            f"{name}: ETL (with worker start) {r['etl_s']:.2f} s, run_fit {r['fit_s']:.2f} s: "
            f"first hop after {min(w['lead_s'] for w in ws):.2f} s, hops "
            + " + ".join(f"{b:.2f}" for b in busy)
            + " s per worker, gaps "
            + " + ".join(f"{w['gaps_s']:.2f}" for w in ws)
            + " s (idle > 10 ms: "
            + " + ".join(f"{w['idle_over_10ms_s']:.2f}" for w in ws)
            + "), tail "
            + " + ".join(f"{w['tail_s']:.2f}" for w in ws)
            + f" s; close {r['close_s']:.2f} s (apart)"
        )


def main(argv: list[str] | None = None) -> int:
    p = driver_parser(__doc__, list(RUNNERS), "smoke run: 6 configs x 3 epochs")
    p.add_argument("--repeats", type=int, help="rounds of every runner (default 3; quick 1)")
    p.add_argument("--seed", type=int, default=1)
    args, runners, out = driver_args(p, argv, list(RUNNERS), "early_stopping")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3

    w = w3(args.quick)
    w.data.tensors_file()  # the PNGs, CSVs and tensor cache, before any clock starts
    report = begin(
        "early_stopping",
        args,
        argv,
        f"W3 early stopping{' (quick)' if args.quick else ''}: {len(w.configs)} configs, "
        f"<= {w.max_epochs} epochs, rungs {w.rungs()}; runners {', '.join(runners)}; "
        f"{args.repeats} round(s)",
    )
    with tempfile.TemporaryDirectory(prefix="cerebro-es-logs-") as logs:
        raw = run_rounds(
            runners,
            range(args.repeats),
            LABELS,
            lambda runner, rnd: attempt_runner(runner, args, Path(logs), rnd),
            lambda r: (
                f"{r['epochs']} epochs, best {r['best']['val_acc']:.4f} (#{r['best']['config']})"
            ),
        )
    agg = {r: aggregate(raw[r]) for r in runners}
    tgt = targets(agg)
    sha = targets(agg, "cerebro_sha")
    print(f"\n=== W3: median of {args.repeats} ===")
    print_table(agg, raw)
    print_targets("targets (Cerebro asha):", tgt)
    print_targets("the same for Cerebro sha (not targets):", sha, judged=False)
    report |= {
        "machine": {**report["machine"], **machine_end()},
        "workload": {
            "configs": w.configs,
            "max_epochs": w.max_epochs,
            "grace": w.grace,
            "reduction_factor": w.reduction_factor,
            "rungs": w.rungs(),
            "data": w.data.data,
        },
        "summary": agg,
        "targets": tgt,
        "sha_figures": sha,
        "runs": raw,
    }
    write_json(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
