"""The run's timeline: hops per worker over time, a Gantt chart where idle workers show.

NOTE [ a resumed fit's gap is cut out ]
A fit that was stopped and resumed has a stretch with no hops at all (the driver was gone:
seconds or days). Drawn to scale it would squeeze both halves into slivers and count as
idle workers, so the time axis counts *active* seconds only: the gap before a resumed
driver's first hop (its workers have new pids), and any gap longer than ``RESUME_GAP``,
is cut out and marked with a dashed line saying how long it was. Idle time inside a
session, which is what a user wants to see, is drawn to scale.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cerebro.report._data import RunData
from cerebro.report._plots import save_figure
from cerebro.report._summary import active_segments, driver_restarts, fmt_seconds, hop_intervals

__all__ = ["ActiveClock", "plot_timeline"]

COLORS = {
    "train": "#4C72B0",
    "val": "#DD8452",
    "failed": "#C44E52",
    "lost": "#9A9A9A",
    "running": "#A6D96A",
    "overhead": "#C7CED8",
}


class ActiveClock:
    """Maps wall time to seconds of active time since the first hop (gaps cut out)."""

    def __init__(self, segments: list[tuple[float, float]]):
        self.segments = segments
        self.starts = [s for s, _ in segments]
        self.offsets: list[float] = []
        acc = 0.0
        for s, e in segments:
            self.offsets.append(acc)
            acc += e - s

    def __call__(self, t: float) -> float:
        if not self.segments:
            return 0.0
        i = max(bisect.bisect_right(self.starts, t) - 1, 0)
        s, e = self.segments[i]
        return self.offsets[i] + min(max(t - s, 0.0), e - s)

    def gaps(self) -> list[tuple[float, float]]:
        """(active-time position, wall seconds cut out) of every cut gap."""
        return [
            (self.offsets[i], self.segments[i][0] - self.segments[i - 1][1])
            for i in range(1, len(self.segments))
        ]


def _category(status: str, kind: str) -> str:
    if status == "done":
        return "train" if kind == "train" else "val"
    if status in ("failed", "diverged"):
        return "failed"
    return "running" if status == "running" else "lost"


def plot_timeline(run: RunData, out_dir: Path) -> Path | None:
    """Hops per worker over (active) time, train and val hops in different colours."""
    hops = [h for h in run.hops if h["start"] is not None]
    if not hops:
        return None
    clock = ActiveClock(active_segments(hop_intervals(run), breaks=driver_restarts(run)))
    intervals = dict(zip((h["hop_id"] for h in hops), hop_intervals(run), strict=True))
    workers = sorted({int(h["worker"]) for h in hops} | set(range(run.workers)))
    total = max(clock(max(e for _, e in intervals.values())), 1e-9)
    bars: dict[tuple[int, str], list[tuple[float, float]]] = {}
    labels: list[tuple[float, float, int, str, str]] = []
    for h in hops:
        s, e = intervals[h["hop_id"]]
        x0, x1 = clock(s), clock(e)
        cat = _category(h["status"], h["kind"])
        w = int(h["worker"])
        bars.setdefault((w, cat), []).append((x0, max(x1 - x0, total * 1e-4)))
        load = save = 0.0
        if h["status"] == "done":  # building/loading and saving the model: overhead, lighter
            load = min(float(h["load_seconds"] or 0.0), x1 - x0)
            save = min(float(h["save_seconds"] or 0.0), x1 - x0 - load)
            for start, width in ((x0, load), (x1 - save, save)):
                if width > total * 2e-3:
                    bars.setdefault((w, "overhead"), []).append((start, width))
        pale = load + save > (x1 - x0) / 2
        labels.append((x0, x1, w, h["model_id"], "#1d2125" if pale else "white"))
    height = max(2.6, 0.55 * len(workers) + 1.6)
    fig = Figure(figsize=(13.0, height), layout="constrained")
    ax = fig.subplots()
    order = list(COLORS)
    for (w, cat), spans in sorted(bars.items(), key=lambda kv: order.index(kv[0][1])):
        ax.broken_barh(
            spans,
            (w - 0.38, 0.76),
            facecolors=COLORS[cat],
            edgecolors="white",
            linewidth=0.4,
            hatch="//" if cat == "running" else None,
        )
    # Model ids inside the hops that are wide enough to hold them.
    min_width = total * 0.035
    for x0, x1, w, mid, color in labels:
        if x1 - x0 >= min_width:
            ax.text(
                (x0 + x1) / 2, w, mid, ha="center", va="center", fontsize=7, color=color,
                clip_on=True,
            )  # fmt: skip
    for pos, gap in clock.gaps():
        ax.axvline(pos, color="#333333", ls="--", lw=1)
        ax.text(
            pos, 1.0, f" resumed after {fmt_seconds(gap)}", transform=ax.get_xaxis_transform(),
            fontsize=8, va="bottom", ha="left",
        )  # fmt: skip
    ax.set_yticks(workers, [f"worker {w}" for w in workers])
    ax.set_ylim(max(workers) + 0.6, min(workers) - 0.6)
    ax.set_xlim(0, total * 1.01)
    ax.set_xlabel("seconds since the first hop" + (" (gaps cut out)" if clock.gaps() else ""))
    ax.grid(axis="x", alpha=0.3)
    present = {cat for _, cat in bars}
    names = {"train": "train hop", "val": "validation hop", "failed": "failed/diverged",
             "lost": "lost (worker or driver died)", "running": "running now",
             "overhead": "model build/load and save"}  # fmt: skip
    fig.legend(
        handles=[Patch(color=COLORS[c], label=names[c]) for c in COLORS if c in present],
        loc="outside lower center",
        ncols=5,
        fontsize=9,
        frameon=False,
    )
    return save_figure(fig, out_dir / "timeline.png")
