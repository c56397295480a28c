"""``DIR/report.html``: one self-contained page (plus ``DIR/plots/*.png``) per run.

NOTE [ the page works offline ]
No external script, style sheet, font or CDN: CSS and the few lines of table-sorting
JavaScript are inline, and images are referenced by paths relative to the page, so the run
directory can be copied, zipped or opened from a file share as it is. The page and every
plot are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cerebro._atomic import write_atomic
from cerebro.report._assets import CSS, JS, TEMPLATE
from cerebro.report._data import RunData, load_run
from cerebro.report._html_parts import cell, esc
from cerebro.report._html_stopping import STOPPING_CSS, early_stopping_section, tail_sentence
from cerebro.report._summary import (
    ModelProgress,
    RunStatus,
    fmt_seconds,
    fmt_value,
    hop_intervals,
    short_error,
    sort_metrics,
    summarize,
)
from cerebro.statuses import FitStatus, ModelStatus

if TYPE_CHECKING:
    from cerebro.report._timeline import Tail  # the module imports matplotlib

__all__ = ["write_report"]

PLOTS = "plots"
REPORT = "report.html"


def write_report(
    run_dir: str | Path, objective: str | None = None, mode: str | None = None
) -> Path:
    """Write ``run_dir/report.html`` and its plots under ``run_dir/plots/``.

    The page has a summary (models, epochs, the best model and its hyperparameters, total
    time, worker busy share), learning curves per metric, each hyperparameter against the
    objective, the timeline of hops per worker, failed and diverged models with their
    errors, what early stopping did at each rung (when the fit has it), and a table of
    every model, sortable by clicking a column header. It reads the catalog only, so it
    works during a fit, after it and after a resume.

    Args:
        run_dir: a run directory (the ``output_dir`` of a fit).
        objective: the metric that ranks models, ``"<split>_<name>"``; default as
            :class:`cerebro.FitResult`: the fit's own, else a validation metric
            (``val_loss`` first). Each model ranks by its best value at any epoch.
        mode: ``"min"`` or ``"max"``; default: the fit's, else ``"min"``.

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: ``run_dir`` has no catalog.
        NoFitError: the catalog has no fit yet.

    Example:
        >>> write_report("runs/digits", objective="val_acc", mode="max")  # doctest: +SKIP
        PosixPath('runs/digits/report.html')
    """
    from cerebro.report._plots import plot_hyperparams, plot_learning_curves
    from cerebro.report._search import plot_search
    from cerebro.report._timeline import plot_timeline, run_tail

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    st = summarize(run, objective, mode)
    plots = run_dir / PLOTS
    curves = plot_learning_curves(run, st, plots)
    hp = plot_hyperparams(run, st, plots)
    timeline = plot_timeline(run, plots)
    search = plot_search(run, st, plots)
    written = {p.name for _, p in curves}
    written |= {p.name for p in (hp, timeline, search) if p is not None}
    for old in plots.glob("*.png"):  # plots of metrics this run no longer has
        if old.name not in written:
            old.unlink(missing_ok=True)
    page = _page(run, st, curves, hp, timeline, search, run_tail(run))
    return write_atomic(run_dir / REPORT, page)


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return ""
    return f'<img src="{PLOTS}/{esc(path.name)}" alt="{esc(alt)}">'


def _card(title: str, value: str, sub: str = "") -> str:
    sub_html = f'<div class="sub">{sub}</div>' if sub else ""
    return f'<div class="card"><div class="k">{esc(title)}</div><div class="v">{value}</div>{sub_html}</div>'  # noqa: E501


def _status_class(m: ModelProgress) -> str:
    """The badge class of a model's status: early stopping's ``stopped`` has its own colour
    (``st-stopped`` is the fit's, in the page header)."""
    return "st-early" if m.status == ModelStatus.STOPPED else f"st-{m.status}"


def _status_counts(st: RunStatus) -> str:
    counts: dict[tuple[str, str], int] = {}
    for m in st.models:
        cls = _status_class(m)
        key = ("stopped early" if cls == "st-early" else m.status, cls)
        counts[key] = counts.get(key, 0) + 1
    return " ".join(
        f'<span class="st {esc(c)}">{n} {esc(s)}</span>' for (s, c), n in counts.items()
    )


def _worker_busy(run: RunData, st: RunStatus) -> str:
    if st.active_seconds <= 0:
        return ""
    per: dict[int, float] = {w: 0.0 for w in range(run.workers)}
    for h, (s, e) in zip(
        (h for h in run.hops if h["start"] is not None), hop_intervals(run), strict=True
    ):
        per[int(h["worker"])] = per.get(int(h["worker"]), 0.0) + (e - s)
    return ", ".join(
        f"worker {w} {100 * min(t / st.active_seconds, 1.0):.0f}%" for w, t in sorted(per.items())
    )


def _summary(run: RunData, st: RunStatus) -> str:
    cards = [
        _card("models", str(len(st.models)), _status_counts(st)),
        _card(
            "epochs",
            str(st.num_epochs),
            f"{run.train_partitions} train / {run.val_partitions} val partitions",
        ),
        _card(
            "hops",
            f"{st.hops_done}/{st.hops_total}",
            f"{st.hops_running} running" if st.hops_running else "",
        ),
        _card(
            "total time",
            esc(fmt_seconds(st.elapsed)),
            f"hops ran for {esc(fmt_seconds(st.active_seconds))}",
        ),
        _card(
            "workers busy",
            "?" if st.busy is None else f"{100 * st.busy:.0f}%",
            f"{st.workers} workers",
        ),
    ]
    if st.best is not None:
        test = next(m.test for m in st.models if m.model_id == st.best["model_id"])
        tests = (
            "<div class=sub>test: "
            + ", ".join(f"{esc(k)} = {esc(fmt_value(v))}" for k, v in sorted(test.items()))
            + "</div>"
            if test
            else ""
        )
        hp = "".join(
            f"<tr><th>{esc(k)}</th><td>{esc(fmt_value(v))}</td></tr>"
            for k, v in st.best["hyperparams"].items()
        )
        at = (
            f"<div class=sub>at epoch {st.best['epoch']} of {st.num_epochs} (its best epoch)</div>"
            if st.best["epoch"]
            else ""
        )
        best = (
            f'<div class="bestcard"><div class="k">best model by {esc(st.objective)} '
            f'({esc(st.mode)})</div><div class="v">{esc(st.best["model_id"])} '
            f'<span class="obj">{esc(st.objective)} = {esc(fmt_value(st.best["value"]))}</span>'
            f'</div>{at}<table class="hp">{hp}</table>{tests}</div>'
        )
    else:
        best = (
            f'<div class="bestcard"><div class="k">best model</div><div class="v">none</div>'
            f"<p>No model has a value for {esc(st.objective)} yet.</p></div>"
        )
    return f'<section class="summary">{best}<div class="cards">{"".join(cards)}</div></section>'


def _failures(st: RunStatus) -> str:
    failed = st.failed
    if not failed:
        return ""
    items = []
    for m in failed:
        err = (m.error or "no error recorded").strip()
        first = short_error(err)
        hp = ", ".join(f"{k}={fmt_value(v)}" for k, v in m.hyperparams.items())
        items.append(
            f'<div class="fail"><span class="st st-{esc(m.status)}">{esc(m.status)}</span> '
            f"<b>{esc(m.model_id)}</b> <code>{esc(hp)}</code> after {m.epochs_done} epoch(s)"
            f"<details><summary>{esc(first)}</summary><pre>{esc(err)}</pre></details></div>"
        )
    return (
        f"<section><h2>Failed and diverged models ({len(failed)})</h2>{''.join(items)}</section>"
    )


def _tests(run: RunData, st: RunStatus) -> str:
    """Test-set results (``run_test``) and prediction files (``run_predict``), if any."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in run.evaluations:  # oldest first: a later evaluation of the same thing wins
        key = (str(e["model_id"]), str(e.get("tag") or e["model_id"]), str(e.get("checkpoint")))
        g = groups.setdefault(key, {"values": {}, "created": None})
        g["values"][f"{e.get('split') or 'test'}_{e['name']}"] = e["value"]
        g["created"] = e.get("created")
    preds = sorted((run.run_dir / "predictions").glob("*.csv"))
    if not groups and not preds:
        return ""
    parts = ["<section><h2>Test set and predictions</h2>"]
    if groups:
        current = {m["model_id"]: m["checkpoint"] for m in run.models}
        names = sorted({k for g in groups.values() for k in g["values"]})
        head = "".join(f"<th>{esc(h)}</th>" for h in ["model", "tag", *names, "checkpoint"])
        rows = []
        best_id = st.best["model_id"] if st.best else None
        for (mid, tag, ck), g in groups.items():
            stale = ck not in ("None", current.get(mid))
            note = " (not the model's latest checkpoint)" if stale else ""
            if tag == "best" and mid != best_id:
                tag = f"best when tested (now {best_id or 'none'})"
            rows.append(
                f"<tr><td><b>{esc(mid)}</b></td><td>{esc(tag)}</td>"
                + "".join(cell(g["values"].get(n)) for n in names)
                + f"<td>{esc(Path(ck).name if ck != 'None' else '')}{esc(note)}</td></tr>"
            )
        parts.append(
            "<p class=hint>From <code>run_test</code>; sortable.</p><div class=scroll>"
            f"<table class='sortable compact'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
            "</tbody></table></div>"
        )
    if preds:
        items = "".join(
            f'<li><a href="predictions/{esc(p.name)}">predictions/{esc(p.name)}</a> '
            f"({_count_rows(p)} rows)</li>"
            for p in preds
        )
        parts.append(f"<p class=hint>Predictions (<code>run_predict</code>):</p><ul>{items}</ul>")
    parts.append("</section>")
    return "".join(parts)


def _count_rows(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return max(sum(1 for _ in f) - 1, 0)
    except OSError:
        return 0


def _metric_names(st: RunStatus) -> list[str]:
    names: list[str] = []
    for m in st.models:
        names.extend(k for k in list(m.metrics) + list(m.test) if k not in names)
    return sort_metrics(names, st.objective)


def _row(
    m: ModelProgress, st: RunStatus, hp_names: list[str], names: list[str], errors: bool
) -> str:
    vals = {**m.metrics, **m.test}
    best = st.best is not None and st.best["model_id"] == m.model_id
    err = (m.error or "").strip()
    cls = _status_class(m)
    title = (
        f' title="early stopping stopped it after epoch {m.epochs_done}"'
        if cls == "st-early"
        else ""
    )
    cells = [
        f"<td><b>{esc(m.model_id)}</b>{' ★' if best else ''}</td>",
        f'<td data-v="{esc(m.status)}"><span class="st {esc(cls)}"{title}>{esc(m.status)}'
        "</span></td>",
        cell(m.epochs_done),
        cell(m.hops_done),
        cell(m.best_value),
        cell(m.best_epoch),
        *(cell(m.hyperparams.get(k)) for k in hp_names),
        *(cell(vals.get(k)) for k in names),
        cell(round(m.hop_seconds, 3)),
    ]
    if errors:
        cells.append(f'<td class="err" title="{esc(err)}">{esc(short_error(err)[:160])}</td>')
    return f"<tr{' class=best' if best else ''}>{''.join(cells)}</tr>"


def _table(run: RunData, st: RunStatus) -> str:
    hp_names = run.hyperparam_names()
    names = _metric_names(st)
    errors = any(m.error for m in st.models)  # the error column only when there are errors
    best_col = f"best {st.objective}"
    head = ["model", "status", "epochs", "hops", best_col, "best epoch", *hp_names, *names]
    head += ["train_seconds"] + (["error"] if errors else [])
    ths = "".join(
        f'<th class="{"obj" if h in (st.objective, best_col) else ""}">{esc(h)}</th>' for h in head
    )
    rows = "".join(_row(m, st, hp_names, names, errors) for m in st.models)
    stopped = (
        " A model early stopping stopped (status stopped) keeps its values but is never the best."
        if run.stopped_early
        else ""
    )
    return (
        f"<section><h2>All models</h2><p class=hint>{esc(best_col)} is each model's best "
        f"value at any epoch ({esc(st.mode)}), which ranks it; the other metrics are at its "
        "last epoch; train_seconds is the time its hops ran (as in FitResult.table)."
        f"{stopped} Click a column header to sort.</p><div class=scroll>"
        "<table class=sortable id=models>"
        f"<thead><tr>{ths}</tr></thead><tbody>{rows}</tbody></table></div></section>"
    )


def _page(
    run: RunData,
    st: RunStatus,
    curves: list[tuple[str, Path]],
    hp: Path | None,
    timeline: Path | None,
    search: Path | None = None,
    tail: Tail | None = None,
) -> str:
    title = f"Cerebro report: {run.run_dir.resolve().name}"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.now))
    live = ""
    if st.fit_status == FitStatus.RUNNING and st.driver_alive is False:
        live = (
            f'<p class="live">The fit was interrupted: its driver (process {st.driver_pid}) is '
            "not running on this machine. Rerun the same command to resume it.</p>"
        )
    elif st.fit_status == FitStatus.RUNNING:
        live = (
            '<p class="live">The fit is still running: this is a snapshot. Run '
            "<code>cerebro report DIR</code> again to update it.</p>"
        )
    elif st.fit_status == FitStatus.STOPPED:
        live = (
            '<p class="live">The fit stopped before it finished: <code>cerebro resume '
            f"{esc(run.run_dir)}</code> (or the same command) resumes it.</p>"
        )
    sections = [
        _summary(run, st),
        live,
        _tests(run, st),
        _failures(st),
        early_stopping_section(run),
    ]
    if curves:
        imgs = "".join(_img(p, f"learning curves: {n}") for n, p in curves)
        marked = (
            ", and an x ends the curve of a model early stopping stopped"
            if run.stopped_early
            else ""
        )
        sections.append(
            "<section><h2>Learning curves</h2><p class=hint>Per epoch, train and validation; "
            "the best model is the thick black line, dotted lines are failed or diverged "
            f"models{marked}.</p>{imgs}</section>"
        )
    if search is not None:
        sections.append(
            "<section><h2>Search</h2><p class=hint>Each model's best value of "
            f"{esc(st.objective)} in the order the sampler asked for it, the best so far as a "
            "line, and (with enough finished models) how much each hyperparameter mattered, "
            f"from the study in DIR/search/.</p>{_img(search, 'search')}</section>"
        )
    if hp is not None:
        sections.append(
            f"<section><h2>Hyperparameters against {esc(st.objective)}</h2><p class=hint>"
            "Each model's best value at any epoch; x marks along the top are failed or "
            f"diverged models without a value.</p>{_img(hp, 'hyperparameters')}</section>"
        )
    if timeline is not None:
        sections.append(
            "<section><h2>Timeline</h2><p class=hint>Every hop per worker over time; gaps "
            f"are idle workers. {esc(_worker_busy(run, st))}."
            f"{esc(tail_sentence(tail))}</p>"
            f"{_img(timeline, 'timeline')}</section>"
        )
    sections.append(_table(run, st))
    return TEMPLATE.format(
        title=esc(title),
        run_dir=esc(run.run_dir.resolve()),
        status=esc(st.state),
        when=esc(when),
        body="\n".join(s for s in sections if s),
        css=CSS + STOPPING_CSS,
        js=JS,
    )
