"""``DIR/report.html``: one self-contained page (plus ``DIR/plots/*.png``) per run.

NOTE [ the page works offline ]
No external script, style sheet, font or CDN: CSS and the few lines of table-sorting
JavaScript are inline, and images are referenced by paths relative to the page, so the run
directory can be copied, zipped or opened from a file share as it is. The page and every
plot are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cerebro._atomic import write_atomic
from cerebro.report import _stopping
from cerebro.report._assets import CSS, JS, TEMPLATE
from cerebro.report._data import RunData, load_run
from cerebro.report._stopping import Rung
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
# Early stopping's own status colour: a stopped model is neither failed nor a stopped fit
# (``st-stopped``, the page header's).
STOPPING_CSS = """
.st-early{background:#e4e1f5;color:#3f3590}
table.rungs td.cut{color:#3f3590}
"""
# Past this many epochs, the median rule's and pruners' table keeps those that stopped.
RUNG_ROWS = 15


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


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return ""
    return f'<img src="{PLOTS}/{_e(path.name)}" alt="{_e(alt)}">'


def _card(title: str, value: str, sub: str = "") -> str:
    sub_html = f'<div class="sub">{sub}</div>' if sub else ""
    return f'<div class="card"><div class="k">{_e(title)}</div><div class="v">{value}</div>{sub_html}</div>'  # noqa: E501


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
    return " ".join(f'<span class="st {_e(c)}">{n} {_e(s)}</span>' for (s, c), n in counts.items())


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
            _e(fmt_seconds(st.elapsed)),
            f"hops ran for {_e(fmt_seconds(st.active_seconds))}",
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
            + ", ".join(f"{_e(k)} = {_e(fmt_value(v))}" for k, v in sorted(test.items()))
            + "</div>"
            if test
            else ""
        )
        hp = "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(fmt_value(v))}</td></tr>"
            for k, v in st.best["hyperparams"].items()
        )
        at = (
            f"<div class=sub>at epoch {st.best['epoch']} of {st.num_epochs} (its best epoch)</div>"
            if st.best["epoch"]
            else ""
        )
        best = (
            f'<div class="bestcard"><div class="k">best model by {_e(st.objective)} '
            f'({_e(st.mode)})</div><div class="v">{_e(st.best["model_id"])} '
            f'<span class="obj">{_e(st.objective)} = {_e(fmt_value(st.best["value"]))}</span>'
            f'</div>{at}<table class="hp">{hp}</table>{tests}</div>'
        )
    else:
        best = (
            f'<div class="bestcard"><div class="k">best model</div><div class="v">none</div>'
            f"<p>No model has a value for {_e(st.objective)} yet.</p></div>"
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
            f'<div class="fail"><span class="st st-{_e(m.status)}">{_e(m.status)}</span> '
            f"<b>{_e(m.model_id)}</b> <code>{_e(hp)}</code> after {m.epochs_done} epoch(s)"
            f"<details><summary>{_e(first)}</summary><pre>{_e(err)}</pre></details></div>"
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
        head = "".join(f"<th>{_e(h)}</th>" for h in ["model", "tag", *names, "checkpoint"])
        rows = []
        best_id = st.best["model_id"] if st.best else None
        for (mid, tag, ck), g in groups.items():
            stale = ck not in ("None", current.get(mid))
            note = " (not the model's latest checkpoint)" if stale else ""
            if tag == "best" and mid != best_id:
                tag = f"best when tested (now {best_id or 'none'})"
            rows.append(
                f"<tr><td><b>{_e(mid)}</b></td><td>{_e(tag)}</td>"
                + "".join(_cell(g["values"].get(n)) for n in names)
                + f"<td>{_e(Path(ck).name if ck != 'None' else '')}{_e(note)}</td></tr>"
            )
        parts.append(
            "<p class=hint>From <code>run_test</code>; sortable.</p><div class=scroll>"
            f"<table class='sortable compact'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
            "</tbody></table></div>"
        )
    if preds:
        items = "".join(
            f'<li><a href="predictions/{_e(p.name)}">predictions/{_e(p.name)}</a> '
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


def _cell(v: Any) -> str:
    if v is None or v == "":
        return '<td data-v=""></td>'
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f'<td class="num" data-v="{_e(repr(float(v)))}">{_e(fmt_value(v))}</td>'
    text = v if isinstance(v, str) else json.dumps(v)
    return f"<td>{_e(text)}</td>"


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
        f"<td><b>{_e(m.model_id)}</b>{' ★' if best else ''}</td>",
        f'<td data-v="{_e(m.status)}"><span class="st {_e(cls)}"{title}>{_e(m.status)}'
        "</span></td>",
        _cell(m.epochs_done),
        _cell(m.hops_done),
        _cell(m.best_value),
        _cell(m.best_epoch),
        *(_cell(m.hyperparams.get(k)) for k in hp_names),
        *(_cell(vals.get(k)) for k in names),
        _cell(round(m.hop_seconds, 3)),
    ]
    if errors:
        cells.append(f'<td class="err" title="{_e(err)}">{_e(short_error(err)[:160])}</td>')
    return f"<tr{' class=best' if best else ''}>{''.join(cells)}</tr>"


def _table(run: RunData, st: RunStatus) -> str:
    hp_names = run.hyperparam_names()
    names = _metric_names(st)
    errors = any(m.error for m in st.models)  # the error column only when there are errors
    best_col = f"best {st.objective}"
    head = ["model", "status", "epochs", "hops", best_col, "best epoch", *hp_names, *names]
    head += ["train_seconds"] + (["error"] if errors else [])
    ths = "".join(
        f'<th class="{"obj" if h in (st.objective, best_col) else ""}">{_e(h)}</th>' for h in head
    )
    rows = "".join(_row(m, st, hp_names, names, errors) for m in st.models)
    stopped = (
        " A model early stopping stopped (status stopped) keeps its values but is never the best."
        if run.stopped_early
        else ""
    )
    return (
        f"<section><h2>All models</h2><p class=hint>{_e(best_col)} is each model's best "
        f"value at any epoch ({_e(st.mode)}), which ranks it; the other metrics are at its "
        "last epoch; train_seconds is the time its hops ran (as in FitResult.table)."
        f"{stopped} Click a column header to sort.</p><div class=scroll>"
        "<table class=sortable id=models>"
        f"<thead><tr>{ths}</tr></thead><tbody>{rows}</tbody></table></div></section>"
    )


def _early_stopping(run: RunData) -> str:
    """The rule in one line and a table of what happened at each of its rungs."""
    rule = run.early_stopping
    if rule is None:
        return ""
    objective, mode = _stopping.objective(run)
    ids = [str(m["model_id"]) for m in run.models]
    bracket_of = _stopping.brackets(ids, run.planned_models, rule, run.num_epochs)
    rungs = _stopping.rungs(run.stopping, rule, run.num_epochs, mode, bracket_of)
    epochs = _stopping.decision_epochs(rule, run.num_epochs, run.stopping)
    halving = rule.get("type") in _stopping.HALVING
    where = (
        f"Rungs at epoch{'s' if len(epochs) != 1 else ''} {', '.join(map(str, epochs))} of "
        f"{run.num_epochs}. "
        if halving and epochs
        else ""
    )
    stopped = len(run.stopped_early)
    done = sum(1 for m in run.models if m["status"] == ModelStatus.DONE)
    parts = [
        f"<section><h2>Early stopping</h2><p>{_e(_stopping.describe(rule))}</p>",
        f"<p class=hint>{_e(where)}It ranks by {_e(objective)} ({_e(mode)}). {stopped} of "
        f"{len(run.models)} models stopped early, {done} trained to the end; a stopped model "
        "keeps its metrics and checkpoints but is never the best model.</p>",
    ]
    if bracket_of:
        parts.append(f"<p class=hint>{_e(_bracket_line(bracket_of, epochs))}</p>")
    shown = rungs
    if not halving and len(rungs) > RUNG_ROWS:  # every epoch: keep those that decided
        shown = [r for r in rungs if r.stopped or r.waiting or r.left]
    if shown:
        basis = _stopping.cut_basis(rule)
        parts.append(_rung_table(shown, objective, mode, bool(bracket_of), basis))
    if len(shown) < len(rungs):
        parts.append(
            f"<p class=hint>{len(rungs) - len(shown)} epoch(s) where no model stopped are "
            "left out.</p>"
        )
    if not rungs or not any(r.reported for r in rungs):
        parts.append("<p class=hint>No model has reached a rung yet.</p>")
    parts.append("</section>")
    return "".join(parts)


def _bracket_line(bracket_of: dict[str, int], epochs: list[int]) -> str:
    """``Brackets (models in ask order): 1: 6 models, rungs at epochs 1, 3; ...``."""
    sizes: dict[int, int] = {}
    for b in bracket_of.values():
        sizes[b] = sizes.get(b, 0) + 1
    items = []
    for b, n in sorted(sizes.items()):
        own = epochs[b:]
        many = "s" if len(own) > 1 else ""
        at = (
            f"rung{many} at epoch{many} {', '.join(map(str, own))}"
            if own
            else "no rung (trains to the end)"
        )
        items.append(f"{b + 1}: {n} model{'s' if n != 1 else ''}, {at}")
    return "Brackets (models in ask order): " + "; ".join(items) + "."


def _rung_table(
    rungs: list[Rung], objective: str, mode: str, brackets: bool, basis: str | None
) -> str:
    """Per rung: reported, went on, stopped, waiting (and failed while waiting), the cut
    (of ``basis``, :func:`cerebro.report._stopping.cut_basis`; no column for ``None``)."""
    sign = "≥" if mode == "max" else "≤"
    left = any(r.left for r in rungs)
    head = (["bracket"] if brackets else []) + ["epoch", "reported", "went on", "stopped"]
    head += ["waiting"] + (["failed while waiting"] if left else [])
    if basis is not None:
        head.append(f"cut ({'best ' if basis == 'best' else ''}{objective} {sign})")
    body = []
    for r in rungs:
        cells = [_cell(r.bracket + 1)] if brackets and r.bracket is not None else []
        cells += [_cell(r.epoch), _cell(r.reported), _cell(r.went_on), _cell(r.stopped)]
        cells += [_cell(r.waiting)] + ([_cell(r.left)] if left else [])
        if basis is not None:
            cells.append(_cell(r.cut).replace('<td class="num"', '<td class="num cut"', 1))
        body.append(f"<tr>{''.join(cells)}</tr>")
    ths = "".join(f"<th>{_e(h)}</th>" for h in head)
    what = {
        "value": f"the worst {_e(objective)} among those that went on (they had "
        f"{_e(objective)} {sign} it)",
        "best": f"the worst best-so-far {_e(objective)} among those that went on",
    }
    cut = f"; cut is {what[basis]}" if basis is not None else ""
    return (
        "<p class=hint>Per rung (epochs from 1): models that finished that epoch, how many "
        f"trained on, were stopped or still wait for the rung to decide{cut}.</p>"
        "<div class=scroll><table class='sortable compact rungs' id=rungs>"
        f"<thead><tr>{ths}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _tail_sentence(tail: Tail | None) -> str:
    """One sentence on the tail of the fit (NOTE [ the tail ] in ``_timeline.py``)."""
    if tail is None or tail.idle <= 0 or tail.seconds <= 0:
        return ""
    workers = tail.workers
    share = 100 * tail.idle / (workers * tail.seconds)
    idle = f"{fmt_seconds(tail.idle)} of worker time idle ({share:.0f}% of it)"
    if tail.whole:
        return f" The fit never had as many models as its {workers} workers: that left {idle}."
    whole = 100 * tail.seconds / tail.end if tail.end > 0 else 100.0
    return (
        f" From {fmt_seconds(tail.start)} after the first hop (shaded), fewer models remained "
        f"than the {workers} workers: that tail lasted {fmt_seconds(tail.seconds)} "
        f"({whole:.0f}% of the fit) and left {idle}."
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
            f"{_e(run.run_dir)}</code> (or the same command) resumes it.</p>"
        )
    sections = [_summary(run, st), live, _tests(run, st), _failures(st), _early_stopping(run)]
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
            f"{_e(st.objective)} in the order the sampler asked for it, the best so far as a "
            "line, and (with enough finished models) how much each hyperparameter mattered, "
            f"from the study in DIR/search/.</p>{_img(search, 'search')}</section>"
        )
    if hp is not None:
        sections.append(
            f"<section><h2>Hyperparameters against {_e(st.objective)}</h2><p class=hint>"
            "Each model's best value at any epoch; x marks along the top are failed or "
            f"diverged models without a value.</p>{_img(hp, 'hyperparameters')}</section>"
        )
    if timeline is not None:
        sections.append(
            "<section><h2>Timeline</h2><p class=hint>Every hop per worker over time; gaps "
            f"are idle workers. {_e(_worker_busy(run, st))}."
            f"{_e(_tail_sentence(tail))}</p>"
            f"{_img(timeline, 'timeline')}</section>"
        )
    sections.append(_table(run, st))
    return TEMPLATE.format(
        title=_e(title),
        run_dir=_e(run.run_dir.resolve()),
        status=_e(st.state),
        when=_e(when),
        body="\n".join(s for s in sections if s),
        css=CSS + STOPPING_CSS,
        js=JS,
    )
