"""The report's view of a search: each model's objective in the order it was asked, the
best so far, and which hyperparameters mattered (Optuna's importance evaluator).

Only a fit with a study (``search="random"``, ``"tpe"`` or a sampler: ``DIR/search/``)
gets it: a grid's order says nothing about what was learned.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from cerebro.report._data import RunData
from cerebro.report._plots import BEST_COLOR, FAILED_COLOR, MODEL_COLOR, save_figure
from cerebro.report._summary import RunStatus, objective_value
from cerebro.statuses import DROPPED

__all__ = ["importances", "plot_search", "search_figure"]


def _study(run: RunData) -> Any:
    path = Path(run.run_dir) / "search"
    if not (path / "study.log").is_file():
        return None
    from cerebro.search._optuna import open_study

    return open_study(path, run.fit_id)


def importances(run: RunData) -> dict[str, float] | None:
    """``{hyperparameter: importance}`` (they sum to 1), from Optuna's default evaluator
    over the completed trials; None for a grid fit or too few trials to tell."""
    return _importances(_study(run))


def _importances(study: Any) -> dict[str, float] | None:
    if study is None:
        return None
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 4:
        return None
    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):  # e.g. a single distinct value everywhere
        return None
    return {k: float(v) for k, v in found.items()}


def plot_search(run: RunData, st: RunStatus, out_dir: Path) -> Path | None:
    """``search.png``: see :func:`search_figure`; None for a grid fit."""
    fig = search_figure(run, st)
    return None if fig is None else save_figure(fig, out_dir / "search.png")


def search_figure(run: RunData, st: RunStatus) -> Figure | None:
    """Each model's best objective against its trial number, the best so far as a step
    line (how the search converged) and, beside it, the hyperparameters' importance.
    None for a grid fit or before any model has a value."""
    study = _study(run)
    if study is None:
        return None
    order = sorted(st.models, key=lambda m: int(m.model_id.removeprefix("m")))
    values = [objective_value(m, st.objective) for m in order]
    if all(v is None for v in values):
        return None
    imp = _importances(study)
    fig = Figure(figsize=(11 if imp else 7, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if imp else 1, squeeze=False).ravel()
    ax = axes[0]
    sign = 1.0 if st.mode == "min" else -1.0
    best_so_far: list[float] = []
    xs: list[int] = []
    best: float | None = None
    for m, v in zip(order, values, strict=True):
        trial = int(m.model_id.removeprefix("m"))
        if v is None:
            if m.status in DROPPED:
                ax.plot(trial, 0.96, "x", color=FAILED_COLOR, ms=8, mew=2,
                        transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
            continue
        ax.plot(trial, v, "o", color=MODEL_COLOR, ms=5, alpha=0.8)
        if best is None or sign * v < sign * best:
            best = v
        xs.append(trial)
        best_so_far.append(best)
    if xs:
        ax.step(xs, best_so_far, where="post", color=BEST_COLOR, lw=1.6, label="best so far")
        ax.legend(loc="upper right" if st.mode == "min" else "lower right", fontsize=8)
    ax.set_xlabel("trial (the order models were asked)")
    ax.set_ylabel(f"{st.objective} (best epoch)")
    ax.set_title(f"{len(order)} models, {st.objective} ({st.mode})", fontsize=10)
    ax.grid(alpha=0.3)
    if imp:
        names = list(imp)[::-1]  # largest on top
        axi = axes[1]
        axi.barh(names, [imp[n] for n in names], color=MODEL_COLOR)
        axi.set_xlim(0, 1)
        axi.set_xlabel("importance (Optuna, sums to 1)")
        axi.set_title("what mattered", fontsize=10)
        axi.grid(alpha=0.3, axis="x")
    return fig
