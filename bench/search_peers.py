"""Benchmark: a hyperparameter search on the MNIST-5k CNN, Cerebro against its peers.

The space ``channels`` (the hidden fc width) in {32, 64, 128, 256}, ``lr`` log-uniform in
[1e-4, 1e-2], ``batch_size`` in {32, 64, 128}, ``weight_decay`` log-uniform in
[1e-6, 1e-3]; 24 models of 3 epochs each, on W2's data (4,000 train / 1,000 val PNGs);
a model's value is its best epoch's validation accuracy (mode max). Runners
(``_search_runners.py``), each in a fresh Python process, one after another, once per
seed (``--seeds``):

  cerebro_tpe     Cerebro, run_fit(space, search="tpe", num_models=24), 2 workers
  cerebro_random  the same with search="random"
  optuna1         Optuna TPESampler, study.optimize(n_trials=24, n_jobs=1), one process
  optuna2         the same sampler in 2 processes sharing a journal-file study
  ray             Ray Tune, OptunaSearch (TPE), 2 concurrent 1-CPU trials, reuse_actors

Each wall time counts, after the imports of torch and the model code, everything until
the search has ended: the framework's imports, data loading, process and worker start,
ray.init, and for Cerebro its ETL from the CSVs and PNGs, as a user's first run pays
them. The ratios are Cerebro TPE's wall over each peer's, measured side by side in each
round (one round per seed), and their median over the rounds.

Usage::

    python bench/search_peers.py              # 3 seeds -> bench/results/search_peers.json
    python bench/search_peers.py --quick      # smoke run: 6 models x 1 epoch, 800 / 200
                                              # images, 1 seed (~90 s); its targets mean
                                              # nothing (ETL and start-up outweigh the fits)
    python bench/search_peers.py --seeds 5 --runners cerebro_tpe,optuna1
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

import _common as common  # noqa: E402
from _search_runners import RUNNERS, budget  # noqa: E402

RESULTS = BENCH / "results"
LABELS = {
    "cerebro_tpe": "Cerebro TPE (2 workers)",
    "cerebro_random": "Cerebro random (2 workers)",
    "optuna1": "Optuna TPE, n_jobs=1",
    "optuna2": "Optuna TPE, 2 procs, journal",
    "ray": "Ray Tune OptunaSearch, reuse",
}
# The targets for Cerebro TPE: wall <= limit x the peer's.
WALL_TARGETS = {"ray": 0.6, "optuna2": 0.9}
# "Within noise": the gap of mean bests at most the larger of this and the spread (max -
# min) of either runner's best over the seeds.
ACC_FLOOR = 0.005


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One runner's rounds: median wall, each round's wall and best, the mean best."""
    bests = [r["best"]["val_acc"] for r in runs]
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "walls_s": [r["wall_s"] for r in runs],
        "best_val_acc": statistics.fmean(bests),
        "best_val_acc_all": bests,
        "models_all": [r["models"] for r in runs],
        "epochs_all": [r["epochs"] for r in runs],
    }


def ratios(agg: dict[str, dict[str, Any]], who: str) -> dict[str, dict[str, Any]]:
    """``who``'s wall over each other runner's, per round (side by side) and their median."""
    out: dict[str, dict[str, Any]] = {}
    if who not in agg:
        return out
    mine = agg[who]["walls_s"]
    for peer, a in agg.items():
        if peer == who:
            continue
        each = [m / p for m, p in zip(mine, a["walls_s"], strict=False)]
        out[peer] = {"each": each, "median": statistics.median(each)}
    return out


def targets(agg: dict[str, dict[str, Any]], who: str = "cerebro_tpe") -> list[dict[str, Any]]:
    """The issue's targets for ``who``: wall ratios, and best accuracy against Optuna's TPE
    on the same budget."""
    out: list[dict[str, Any]] = []
    rs = ratios(agg, who)
    for peer, limit in WALL_TARGETS.items():
        if peer in rs:
            v = rs[peer]["median"]
            label = f"wall <= {limit}x {LABELS[peer]}"
            out.append({"target": label, "value": v, "limit": limit, "met": v <= limit})
    if who in agg and "optuna1" in agg:
        me, ref = agg[who], agg["optuna1"]
        spread = max(max(a["best_val_acc_all"]) - min(a["best_val_acc_all"]) for a in (me, ref))
        noise = max(ACC_FLOOR, spread)
        gap = ref["best_val_acc"] - me["best_val_acc"]
        out.append(
            {
                "target": f"best val acc within noise ({noise:.4f}) of {LABELS['optuna1']}'s "
                f"({ref['best_val_acc']:.4f}; value: the gap of the means over the seeds)",
                "value": gap,
                "limit": noise,
                "met": gap <= noise + 1e-9,
            }
        )
    return out


def table(agg: dict[str, dict[str, Any]], who: str = "cerebro_tpe") -> list[str]:
    """The lines printed: each runner's walls and bests, then ``who``'s ratios."""
    head = f"{'runner':<30} {'wall s':>7} {'(each seed)':>22} {'best acc':>8} {'(each seed)':>22}"
    lines = [head, "-" * len(head)]
    for name, a in agg.items():
        walls = " ".join(f"{w:.1f}" for w in a["walls_s"])
        bests = " ".join(f"{v:.4f}" for v in a["best_val_acc_all"])
        lines.append(
            f"{LABELS.get(name, name):<30} {a['wall_s']:>7.2f} {walls:>22} "
            f"{a['best_val_acc']:>8.4f} {bests:>22}"
        )
    rs = ratios(agg, who)
    if rs:
        lines.append(f"{LABELS[who]} wall / each runner's (median; each seed):")
        for peer, r in rs.items():
            each = ", ".join(f"{v:.3f}" for v in r["each"])
            lines.append(f"  / {LABELS.get(peer, peer):<30} {r['median']:.3f}  ({each})")
    return lines


def attempt_runner(
    runner: str, args: argparse.Namespace, log_dir: Path, seed: int
) -> dict[str, Any]:
    """``runner`` in a fresh interpreter (``_search_runners.child_main``), after waiting for
    a quiet machine, and again (``--retries``) if others used the CPU meanwhile."""

    def once(i: int) -> dict[str, Any]:
        tag = log_dir / f"{runner}-s{seed}-{i}"
        out = tag.with_suffix(".json")
        argv = [runner, "1" if args.quick else "0", str(seed), str(out)]
        return common.run_child("_search_runners", argv, out, tag.with_suffix(".log"))

    return common.attempt(once, args)


def main(argv: list[str] | None = None) -> int:
    p = common.driver_parser(__doc__, list(RUNNERS), "smoke run: 6 models x 1 epoch, 1 seed")
    p.add_argument("--seeds", type=int, help="rounds, seeds 1..N (default 3; quick 1)")
    args, runners, out = common.driver_args(p, argv, list(RUNNERS), "search_peers")
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3

    b = budget(args.quick)
    b.data.tensors_file()  # the PNGs, CSVs and tensor cache, before any clock starts
    report = common.begin(
        "search_peers",
        args,
        argv,
        f"search on the MNIST CNN{' (quick)' if args.quick else ''}: {b.models} models x "
        f"{b.epochs} epochs, {b.data.data['n_train']} / {b.data.data['n_val']} images; "
        f"runners {', '.join(runners)}; {args.seeds} seed(s)",
    )
    with tempfile.TemporaryDirectory(prefix="cerebro-search-logs-") as logs:
        raw = common.run_rounds(
            runners,
            range(1, args.seeds + 1),  # round i: seed i
            LABELS,
            lambda runner, seed: attempt_runner(runner, args, Path(logs), seed),
            lambda r: (
                f"{r['models']} models, {r['epochs']} epochs, best {r['best']['val_acc']:.4f}"
            ),
        )
    agg = {r: aggregate(raw[r]) for r in runners}
    tgt = targets(agg)
    rnd = targets(agg, "cerebro_random")
    print(f"\n=== search on the MNIST CNN: {args.seeds} seed(s) ===")
    print("\n".join(table(agg)))
    common.print_targets("targets (Cerebro TPE):", tgt)
    common.print_targets("the same for Cerebro random (not targets):", rnd, judged=False)
    report |= {
        "machine": {**report["machine"], **common.machine_end()},
        "budget": {"models": b.models, "epochs": b.epochs, "data": b.data.data},
        "summary": agg,
        "ratios": {w: ratios(agg, w) for w in ("cerebro_tpe", "cerebro_random")},
        "targets": tgt,
        "random_figures": rnd,
        "runs": raw,
    }
    common.write_json(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
