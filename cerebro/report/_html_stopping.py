"""The report's early-stopping section (the rule and its rungs) and the sentence on the
fit's tail under the timeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cerebro.report import _stopping
from cerebro.report._data import RunData
from cerebro.report._html_parts import cell, esc
from cerebro.report._stopping import Rung
from cerebro.report._summary import fmt_seconds
from cerebro.statuses import ModelStatus

if TYPE_CHECKING:
    from cerebro.report._timeline import Tail  # the module imports matplotlib

__all__ = ["RUNG_ROWS", "STOPPING_CSS", "early_stopping_section", "tail_sentence"]

# Early stopping's own status colour: a stopped model is neither failed nor a stopped fit
# (``st-stopped``, the page header's).
STOPPING_CSS = """
.st-early{background:#e4e1f5;color:#3f3590}
table.rungs td.cut{color:#3f3590}
"""
# Past this many epochs, the median rule's and pruners' table keeps those that stopped.
RUNG_ROWS = 15


def early_stopping_section(run: RunData) -> str:
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
        f"<section><h2>Early stopping</h2><p>{esc(_stopping.describe(rule))}</p>",
        f"<p class=hint>{esc(where)}It ranks by {esc(objective)} ({esc(mode)}). {stopped} of "
        f"{len(run.models)} models stopped early, {done} trained to the end; a stopped model "
        "keeps its metrics and checkpoints but is never the best model.</p>",
    ]
    if bracket_of:
        parts.append(f"<p class=hint>{esc(_bracket_line(bracket_of, epochs))}</p>")
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
        cells = [cell(r.bracket + 1)] if brackets and r.bracket is not None else []
        cells += [cell(r.epoch), cell(r.reported), cell(r.went_on), cell(r.stopped)]
        cells += [cell(r.waiting)] + ([cell(r.left)] if left else [])
        if basis is not None:
            cells.append(cell(r.cut).replace('<td class="num"', '<td class="num cut"', 1))
        body.append(f"<tr>{''.join(cells)}</tr>")
    ths = "".join(f"<th>{esc(h)}</th>" for h in head)
    what = {
        "value": f"the worst {esc(objective)} among those that went on (they had "
        f"{esc(objective)} {sign} it)",
        "best": f"the worst best-so-far {esc(objective)} among those that went on",
    }
    cut = f"; cut is {what[basis]}" if basis is not None else ""
    return (
        "<p class=hint>Per rung (epochs from 1): models that finished that epoch, how many "
        f"trained on, were stopped or still wait for the rung to decide{cut}.</p>"
        "<div class=scroll><table class='sortable compact rungs' id=rungs>"
        f"<thead><tr>{ths}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def tail_sentence(tail: Tail | None) -> str:
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
