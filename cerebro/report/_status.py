"""``cerebro status``: the state and progress of a running or finished fit, as text."""

from __future__ import annotations

from pathlib import Path

from cerebro.report._data import NoFitError, catalog_path, load_run, unstarted
from cerebro.report._summary import (
    RunStatus,
    fmt_seconds,
    fmt_value,
    sort_metrics,
    summarize,
)
from cerebro.statuses import LIVE, FitStatus

__all__ = ["read_status", "status_text"]

# A running fit with no hop started or ended for this long has probably lost its driver.
STALE_SECONDS = 300.0


def read_status(
    run_dir: str | Path, objective: str | None = None, mode: str | None = None
) -> RunStatus:
    """The progress of the latest fit in ``run_dir``, read-only (safe beside a live fit).

    Args:
        run_dir: a run directory (``output_dir``).
        objective: metric that ranks models, e.g. ``"val_acc"``; default as ``FitResult``:
            the fit's own, else a validation metric (``val_loss`` first).
        mode: ``"min"`` or ``"max"``; default: the fit's, else ``"min"``.

    Raises:
        FileNotFoundError: ``run_dir`` has no catalog.
        NoFitError: the catalog has no fit yet.
    """
    return summarize(load_run(run_dir), objective, mode)


def status_text(run_dir: str | Path, objective: str | None = None, mode: str | None = None) -> str:
    """A plain-text progress report of the fit in ``run_dir`` (what ``cerebro status`` prints).

    Per model: status, epochs done, hops done / total, its best objective value and the
    epoch of it, last metrics (val first), test results when the catalog has them, and the
    hyperparameters; then the run's hops done / total, elapsed time, ETA, worker busy share
    and the best model so far, with the objective and mode that ranked it. A run directory
    whose ETL was interrupted before the fit began says so (and how to continue it).

    Example:
        >>> print(status_text("runs/digits"))  # doctest: +SKIP

    Raises:
        FileNotFoundError: ``run_dir`` has no catalog.
    """
    note = unstarted(run_dir)
    if note is not None:
        return note + "\n"
    catalog_path(run_dir)
    try:
        st = read_status(run_dir, objective, mode)
    except NoFitError as e:
        return f"{e}\n"
    return format_status(st)


def _models(st: RunStatus) -> str:
    """``8 models``, or for a search still asking ``5 of 24 models asked, 2 running, 3 ended``."""
    n = len(st.models)
    if st.planned_models <= n:
        return f"{n} models"
    running = sum(1 for m in st.models if m.status in LIVE)
    return f"{n} of {st.planned_models} models asked, {running} live, {n - running} ended"


def format_status(st: RunStatus) -> str:
    lines = [
        f"run {st.run_dir}  fit {st.fit_id}: {st.state}  "
        f"({_models(st)} x {st.num_epochs} epochs, {st.workers} workers)",
    ]
    pct = 100.0 * st.hops_done / st.hops_total if st.hops_total else 0.0
    parts = [f"hops {st.hops_done}/{st.hops_total} ({pct:.0f}%)"]
    if st.hops_running:
        parts.append(f"{st.hops_running} running")
    parts.append(f"elapsed {fmt_seconds(st.elapsed)}")
    if st.fit_status == FitStatus.RUNNING and st.driver_alive is not False:
        parts.append(f"ETA {fmt_seconds(st.eta)}")
    if st.busy is not None:
        parts.append(f"workers busy {100 * st.busy:.0f}%")
    lines.append("  ".join(parts))
    if st.state == FitStatus.INTERRUPTED:
        lines.append(
            f"the fit's driver (process {st.driver_pid}) is not running on this machine: it "
            f"was interrupted; `cerebro resume {st.run_dir}` (or the same command) resumes it"
        )
    elif st.fit_status == FitStatus.RUNNING and st.last_activity is not None:
        idle = st.now - st.last_activity
        if idle > STALE_SECONDS:
            lines.append(
                f"no hop started or ended for {fmt_seconds(idle)}: the driver may have stopped;"
                " rerun the same command to resume"
            )
    elif st.fit_status == FitStatus.STOPPED:
        lines.append(
            "the fit stopped before it finished: `cerebro resume "
            f"{st.run_dir}` (or the same command) resumes it"
        )
    if st.best is not None:
        hp = ", ".join(f"{k}={fmt_value(v)}" for k, v in st.best["hyperparams"].items())
        label = "best so far" if st.state == FitStatus.RUNNING else "best"
        at = f", epoch {st.best['epoch']} of {st.num_epochs}" if st.best["epoch"] else ""
        lines.append(
            f"{label} by {st.objective} ({st.mode}): {st.best['model_id']} "
            f"{st.objective}={fmt_value(st.best['value'])}{at}  {hp}"
        )
    else:
        lines.append(f"best by {st.objective} ({st.mode}): none (no model has a value yet)")
    lines.append("")
    lines.extend(_table(st))
    failed = st.failed
    if failed:
        lines.append("")
        for m in failed:
            first = (m.error or "").strip().splitlines()
            lines.append(f"{m.model_id} {m.status}: {first[0] if first else 'no error recorded'}")
    return "\n".join(lines) + "\n"


def _table(st: RunStatus) -> list[str]:
    names: list[str] = []
    for m in st.models:
        for k in list(m.metrics) + list(m.test):
            if k not in names:
                names.append(k)
    names = sort_metrics(names, st.objective)
    hp_names: list[str] = []
    for m in st.models:
        hp_names.extend(k for k in m.hyperparams if k not in hp_names)
    best_col = f"best {st.objective}"
    header = ["model", "status", "epochs", "hops", best_col, "best epoch", *names, *hp_names]
    rows = [header]
    for m in st.models:
        vals = {**m.metrics, **m.test}
        rows.append(
            [
                m.model_id + (" *" if st.best and st.best["model_id"] == m.model_id else ""),
                m.status,
                f"{m.epochs_done}/{st.num_epochs}",
                f"{m.hops_done}/{m.hops_total}",
                "-" if m.best_value is None else fmt_value(m.best_value),
                "-" if m.best_epoch is None else str(m.best_epoch),
                *(fmt_value(vals[k]) if k in vals else "-" for k in names),
                *(fmt_value(m.hyperparams.get(k, "-")) for k in hp_names),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if st.best is not None:
        out.append(
            f"* best by {st.objective} ({st.mode}) at any epoch; the other metrics are each "
            "model's last epoch's"
        )
    return out
