"""The report's PNG plots: learning curves and each hyperparameter against the objective.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas, never ``pyplot``, so
no global state or GUI backend is touched, and every file is written to a temporary name and
renamed (a reader never sees half a PNG).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cerebro._atomic import replacing
from cerebro.report._data import RunData
from cerebro.report._summary import RunStatus, fmt_value, objective_value
from cerebro.statuses import DROPPED

__all__ = [
    "hyperparams_figure",
    "learning_curve_figures",
    "plot_hyperparams",
    "plot_learning_curves",
    "save_figure",
]

BEST_COLOR = "#111111"
FAILED_COLOR = "#C44E52"
MODEL_COLOR = "#4C72B0"
STOP_MARKER = "x"  # ends the curve of a model early stopping stopped
# Past this many models the legend names the best ones only; the rest are drawn in grey.
LEGEND_LIMIT = 20
# A curve with more points than this is a plain line: at 200 epochs markers merge into a
# blob that hides the curve's shape (and the other models' curves under it).
MARKER_LIMIT = 30


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG to a temporary name, then rename it into place."""
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "metric"


def _colors(n: int) -> list[Any]:
    """``n`` distinct colours: tab10's first, then tab20's lighter shades of them."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    tab20 = colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # dark shades, then the light ones
    return [tab20(order[i % 20]) for i in range(n)]


def _ranked(st: RunStatus) -> list[str]:
    """Model ids, best first by the objective, models without a value last."""
    sign = 1.0 if st.mode == "min" else -1.0

    def key(m: Any) -> tuple[int, float, str]:
        v = objective_value(m, st.objective)
        return (v is None, 0.0 if v is None else sign * v, m.model_id)

    return [m.model_id for m in sorted(st.models, key=key)]


def _marker(n_points: int) -> str:
    """``"o"`` for a curve short enough that its points stay apart, else no marker."""
    return "o" if n_points <= MARKER_LIMIT else ""


def plot_learning_curves(run: RunData, st: RunStatus, out_dir: Path) -> list[tuple[str, Path]]:
    """One figure per metric: train and val panels, every model, the best one highlighted.

    Returns ``[(metric name, png path)]``.
    """
    return [
        (name, save_figure(fig, out_dir / f"curves_{safe_name(name)}.png"))
        for name, fig in learning_curve_figures(run, st)
    ]


def learning_curve_figures(run: RunData, st: RunStatus) -> list[tuple[str, Figure]]:
    """The figures of :func:`plot_learning_curves`, unsaved: ``[(metric name, figure)]``.

    Points carry a marker only while a curve has at most ``MARKER_LIMIT`` of them. The
    curve of a model early stopping stopped ends in an ``x`` of its colour, at its last
    epoch, so a short curve reads as stopped rather than as unfinished.
    """
    series: dict[str, dict[str, dict[str, list[tuple[int, float]]]]] = {}
    for m in run.metrics:
        if m["value"] is None or not math.isfinite(m["value"]):
            continue
        s = series.setdefault(m["name"], {}).setdefault(m["split"], {})
        s.setdefault(m["model_id"], []).append((int(m["epoch"]) + 1, float(m["value"])))
    status = {m.model_id: m.status for m in st.models}
    stopped = run.stopped_early
    best = st.best["model_id"] if st.best else None
    ranges = {
        name: (
            min(v for c in splits.values() for pts in c.values() for _, v in pts),
            max(v for c in splits.values() for pts in c.values() for _, v in pts),
        )
        for name, splits in series.items()
    }
    with_points = {mid for splits in series.values() for c in splits.values() for mid in c}
    others = [mid for mid in _ranked(st) if mid in with_points and mid != best]
    colors = dict(zip(others, _colors(len(others)), strict=True))
    labels = _labels(run)
    ids = sorted(status)
    obj_split, _, obj_name = st.objective.partition("_")
    out = []
    for name in sorted(series, key=lambda n: (n != obj_name, n)):
        here = {mid for c in series[name].values() for mid in c}
        ranked = [mid for mid in _ranked(st) if mid in here]
        named = set(ranked[:LEGEND_LIMIT])
        without = len(status) - len(ranked)
        splits: list[str] = [s for s in ("train", "val") if s in series[name]]
        splits += sorted(s for s in series[name] if s not in splits)
        fig = Figure(figsize=(5.0 * len(splits) + 2.2, 4.2), layout="constrained")
        axes = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
        for ax, split in zip(axes, splits, strict=True):
            curves = series[name][split]
            for mid in ids:
                if mid not in curves or mid == best:
                    continue
                pts = sorted(curves[mid])
                dropped = status.get(mid) in DROPPED
                color = colors[mid] if mid in named else "#BBBBBB"
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    color=color,
                    lw=1.3,
                    ls=":" if dropped else "-",
                    marker=_marker(len(pts)),
                    ms=3,
                    alpha=0.85,
                )
                if mid in stopped:
                    _stop_mark(ax, pts[-1], color)
            if best in curves:
                pts = sorted(curves[best])
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                ax.plot(xs, ys, color=BEST_COLOR, lw=2.6, marker=_marker(len(pts)), ms=5, zorder=5)
                if best in stopped:
                    _stop_mark(ax, pts[-1], BEST_COLOR, zorder=5.5)
                low, high = ranges[name]
                above = ys[-1] <= (low + high) / 2  # the label goes where there is room
                ax.annotate(
                    f"best: {best}",
                    (xs[-1], ys[-1]),
                    xytext=(-6, 9 if above else -9),
                    textcoords="offset points",
                    ha="right",
                    va="bottom" if above else "top",
                    fontsize=9,
                    color=BEST_COLOR,
                    zorder=6,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
                )
            highlight = split == obj_split and name == obj_name
            ax.set_title(f"{split} {name}" + ("  (objective)" if highlight else ""), fontsize=11)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.margins(x=0.06, y=0.08)
        axes[0].set_ylabel(name)
        fig.legend(
            handles=_legend(ranked, named, colors, status, best, labels, without, stopped),
            loc="outside right upper",
            fontsize=8,
            frameon=False,
            title="models (best first)",
            title_fontsize=8,
        )
        out.append((name, fig))
    return out


def _stop_mark(ax: Any, point: tuple[int, float], color: Any, zorder: float = 4) -> None:
    """The ``x`` that ends a stopped model's curve."""
    ax.plot(*point, ls="", marker=STOP_MARKER, color=color, ms=7, mew=1.8, zorder=zorder)


def _labels(run: RunData, width: int = 44) -> dict[str, str]:
    """``m003 lr=0.003 hidden=64``: the id and the hyperparameters that vary, shortened."""
    varying = [
        n
        for n in run.hyperparam_names()
        if len({repr(m["hyperparams"].get(n)) for m in run.models}) > 1
    ]
    out = {}
    for m in run.models:
        hp = " ".join(f"{n}={fmt_value(m['hyperparams'].get(n))}" for n in varying)
        label = f"{m['model_id']}  {hp}".rstrip()
        out[m["model_id"]] = label if len(label) <= width else label[: width - 1] + "…"
    return out


def _legend(
    ranked: list[str],
    named: set[str],
    colors: dict[str, Any],
    status: dict[str, str],
    best: str | None,
    labels: dict[str, str],
    without: int,
    stopped: set[str],
) -> list[Line2D]:
    handles = []
    for mid in ranked:
        if mid not in named:
            continue
        label = labels.get(mid, mid)
        mark: dict[str, Any] = (
            {"marker": STOP_MARKER, "ms": 6, "mew": 1.5} if mid in stopped else {}
        )
        if mid == best:
            tag = "  (best, stopped)" if mid in stopped else "  (best)"
            handles.append(Line2D([], [], color=BEST_COLOR, lw=3, label=label + tag, **mark))
        else:
            dropped = status.get(mid) in DROPPED
            tag = f"  ({status[mid]})" if dropped else "  (stopped)" if mid in stopped else ""
            ls = ":" if dropped else "-"
            handles.append(
                Line2D([], [], color=colors[mid], lw=1.5, ls=ls, label=label + tag, **mark)
            )
    rest = len(ranked) - len(named)
    if rest:
        grey = sum(1 for mid in ranked if mid not in named and mid in stopped)
        note = f", {grey} of them stopped: x" if grey else ""
        handles.append(Line2D([], [], color="#BBBBBB", lw=1.5, label=f"{rest} more (grey{note})"))
    if without:
        handles.append(Line2D([], [], ls="", label=f"{without} model(s) without a finished epoch"))
    return handles


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def plot_hyperparams(run: RunData, st: RunStatus, out_dir: Path) -> Path | None:
    """One panel per hyperparameter that varies: its values against the objective.

    Numbers are placed on a numeric axis (log when they span 20x or more), anything else
    as categories. A failed or diverged model with no objective value is an ``x`` along the
    top edge, so hyperparameter values that break training stand out. ``None`` when
    nothing varies or no model has a value yet.
    """
    fig = hyperparams_figure(run, st)
    return None if fig is None else save_figure(fig, out_dir / "hyperparams.png")


def hyperparams_figure(run: RunData, st: RunStatus) -> Figure | None:
    """The figure of :func:`plot_hyperparams`, unsaved.

    NOTE [ the best model's star hides nothing ]
        Every model is a dot, the best one included (black, smaller); the best also gets a
        hollow star, and both are drawn *behind* the other models' dots, so a model with
        (nearly) the same value stays visible inside the star instead of disappearing
        under a filled one.
    """
    names = [
        n
        for n in run.hyperparam_names()
        if len({repr(m.hyperparams.get(n)) for m in st.models}) > 1
    ]
    if not names or all(objective_value(m, st.objective) is None for m in st.models):
        return None  # nothing varies, or no model has a value yet
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.4 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    best = st.best["model_id"] if st.best else None
    for ax, name in zip(axes, names, strict=False):
        vals = [m.hyperparams.get(name) for m in st.models]
        numeric = all(_is_number(v) for v in vals)
        if numeric:
            xs_all = [float(v) for v in vals]  # type: ignore[arg-type]
            pos = [v for v in xs_all if v > 0]
            if len(pos) == len(xs_all) and max(pos) / min(pos) >= 20:
                ax.set_xscale("log")
            distinct = sorted(set(xs_all))
            if len(distinct) <= 8:
                ax.set_xticks(distinct, [fmt_value(v) for v in distinct])
                ax.minorticks_off()
        else:
            cats = sorted({repr(v) for v in vals}, key=str)
            labels = {c: fmt_value(v) for c, v in zip([repr(v) for v in vals], vals, strict=True)}
            ax.set_xticks(range(len(cats)), [labels[c] for c in cats])
            ax.set_xlim(-0.6, len(cats) - 0.4)
        seen: dict[Any, int] = {}
        for m, v in zip(st.models, vals, strict=True):
            if numeric:
                x = float(v)  # type: ignore[arg-type]
            else:
                c = cats.index(repr(v))
                k = seen[c] = seen.get(c, -1) + 1  # spread points of one category apart
                x = c + ((k % 5) - 2) * 0.06
            y = objective_value(m, st.objective)
            dropped = m.status in DROPPED
            if y is None:
                if dropped:
                    ax.plot(
                        x,
                        0.96,
                        "x",
                        color=FAILED_COLOR,
                        ms=9,
                        mew=2,
                        transform=ax.get_xaxis_transform(),
                        clip_on=False,
                    )
                continue
            if m.model_id == best:
                ax.plot(x, y, "*", ms=20, mfc="none", mec=BEST_COLOR, mew=1.4, zorder=2)
                ax.plot(x, y, "o", color=BEST_COLOR, ms=6, zorder=2.5)
            else:
                color = FAILED_COLOR if dropped else MODEL_COLOR
                ax.plot(x, y, "o", color=color, ms=7, alpha=0.75, zorder=3)
        # Room for the best's star at an edge, and for the failed models' x along the top.
        failed = any(objective_value(m, st.objective) is None for m in st.models)
        ax.margins(x=0.08, y=0.16 if failed else 0.1)
        ax.set_xlabel(name)
        ax.set_ylabel(st.objective)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.legend(
        handles=[
            Line2D([], [], ls="", marker="o", color=MODEL_COLOR, label="model"),
            Line2D(
                [],
                [],
                ls="",
                marker="*",
                ms=14,
                mfc="none",
                mec=BEST_COLOR,
                mew=1.2,
                label=f"best ({best})",
            ),  # fmt: skip
            Line2D([], [], ls="", marker="x", mew=2, color=FAILED_COLOR, label="failed/diverged"),
        ],
        loc="outside upper center",
        ncols=3,
        fontsize=9,
        frameon=False,
    )
    return fig
