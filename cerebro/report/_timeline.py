"""The run's timeline: hops per worker over time, a Gantt chart where idle workers show.

NOTE [ a resumed fit's gap is cut out ]
A fit that was stopped and resumed has a stretch with no hops at all (the driver was gone:
seconds or days). Drawn to scale it would squeeze both halves into slivers and count as
idle workers, so the time axis counts *active* seconds only: the gap before a resumed
driver's first hop (its workers have new pids), and any gap longer than ``RESUME_GAP``,
is cut out and marked with a dashed line saying how long it was. Idle time inside a
session, which is what a user wants to see, is drawn to scale.

NOTE [ many hops are drawn as busy shares ]
A long run has thousands of hops per worker: drawn one bar each, every bar is thinner than
a pixel and the white edge between bars turns the lanes into dust. When the median hop is
narrower than ``1 / MAX_HOPS_ACROSS`` of the axis and some worker ran more than
``MIN_BINNED_HOPS`` hops, each worker's lane is cut into ``BINS`` equal stretches of
(active) time instead, and each stretch is a stacked column: how much of it the worker
spent training, validating, building/loading/saving models, on failed or lost hops, and
(the empty rest) idle. The x-axis label says how long a stretch is.

NOTE [ the tail ]
Towards the end of a fit fewer models remain than there are workers (early stopping makes
this stretch longer), and the workers without a model idle. A model *remains* at time
``t`` while one of its hops ends after ``t``; the tail runs from when fewer than
``workers`` models remain to the last hop's end. :func:`tail` measures it (in active
seconds, as the figure's axis), the figure shades it (unless it is the whole fit: fewer
models than workers from the start) and the report says how long it lasted and how many
worker-seconds were idle in it.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch, Polygon

from cerebro.report._data import RunData
from cerebro.report._plots import save_figure
from cerebro.report._summary import active_segments, driver_restarts, fmt_seconds, hop_intervals
from cerebro.statuses import HopStatus

__all__ = ["ActiveClock", "Tail", "plot_timeline", "run_tail", "tail", "timeline_figure"]

COLORS = {
    "train": "#4C72B0",
    "val": "#DD8452",
    "failed": "#C44E52",
    "lost": "#9A9A9A",
    "running": "#A6D96A",
    "overhead": "#C7CED8",
}
NAMES = {
    "train": "train hop",
    "val": "validation hop",
    "failed": "failed/diverged",
    "lost": "lost (worker or driver died)",
    "running": "running now",
    "overhead": "model build/load and save",
}
# Past this many hops across the axis (median width), hops are drawn as busy shares.
MAX_HOPS_ACROSS = 250
MIN_BINNED_HOPS = 100  # ... and a worker ran more hops than this (each then >= ~12 px)
BINS = 120
LANE = 0.76  # a worker lane's height (workers are 1 apart)
TAIL_COLOR = "#F2E6B3"  # the tail's shading (NOTE [ the tail ])


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


@dataclass(frozen=True)
class Tail:
    """The stretch at the end with fewer models than workers (NOTE [ the tail ]).

    ``start`` and ``end`` are on the clock of the hops given; ``idle`` is worker-seconds
    no hop ran in ``[start, end]``; ``whole``: fewer models than workers from the first
    hop on.
    """

    start: float
    end: float
    idle: float
    workers: int
    whole: bool = False

    @property
    def seconds(self) -> float:
        return self.end - self.start


def tail(hops: Iterable[tuple[str, float, float]], workers: int) -> Tail | None:
    """The tail of hops ``(model_id, start, end)`` run by ``workers`` workers; ``None``
    when there is none (never fewer models than workers before the end, or no hops).

    The tail starts where the ``workers``-th latest model end lies: from then on fewer
    than ``workers`` models have a hop ending later.
    """
    spans = [(m, float(s), float(e)) for m, s, e in hops]
    if not spans or workers < 1:
        return None
    ends: dict[str, float] = {}
    for m, _, e in spans:
        ends[m] = max(ends.get(m, e), e)
    first = min(s for _, s, _ in spans)
    last = max(ends.values())
    latest = sorted(ends.values(), reverse=True)
    whole = len(latest) < workers
    start = first if whole else latest[workers - 1]
    if last <= start:
        return None
    busy = sum(max(min(e, last) - max(s, start), 0.0) for _, s, e in spans)
    idle = max(workers * (last - start) - busy, 0.0)
    return Tail(start, last, idle, workers, whole)


def run_tail(run: RunData) -> Tail | None:
    """:func:`tail` of a finished fit's hops, in active seconds since its first hop (the
    timeline's axis, resume gaps cut out); ``None`` while the fit runs (its models'
    ends are not known yet)."""
    if not run.finished:
        return None
    hops = [h for h in run.hops if h["start"] is not None]
    intervals = hop_intervals(run)
    clock = ActiveClock(active_segments(intervals, breaks=driver_restarts(run)))
    return tail(
        ((h["model_id"], clock(s), clock(e)) for h, (s, e) in zip(hops, intervals, strict=True)),
        run.workers,
    )


def _category(status: str, kind: str) -> str:
    """The timeline colour of a hop with catalog ``status``."""
    if status == HopStatus.DONE:
        return "train" if kind == "train" else "val"
    if status in (HopStatus.FAILED, HopStatus.DIVERGED):
        return "failed"
    return "running" if status == HopStatus.RUNNING else "lost"


def plot_timeline(run: RunData, out_dir: Path) -> Path | None:
    """Hops per worker over (active) time, train and val hops in different colours."""
    fig = timeline_figure(run)
    return None if fig is None else save_figure(fig, out_dir / "timeline.png")


Span = tuple[float, float, int, str]  # (x0, x1) in active seconds, worker, category


def timeline_figure(run: RunData) -> Figure | None:
    """The figure of :func:`plot_timeline`, unsaved; ``None`` before any hop started.

    One bar per hop, or per-worker busy shares when hops are too many to see (see the NOTE
    at the top of this module).
    """
    hops = [h for h in run.hops if h["start"] is not None]
    if not hops:
        return None
    clock = ActiveClock(active_segments(hop_intervals(run), breaks=driver_restarts(run)))
    intervals = dict(zip((h["hop_id"] for h in hops), hop_intervals(run), strict=True))
    workers = sorted({int(h["worker"]) for h in hops} | set(range(run.workers)))
    total = max(clock(max(e for _, e in intervals.values())), 1e-9)
    spans: list[Span] = []
    overhead: list[Span] = []  # the parts of done hops spent on the model, by hop category
    labels: list[tuple[float, float, int, str, str]] = []
    for h in hops:
        s, e = intervals[h["hop_id"]]
        x0, x1 = clock(s), clock(e)
        w = int(h["worker"])
        spans.append((x0, x1, w, _category(h["status"], h["kind"])))
        load = save = 0.0
        if (
            h["status"] == HopStatus.DONE
        ):  # building/loading and saving the model: overhead, lighter
            load = min(float(h["load_seconds"] or 0.0), x1 - x0)
            save = min(float(h["save_seconds"] or 0.0), x1 - x0 - load)
            cat = _category(h["status"], h["kind"])
            overhead += [(x0, x0 + load, w, cat), (x1 - save, x1, w, cat)]
        pale = load + save > (x1 - x0) / 2
        labels.append((x0, x1, w, h["model_id"], "#1d2125" if pale else "white"))
    height = max(2.6, 0.55 * len(workers) + 1.6)
    fig = Figure(figsize=(13.0, height), layout="constrained")
    ax = fig.subplots()
    median = statistics.median(x1 - x0 for x0, x1, _, _ in spans)
    per_worker = max(sum(1 for _, _, w, _ in spans if w == v) for v in workers)
    binned = per_worker > MIN_BINNED_HOPS and median * MAX_HOPS_ACROSS < total
    if binned:
        present = _draw_shares(ax, spans, overhead, total)
        note = f"; each column: what a worker did in {_fmt_bin(total / BINS)} (empty: idle)"
    else:
        present = _draw_hops(ax, spans, overhead, labels, total)
        note = ""
    shaded = run_tail(run)
    if shaded is not None and shaded.whole:
        shaded = None  # the whole axis: the report's sentence says it, shading shows nothing
    if shaded is not None:
        _draw_tail(ax, shaded)
    for pos, gap in clock.gaps():
        ax.axvline(pos, color="#333333", ls="--", lw=1)
        ax.text(
            pos, 1.0, f" resumed after {fmt_seconds(gap)}", transform=ax.get_xaxis_transform(),
            fontsize=8, va="bottom", ha="left",
        )  # fmt: skip
    ax.set_yticks(workers, [f"worker {w}" for w in workers])
    ax.set_ylim(max(workers) + 0.6, min(workers) - 0.6)
    ax.set_xlim(0, total * 1.01)
    cut = " (gaps cut out)" if clock.gaps() else ""
    ax.set_xlabel(f"seconds since the first hop{cut}{note}")
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=COLORS[c], label=NAMES[c]) for c in COLORS if c in present]
    if shaded is not None:
        handles.append(Patch(color=TAIL_COLOR, label="tail: fewer models than workers"))
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=6,
        fontsize=9,
        frameon=False,
    )
    return fig


def _draw_tail(ax: Any, t: Tail) -> None:
    """Shade the tail behind the hops, a dotted line where it starts.

    A polygon, not ``axvspan``'s rectangle: rectangles on this axis are busy-share columns.
    """
    corners = [(t.start, 0.0), (t.end, 0.0), (t.end, 1.0), (t.start, 1.0)]
    ax.add_patch(
        Polygon(
            corners, closed=True, color=TAIL_COLOR, alpha=0.6, lw=0, zorder=0,
            transform=ax.get_xaxis_transform(),
        )
    )  # fmt: skip
    ax.axvline(t.start, color="#8a6d00", ls=":", lw=1.2, zorder=0.5)


def _fmt_bin(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else fmt_seconds(seconds)


def _draw_hops(
    ax: Any,
    spans: list[Span],
    overhead: list[Span],
    labels: list[tuple[float, float, int, str, str]],
    total: float,
) -> set[str]:
    """One bar per hop (overhead lighter at its ends), model ids in the wide ones."""
    bars: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for x0, x1, w, cat in spans:
        bars.setdefault((w, cat), []).append((x0, max(x1 - x0, total * 1e-4)))
    for x0, x1, w, _ in overhead:
        if x1 - x0 > total * 2e-3:
            bars.setdefault((w, "overhead"), []).append((x0, x1 - x0))
    order = list(COLORS)
    for (w, cat), bar in sorted(bars.items(), key=lambda kv: order.index(kv[0][1])):
        ax.broken_barh(
            bar,
            (w - LANE / 2, LANE),
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
    return {cat for _, cat in bars}


def _draw_shares(ax: Any, spans: list[Span], overhead: list[Span], total: float) -> set[str]:
    """Per worker and stretch of time, a column stacked by what the worker was doing."""
    width = total / BINS
    seconds: dict[tuple[int, str], list[float]] = {}

    def add(x0: float, x1: float, w: int, cat: str, sign: float = 1.0) -> None:
        acc = seconds.setdefault((w, cat), [0.0] * BINS)
        i = min(int(x0 / width), BINS - 1)
        while x0 < x1 and i < BINS:
            end = min(x1, (i + 1) * width)
            acc[i] += sign * max(end - x0, 0.0)
            x0, i = end, i + 1

    for x0, x1, w, cat in spans:
        add(x0, x1, w, cat)
    for x0, x1, w, cat in overhead:  # part of its hop: moved from the hop's category
        add(x0, x1, w, "overhead")
        add(x0, x1, w, cat, -1.0)
    lefts = [i * width for i in range(BINS)]
    present: set[str] = set()
    for w in sorted({w for w, _ in seconds}):
        base = [0.0] * BINS
        for cat in COLORS:
            shares = [max(v, 0.0) / width for v in seconds.get((w, cat), [])]
            if not any(shares):
                continue
            present.add(cat)
            heights = [min(LANE * sh, LANE - b) for sh, b in zip(shares, base, strict=True)]
            bottoms = [w + LANE / 2 - b - hgt for b, hgt in zip(base, heights, strict=True)]
            ax.bar(
                lefts, heights, width=width, bottom=bottoms, align="edge", color=COLORS[cat],
                linewidth=0, hatch="//" if cat == "running" else None,
            )  # fmt: skip
            base = [b + hgt for b, hgt in zip(base, heights, strict=True)]
    return present
