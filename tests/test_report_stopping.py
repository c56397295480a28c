"""The report's early stopping: the rung table, stopped curves, the tail, a real SHA fit.

The pure functions get hand-made stopping logs and hops with expectations worked out by
hand; one real fit with ``early_stopping="sha"`` checks the page against its FitResult.
"""

from __future__ import annotations

import math
import re
import shutil
import sqlite3
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cerebro import Experiment, FitResult
from cerebro.report import _plots, _timeline, write_report
from cerebro.report._data import RunData, load_run
from cerebro.report._stopping import Rung, brackets, decision_epochs, describe, rungs
from cerebro.report._summary import summarize
from cerebro.report._timeline import Tail, run_tail, tail
from toy import ToySpec

SHA = {"type": "sha", "grace_period": 1, "reduction_factor": 3}


def report(model: str, epoch: int, value: float | None, decision: str) -> dict[str, Any]:
    """A ``report`` row of the stopping log (``epoch`` 0-based, as the catalog has it)."""
    return {"event": "report", "model_id": model, "epoch": epoch, "value": value,
            "decision": decision}  # fmt: skip


def end(model: str, status: str) -> dict[str, Any]:
    return {"event": "end", "model_id": model, "epoch": None, "value": None, "decision": status}


# --- rungs ---------------------------------------------------------------------------------


def test_sha_rungs_count_each_decision_and_the_cut() -> None:
    """6 models, 9 epochs: rungs at epochs 1 and 3. At 1, m0 and m1 go on (values 0.9,
    0.8: cut 0.8 for max), m2..m5 stop; at 3, m0 goes on, m1 still waits."""
    log = [report(m, 0, v, "continue") for m, v in (("m0", 0.9), ("m1", 0.8))]
    log += [report(m, 0, v, "stop") for m, v in (("m2", 0.7), ("m3", 0.6), ("m4", 0.5))]
    log += [report("m5", 0, None, "stop")]  # NaN: stored as NULL
    log += [report(m, 1, 0.95, "continue") for m in ("m0", "m1")]  # not a rung
    log += [report("m0", 2, 0.97, "continue"), report("m1", 2, 0.96, "wait")]
    assert rungs(log, SHA, 9, "max") == [
        Rung(epoch=1, reported=6, went_on=2, stopped=4, waiting=0, cut=0.8),
        Rung(epoch=3, reported=2, went_on=1, stopped=0, waiting=1, cut=0.97),
    ]
    # min: the cut is the largest value that went on
    assert rungs(log, SHA, 9, "min")[0].cut == 0.9


def test_a_rung_reached_by_none_and_one_all_waiting_have_no_cut() -> None:
    log = [report("m0", 0, 0.5, "wait"), report("m1", 0, 0.4, "wait")]
    assert rungs(log, SHA, 9, "max") == [
        Rung(epoch=1, reported=2, went_on=0, stopped=0, waiting=2, cut=None),
        Rung(epoch=3, reported=0, went_on=0, stopped=0, waiting=0, cut=None),
    ]


def test_a_model_that_failed_while_waiting_is_left_not_waiting() -> None:
    """m1 waited at rung 1 and then failed: the rung will never decide it."""
    log = [report("m0", 0, 0.5, "wait"), report("m1", 0, 0.4, "wait"), end("m1", "failed")]
    (first, _) = rungs(log, SHA, 9, "max")
    assert (first.reported, first.waiting, first.left) == (2, 1, 1)


def test_an_epoch_reported_again_counts_once_the_latest_row() -> None:
    log = [report("m0", 0, 0.5, "wait"), report("m0", 0, 0.5, "stop")]
    assert rungs(log, SHA, 9, "max")[0] == Rung(1, 1, 0, 1, 0, None)


def test_nan_values_never_make_the_cut() -> None:
    log = [report("m0", 0, None, "continue"), report("m1", 0, 0.3, "continue")]
    assert rungs(log, SHA, 9, "min")[0].cut == 0.3
    assert rungs([report("m0", 0, None, "continue")], SHA, 9, "min")[0].cut is None


def test_the_median_rules_cut_is_of_best_values_so_far_and_a_pruner_has_none() -> None:
    """min: at epoch 2, a (0.8 now, best 0.5) and b (0.3) go on, c (best 0.6) stops: the
    cut is a's best, 0.5, not its 0.8; NaN (None) keeps c's best. A pruner has no cut."""
    log = [report("a", 0, 0.5, "continue"), report("b", 0, 0.4, "continue")]
    log += [report("c", 0, 0.6, "continue")]
    log += [report("a", 1, 0.8, "continue"), report("b", 1, 0.3, "continue")]
    log += [report("c", 1, None, "stop")]
    median = {"type": "median", "grace_period": 1, "min_samples": 1}
    assert rungs(log, median, 4, "min") == [
        Rung(epoch=1, reported=3, went_on=3, stopped=0, waiting=0, cut=0.6),
        Rung(epoch=2, reported=3, went_on=2, stopped=1, waiting=0, cut=0.5),
    ]
    pruner = {"type": "pruner:PercentilePruner", "key": "k"}
    assert [r.cut for r in rungs(log, pruner, 4, "min")] == [None, None]
    assert [r.stopped for r in rungs(log, pruner, 4, "min")] == [0, 1]


def test_decision_epochs_per_rule() -> None:
    log = [report("m0", e, 0.1, "continue") for e in range(6)]  # epochs 1..6 reported
    assert decision_epochs(SHA, 9, log) == [1, 3]
    asha = {"type": "asha", "grace_period": 2, "reduction_factor": 2}
    assert decision_epochs(asha, 9) == [2, 4, 8]  # reached or not
    # the median rule from its grace period, up to the epochs reported
    median = {"type": "median", "grace_period": 3, "min_samples": 3}
    assert decision_epochs(median, 9, log) == [3, 4, 5, 6]
    # a pruner: any epoch before the last; the last's forced 'continue' is no decision
    assert decision_epochs({"type": "pruner:ThresholdPruner", "key": "k"}, 4, log) == [1, 2, 3]
    # a rule this version does not know: where the log stopped or held a model
    odd = [report("m0", 1, 0.1, "stop"), report("m1", 0, 0.1, "continue")]
    assert decision_epochs({"type": "future"}, 9, odd) == [2]


def test_hyperband_brackets_in_ask_order_and_their_rungs() -> None:
    """9 models, 9 epochs, factor 3: rungs 1, 3 and 3 brackets. Hyperband's n_s for
    s = 2, 1, 0 is 9, 5, 3 (of 17): 9 models exactly 4.76, 2.65, 1.59, floors 4, 2, 1 and
    the two largest remainders round up: 5, 3, 1 models."""
    rule = {"type": "hyperband", "grace_period": 1, "reduction_factor": 3, "brackets": None}
    ids = [f"m{i:03d}" for i in range(9)]
    of = brackets(reversed(ids), 9, rule, 9)  # any order in: ask order decides
    assert of == {m: 0 if i < 5 else 1 if i < 8 else 2 for i, m in enumerate(ids)}
    log = [report(m, 0, 0.1 * i, "continue" if i in (0, 5, 6, 7, 8) else "stop")
           for i, m in enumerate(ids)]  # fmt: skip
    rows = rungs(log, rule, 9, "min", of)
    # bracket 0 decides at 1 and 3; bracket 1 only at 3 (its m005..m007 pass epoch 1);
    # bracket 2 never (no row)
    assert [(r.bracket, r.epoch) for r in rows] == [(0, 1), (0, 3), (1, 3)]
    assert (rows[0].reported, rows[0].went_on, rows[0].stopped, rows[0].cut) == (5, 1, 4, 0.0)
    assert brackets(ids, 9, SHA, 9) == {}


def test_describe_names_the_rule_and_its_knobs() -> None:
    text = describe(SHA)
    assert text.startswith("Successive halving") and "grace_period=1, reduction_factor=3" in text
    hb = describe(
        {"type": "hyperband", "grace_period": 1, "reduction_factor": 3, "brackets": None}
    )
    assert "Hyperband" in hb and "brackets=default" in hb
    assert "min_samples=3" in describe({"type": "median", "grace_period": 1, "min_samples": 3})
    assert "ThresholdPruner" in describe({"type": "pruner:ThresholdPruner", "key": "abc"})
    assert "abc" not in describe({"type": "pruner:ThresholdPruner", "key": "abc"})


# --- the tail ------------------------------------------------------------------------------


def test_tail_from_the_workers_th_latest_model_end() -> None:
    """2 workers; a ends at 20, c at 12, b at 8: from 12 only a remains. In [12, 20] a
    works 8 s of 2 x 8 worker-seconds: 8 idle."""
    hops = [("a", 0, 10), ("a", 10, 20), ("b", 0, 5), ("b", 5, 8), ("c", 8, 12)]
    t = tail(hops, 2)
    assert t == Tail(start=12.0, end=20.0, idle=8.0, workers=2, whole=False)
    assert t.seconds == 8.0


def test_tail_covers_the_whole_fit_with_fewer_models_than_workers() -> None:
    t = tail([("a", 0, 4), ("a", 4, 6)], 3)
    assert t == Tail(start=0.0, end=6.0, idle=12.0, workers=3, whole=True)


@pytest.mark.parametrize(
    ("hops", "workers"),
    [
        ([("a", 0, 10), ("b", 0, 10)], 2),  # both end together: no tail
        ([("a", 0, 10), ("b", 0, 4)], 1),  # one worker is never short of a model
        ([], 2),
    ],
)
def test_no_tail(hops: list[tuple[str, float, float]], workers: int) -> None:
    assert tail(hops, workers) is None


def test_the_tail_sentence() -> None:
    from cerebro.report._html_stopping import tail_sentence

    text = tail_sentence(Tail(start=12.0, end=20.0, idle=8.0, workers=2))
    assert "From 12.0 s after the first hop (shaded), fewer models remained than the 2" in text
    assert "lasted 8.0 s (40% of the fit) and left 8.0 s of worker time idle (50% of it)" in text
    whole = tail_sentence(Tail(start=0.0, end=6.0, idle=12.0, workers=3, whole=True))
    assert "never had as many models as its 3 workers" in whole and "(67% of it)" in whole
    assert tail_sentence(None) == "" == tail_sentence(Tail(0.0, 5.0, 0.0, 2))


def _hop(hop_id: int, model: str, worker: int, start: float, end: float) -> dict[str, Any]:
    return {"hop_id": hop_id, "model_id": model, "epoch": 0, "kind": "train", "partition": 0,
            "worker": worker, "pid": 100 + worker, "start": start, "end": end,
            "status": "done", "rows": 10, "user_seconds": end - start, "load_seconds": 0.0,
            "save_seconds": 0.0, "error": None}  # fmt: skip


def _run(tmp_path: Path, status: str = "done", stopped: tuple[str, ...] = ()) -> RunData:
    """3 models on 2 workers, 3 epochs of one 1 s train hop each, each hop on the worker
    free first: w0 m000 0-1, w1 m001 0-1, w0 m002 1-2, w1 m000 1-2, w0 m000 2-3. m001 and
    m002 end after epoch 1 (``stopped``: early stopping ended them), m000 runs alone last.
    """
    t0 = 1_000.0
    epochs = {"m000": 3, "m001": 1, "m002": 1}
    hops, metrics, clock = [], [], [t0, t0]
    for e in range(3):
        for mid, n in epochs.items():
            if e >= n:
                continue
            w = 0 if clock[0] <= clock[1] else 1
            hops.append(_hop(len(hops) + 1, mid, w, clock[w], clock[w] + 1.0))
            clock[w] += 1.0
            for split in ("train", "val"):
                v = 1.0 / (e + 1 + int(mid[-1]))
                metrics.append({"model_id": mid, "epoch": e, "split": split, "name": "loss",
                                "value": v})  # fmt: skip
    models = [
        {"model_id": m, "status": "stopped" if m in stopped else "done", "error": None,
         "hyperparams": {"lr": 10.0 ** -(i + 1), "batch_size": 32}}
        for i, m in enumerate(epochs)
    ]  # fmt: skip
    return RunData(
        run_dir=tmp_path,
        fit={"fit_id": 1, "status": status, "created": t0, "finished": max(clock),
             "config": "{}"},
        signature={"num_epochs": 3, "workers": 2, "early_stopping": SHA},
        models=models,
        hops=hops,
        metrics=metrics,
        now=max(clock),
        train_partitions=1,
        val_partitions=0,
    )  # fmt: skip


def test_run_tail_of_a_finished_fit_only(tmp_path: Path) -> None:
    """m002 ends at 2, m000 at 3: from 2 one worker idles, for 1 s."""
    run = _run(tmp_path)
    t = run_tail(run)
    assert t is not None and (t.start, t.end, t.idle) == (2.0, 3.0, 1.0)
    assert run_tail(_run(tmp_path, status="running")) is None


# --- the plots -----------------------------------------------------------------------------


def _stop_marks(fig: Figure) -> list[Line2D]:
    return [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_marker() == "x"]


def test_a_stopped_curve_ends_in_an_x_of_its_colour(tmp_path: Path) -> None:
    run = _run(tmp_path, stopped=("m001", "m002"))
    st = summarize(run)
    assert st.best is not None and st.best["model_id"] == "m000"  # stopped ones never best
    ((_, fig),) = _plots.learning_curve_figures(run, st)
    assert len(_stop_marks(fig)) == 4  # each stopped model's, in the train and val panels
    for ax in fig.axes:
        lines = ax.get_lines()
        marks = [ln for ln in lines if ln.get_marker() == "x"]
        curves = {(ln.get_xdata()[-1], ln.get_ydata()[-1]): ln for ln in lines
                  if ln.get_marker() != "x"}  # fmt: skip
        ends = sorted((float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in marks)
        assert ends == [(1.0, 1 / 3), (1.0, 1 / 2)]  # m002's and m001's only epoch
        for m in marks:
            line = curves[(m.get_xdata()[0], m.get_ydata()[0])]
            assert m.get_color() == line.get_color()
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert sum("(stopped)" in lb for lb in labels) == 2


def test_no_x_without_stopped_models(tmp_path: Path) -> None:
    run = _run(tmp_path)
    ((_, fig),) = _plots.learning_curve_figures(run, summarize(run))
    assert not _stop_marks(fig)


def test_the_timeline_shades_the_tail(tmp_path: Path) -> None:
    from matplotlib.colors import to_rgba

    fig = _timeline.timeline_figure(_run(tmp_path))
    assert fig is not None
    ax = fig.axes[0]
    shaded = [p for p in ax.patches if p.get_facecolor()[:3] == to_rgba(_timeline.TAIL_COLOR)[:3]]
    assert len(shaded) == 1
    xs = [x for x, _ in shaded[0].get_xy()]
    assert (min(xs), max(xs)) == pytest.approx((2.0, 3.0))  # active seconds from the first hop
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert any(lb.startswith("tail") for lb in labels)


def test_a_tail_that_is_the_whole_fit_is_not_shaded(tmp_path: Path) -> None:
    """3 models on 4 workers: fewer models than workers throughout, nothing to mark."""
    run = _run(tmp_path)
    run.signature["workers"] = 4
    t = run_tail(run)
    assert t is not None and t.whole
    fig = _timeline.timeline_figure(run)
    assert fig is not None
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert not any(lb.startswith("tail") for lb in labels)


# --- a real fit ----------------------------------------------------------------------------

GRID = {"lr": [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 2.0, 4.0, 8.0], "batch_size": [16]}
EPOCHS = 4  # rungs at epochs 1 and 3 (grace 1, factor 3)


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory, toy_data: dict[str, str]) -> FitResult:
    out = tmp_path_factory.mktemp("report-stopping") / "run"
    with Experiment(dict(toy_data, output_dir=str(out)), workers=2, verbose=False) as exp:
        return exp.run_fit(
            ToySpec(), GRID, num_epochs=EPOCHS, early_stopping="sha", objective="val_acc",
            mode="max",
        )  # fmt: skip


@pytest.fixture(scope="module")
def page(fit: FitResult) -> str:
    return write_report(fit.catalog_path.parent).read_text(encoding="utf-8")


def _text(cell: str) -> str:
    return unescape(re.sub(r"<[^>]+>", "", cell)).strip()


def _table(page: str, table_id: str) -> tuple[list[str], list[list[str]]]:
    m = re.search(rf"<table[^>]*id={table_id}[^>]*>(.*?)</table>", page, re.S)
    assert m, f"no table {table_id}"
    head = [_text(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", m.group(1), re.S)]
    body = re.search(r"<tbody>(.*?)</tbody>", m.group(1), re.S)
    assert body
    rows = [
        [_text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
        for r in re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1), re.S)
    ]
    return head, rows


def test_the_rung_table_matches_the_fit(fit: FitResult, page: str) -> None:
    t = fit.table
    h = fit.history
    head, rows = _table(page, "rungs")
    assert head == ["epoch", "reported", "went on", "stopped", "waiting", "cut (val_acc ≥)"]
    assert [r[0] for r in rows] == ["1", "3"]
    for row, epoch in zip(rows, (1, 3), strict=True):
        reported = t[t.epochs >= epoch]
        stopped = reported[(reported.status == "stopped") & (reported.epochs == epoch)]
        went_on = reported[reported.epochs > epoch]
        assert len(went_on) == max(1, len(reported) // 3)  # SHA keeps the best third
        assert len(went_on) + len(stopped) == len(reported)  # none failed, none waits
        at = h[(h.epoch == epoch) & (h.split == "val") & (h.metric == "acc")]
        cut = min(at[at.model_id.isin(went_on.model_id)].value)
        want = [str(epoch), str(len(reported)), str(len(went_on)), str(len(stopped)), "0"]
        assert row[:5] == want
        assert math.isclose(float(row[5]), cut, rel_tol=1e-3)
    assert "Successive halving" in page and "grace_period=1, reduction_factor=3" in page


def test_stopped_models_are_badged_apart_and_never_best(fit: FitResult, page: str) -> None:
    head, rows = _table(page, "models")
    status = {r[0].rstrip(" ★"): r[head.index("status")] for r in rows}
    starred = [r[0].rstrip(" ★") for r in rows if r[0].endswith("★")]
    t = fit.table.set_index("model_id")
    assert status == dict(t.status)
    assert starred == [fit.best["model_id"]] and t.status[fit.best["model_id"]] == "done"
    n = int((t.status == "stopped").sum())
    assert n > 0
    assert len(re.findall(r'<span class="st st-early" title="early stopping', page)) == n
    assert f'<span class="st st-early">{n} stopped early</span>' in page  # the summary's
    assert "an x ends the curve of a model early stopping stopped" in page


def test_the_timeline_says_how_long_the_tail_was(page: str) -> None:
    """At the end one model trains alone: one of the 2 workers idles."""
    m = re.search(r"fewer models remained than the 2 workers: that tail lasted ([^(]+) \(", page)
    assert m, "no tail sentence"


def test_a_catalog_without_a_stopping_table_still_reports(fit: FitResult, tmp_path: Path) -> None:
    """A catalog from before early stopping: no ``stopping`` table, no rows, no error."""
    run_dir = tmp_path / "old"
    shutil.copytree(fit.catalog_path.parent, run_dir)
    with sqlite3.connect(run_dir / "catalog.sqlite") as db:
        db.execute("DROP TABLE stopping")
    assert load_run(run_dir).stopping == []
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "No model has reached a rung yet." in text


def test_no_section_without_early_stopping(tmp_path: Path) -> None:
    from cerebro.report._html_stopping import early_stopping_section

    run = _run(tmp_path)
    run.signature.pop("early_stopping")
    assert early_stopping_section(run) == ""


def test_tensorboard_counts_a_stopped_model_as_ended_not_running(
    fit: FitResult, tmp_path: Path
) -> None:
    """The hparams view filters by session status: early stopping is a normal end."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    from cerebro.report import write_tensorboard

    run_dir = tmp_path / "run"
    shutil.copytree(fit.catalog_path.parent, run_dir, ignore=shutil.ignore_patterns("models"))
    tb = write_tensorboard(run_dir)
    t = fit.table.set_index("model_id")
    for model_id in (t.index[t.status == "stopped"][0], t.index[t.status == "done"][0]):
        acc = EventAccumulator(str(tb / model_id))
        acc.Reload()
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end.status == api_pb2.STATUS_SUCCESS, model_id


def test_every_status_the_catalog_holds_is_one_of_the_enums(fit: FitResult) -> None:
    from cerebro.statuses import FitStatus, HopStatus, ModelStatus

    with sqlite3.connect(fit.catalog_path) as db:
        fits = {r[0] for r in db.execute("SELECT status FROM fits")}
        models = {r[0] for r in db.execute("SELECT status FROM models")}
        hops = {r[0] for r in db.execute("SELECT status FROM hops")}
    assert fits == {FitStatus.DONE}
    assert models == {ModelStatus.DONE, ModelStatus.STOPPED}
    assert hops == {HopStatus.DONE}
    assert set(fit.table.status) <= set(ModelStatus)
