"""The scheduler simulation's figure: makespan / lower bound per policy, against the targets.

One row of two panels per result (``scheduler_sim.py --json`` output, e.g. one at latency 0
and one at 0.05): on the left every scenario's ratio per policy with the mean marked, on the
right the mean and worst ratio against the number of workers.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Any

__all__ = ["plot_ratios"]

MEAN_TARGET, WORST_TARGET = 1.03, 1.10


def plot_ratios(results: list[tuple[str, dict[str, Any]]], path: Path) -> Path:
    """Write the figure of ``[(label, result)]`` to ``path`` (PNG); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(results), 2, figsize=(13, 4.2 * len(results)), squeeze=False, layout="constrained"
    )
    for (label, result), (left, right) in zip(results, axes, strict=True):
        rows = result["scenarios"]
        policies = list(result["summary"])
        jitter = random.Random(0)
        for i, policy in enumerate(policies):
            ys = [r[policy] for r in rows]
            xs = [i + jitter.uniform(-0.18, 0.18) for _ in ys]
            left.scatter(xs, ys, s=14, alpha=0.6)
            mean = statistics.fmean(ys)
            left.hlines(mean, i - 0.3, i + 0.3, colors="black", linewidth=2)
            left.annotate(f"{mean:.3f}", (i + 0.32, mean), va="center", fontsize=8)
        left.set_xticks(range(len(policies)), policies, rotation=20)
        left.set_ylabel("makespan / lower bound")
        left.set_title(f"{label}: every scenario (bar = mean)")
        workers = sorted({r["workers"] for r in rows})
        for policy in policies:
            per = [[r[policy] for r in rows if r["workers"] == w] for w in workers]
            line = right.plot(workers, [statistics.fmean(p) for p in per], marker="o")
            right.plot(
                workers,
                [max(p) for p in per],
                linestyle=":",
                marker=".",
                color=line[0].get_color(),
            )
            line[0].set_label(policy)
        right.set_xscale("log", base=2)
        right.set_xticks(workers, [str(w) for w in workers])
        right.set_xlabel("workers (models 16-256, with and without a straggler)")
        right.set_title(f"{label}: mean (solid) and worst (dotted) by cluster size")
        right.legend(fontsize=8, ncols=2)
        for ax in (left, right):
            ax.axhline(MEAN_TARGET, color="tab:green", linewidth=0.8, linestyle="--")
            ax.axhline(WORST_TARGET, color="tab:red", linewidth=0.8, linestyle="--")
            ax.axhline(1.0, color="grey", linewidth=0.6)
            ax.grid(alpha=0.3)
        left.annotate(
            f"target: mean ≤ {MEAN_TARGET}", (0, MEAN_TARGET), fontsize=8, color="tab:green"
        )
        left.annotate(
            f"target: worst ≤ {WORST_TARGET}", (0, WORST_TARGET), fontsize=8, color="tab:red"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
