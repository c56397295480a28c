"""The report's plots decide legibly: markers, the best model's star, the timeline's bars.

Synthetic run snapshots (no catalog, no worker process); each plot function is called as
the report calls it and the figure it would save is inspected instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from cerebro.report import _plots, _timeline
from cerebro.report._data import RunData
from cerebro.report._summary import summarize

GRID = [(h, lr) for h in (16, 64) for lr in (0.001, 0.01)]  # m000..m003


def make_run(
    tmp_path: Path,
    epochs: int,
    final: dict[str, float] | None = None,
    hop: float = 0.01,
    idle: tuple[float, float] = (0.0, 0.0),
    workers: int = 2,
) -> RunData:
    """A finished fit of 4 models, 2 train + 2 val partitions, hops back to back per worker.

    ``final`` sets models' last val_loss; worker ``w`` waits ``idle[w]`` after each hop.
    """
    t0 = 1_000_000.0
    clock = [t0] * workers
    hops: list[dict[str, Any]] = []
    metrics: list[dict[str, Any]] = []
    for e in range(epochs):
        for i in range(len(GRID)):
            mid = f"m{i:03d}"
            for kind in ("train", "train", "val", "val"):
                w = len(hops) % workers
                start, end = clock[w], clock[w] + hop
                clock[w] = end + idle[w]
                hops.append(
                    {"hop_id": len(hops) + 1, "model_id": mid, "epoch": e, "kind": kind,
                     "partition": len(hops) % 2, "worker": w, "pid": 100 + w, "start": start,
                     "end": end, "status": "done", "rows": 100, "user_seconds": hop,
                     "load_seconds": hop * 0.1, "save_seconds": hop * 0.1, "error": None}
                )  # fmt: skip
            for split in ("train", "val"):
                value = 2.0 / (1 + e * (i + 1) * 0.3) + (0.05 if split == "val" else 0.0)
                if split == "val" and e == epochs - 1 and final and mid in final:
                    value = final[mid]
                metrics.append(
                    {"model_id": mid, "epoch": e, "split": split, "name": "loss", "value": value}
                )
    end = max(clock)
    models = [
        {"model_id": f"m{i:03d}", "status": "done", "error": None,
         "hyperparams": {"hidden": h, "lr": lr, "batch_size": 32}}
        for i, (h, lr) in enumerate(GRID)
    ]  # fmt: skip
    return RunData(
        run_dir=tmp_path,
        fit={"fit_id": 1, "status": "done", "created": t0, "finished": end, "config": "{}"},
        signature={"num_epochs": epochs, "workers": workers},
        models=models,
        hops=hops,
        metrics=metrics,
        now=end,
        train_partitions=2,
        val_partitions=2,
    )


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plot functions hand to ``save_figure`` (nothing is written)."""
    figures: list[Figure] = []

    def keep(fig: Figure, path: Path) -> Path:
        figures.append(fig)
        return path

    monkeypatch.setattr(_plots, "save_figure", keep)
    monkeypatch.setattr(_timeline, "save_figure", keep)
    return figures


def _curves(fig: Figure) -> list[Line2D]:
    return [ln for ax in fig.axes for ln in ax.get_lines() if len(ln.get_xdata()) > 0]


def _has_marker(line: Line2D) -> bool:
    return line.get_marker() not in ("", "None", " ", None)


@pytest.mark.parametrize("epochs", [5, 30])
def test_short_curves_have_markers(tmp_path: Path, saved: list[Figure], epochs: int) -> None:
    run = make_run(tmp_path, epochs)
    _plots.plot_learning_curves(run, summarize(run), tmp_path)
    lines = _curves(saved[0])
    assert len(lines) == 8  # 4 models x (train, val)
    assert all(_has_marker(ln) for ln in lines)


def test_long_curves_are_plain_lines(tmp_path: Path, saved: list[Figure]) -> None:
    """At 200 epochs a marker per point is a blob: no curve has markers, the best's neither."""
    run = make_run(tmp_path, 200)
    _plots.plot_learning_curves(run, summarize(run), tmp_path)
    lines = _curves(saved[0])
    assert len(lines) == 8 and all(len(ln.get_xdata()) == 200 for ln in lines)
    assert not any(_has_marker(ln) for ln in lines)


def test_best_star_hides_no_other_model(tmp_path: Path, saved: list[Figure]) -> None:
    """m000 (best, tie broken by id) and m001 share hidden=16 and val_loss: both stay visible."""
    run = make_run(tmp_path, 3, final={"m000": 0.25, "m001": 0.25, "m002": 0.5, "m003": 0.7})
    st = summarize(run)
    assert st.best is not None and st.best["model_id"] == "m000"
    _plots.plot_hyperparams(run, st, tmp_path)
    ax = next(a for a in saved[0].axes if a.get_xlabel() == "hidden")
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 0]
    stars = [ln for ln in lines if ln.get_marker() == "*"]
    dots = [ln for ln in lines if ln.get_marker() == "o"]
    assert len(stars) == 1 and len(dots) >= 4  # every model is a dot, the best one too
    star = stars[0]
    assert star.get_markerfacecolor() == "none"  # hollow: what is under it shows through
    at_star = [
        d for d in dots if (d.get_xdata()[0], d.get_ydata()[0]) == (16.0, 0.25)
    ]  # the best's own dot and m001's
    assert len(at_star) == 2
    others = [d for d in dots if d.get_color() != _plots.BEST_COLOR]
    assert len(others) == 3
    assert all(star.get_zorder() < d.get_zorder() for d in others)
    best_dot = next(d for d in at_star if d.get_color() == _plots.BEST_COLOR)
    assert all(best_dot.get_zorder() < d.get_zorder() for d in others)


def _bars(fig: Figure) -> tuple[list[PolyCollection], list[Rectangle]]:
    ax = fig.axes[0]
    hops = [c for c in ax.collections if isinstance(c, PolyCollection)]
    shares = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]
    return hops, shares


@pytest.mark.parametrize("hop", [0.01, 0.0])
def test_timeline_few_hops_one_bar_each(tmp_path: Path, saved: list[Figure], hop: float) -> None:
    """48 hops, 24 per worker: one bar each, even when hops take no measurable time."""
    run = make_run(tmp_path, 3, hop=hop)
    _timeline.plot_timeline(run, tmp_path)
    hops, shares = _bars(saved[0])
    train_val = [c for c in hops if len(c.get_paths()) and _is_hop_color(c)]
    assert sum(len(c.get_paths()) for c in train_val) == 48
    assert not shares


def _is_hop_color(c: PolyCollection) -> bool:
    from matplotlib.colors import to_rgba

    face = tuple(c.get_facecolor()[0])
    return face in (to_rgba(_timeline.COLORS["train"]), to_rgba(_timeline.COLORS["val"]))


def test_timeline_many_hops_as_busy_shares(tmp_path: Path, saved: list[Figure]) -> None:
    """3,200 hops: no sliver per hop, but per-worker columns whose height is the busy share.

    Worker 0 works back to back, worker 1 waits as long as each hop lasts (half busy).
    """
    run = make_run(tmp_path, 200, idle=(0.0, 0.01))
    _timeline.plot_timeline(run, tmp_path)
    fig = saved[0]
    hops, shares = _bars(fig)
    assert sum(len(c.get_paths()) for c in hops) == 0  # no hop drawn on its own
    assert 0 < len(shares) <= _timeline.BINS * 3 * 2  # train, val, overhead x 2 workers
    assert "idle" in fig.axes[0].get_xlabel()
    # Each column's stacked height over a worker's lane is that worker's busy share.
    height: dict[tuple[int, float], float] = {}
    for p in shares:
        worker = round(p.get_y() + p.get_height() / 2)
        key = (worker, round(p.get_x(), 9))
        height[key] = height.get(key, 0.0) + p.get_height()
    # Worker 0 ends first (worker 1 idles between hops): compare the columns both span.
    span0 = max(x for w, x in height if w == 0)
    for worker, busy in ((0, 1.0), (1, 0.5)):
        cols = [h for (w, x), h in height.items() if w == worker and x < span0 * 0.9]
        mean = sum(cols) / len(cols) / _timeline.LANE
        assert mean == pytest.approx(busy, abs=0.08), (worker, mean)
