"""Numbers a user acts on, computed from one catalog snapshot: progress, timing, the best model.

NOTE [ the best model is FitResult's best ]
Models are ranked by ``cerebro._ranking`` (NOTE [ one meaning of best ] there), exactly as
:class:`cerebro.FitResult` ranks them: each model's best value of the objective at any
recorded epoch, ``mode`` min or max, ties to the earliest epoch and then the lowest model
id. The objective and mode default to those the fit was run with (``DIR/experiment.json``),
else to a validation metric (``val_loss``, else a ``val_*`` metric with ``loss`` in its
name, else the first ``val_*`` one) and ``min``. An objective ``test_<name>`` ranks by the
``evaluations`` table (each model's latest value). Epochs shown to a user count from 1.

NOTE [ a fit that is not running has no running models ]
The catalog leaves models ``running`` (and hops in flight ``running``) when a fit stops on
an error or Ctrl-C (fit ``stopped``) or its driver is killed (fit still ``running``, driver
dead). :func:`summarize` shows those models as ``interrupted`` (``stopped`` is a model that
early stopping ended) and counts no hop as running, since nothing runs until ``cerebro
resume DIR``.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from typing import Any

from cerebro import _ranking
from cerebro._early_stopping import waiting
from cerebro.report._data import RunData
from cerebro.report._data import driver as lock_holder
from cerebro.statuses import DROPPED, ENDED_EARLY, LIVE, FitStatus, HopStatus, ModelStatus

__all__ = ["ModelProgress", "RunStatus", "active_segments", "driver_restarts", "summarize"]

# Two hops further apart than this (seconds, across all workers) mean the driver was not
# running in between (a stopped and resumed fit): that gap is not counted as idle time.
RESUME_GAP = 60.0


@dataclass
class ModelProgress:
    """One model's state: where it is in the fit and its latest metrics.

    ``best_value`` and ``best_epoch`` (from 1) are its best value of the run's objective
    at any epoch: what ranks it (see NOTE [ the best model is FitResult's best ]).
    """

    model_id: str
    status: str
    error: str | None
    hyperparams: dict[str, Any]
    epochs_done: int
    hops_done: int
    hops_total: int
    metrics: dict[str, float] = field(default_factory=dict)  # last epoch, "<split>_<name>"
    test: dict[str, float] = field(default_factory=dict)  # evaluations, "test_<name>"
    hop_seconds: float = 0.0  # wall time of its done hops
    best_value: float | None = None
    best_epoch: int | None = None  # from 1; None for a test objective or no value yet
    ranked_by: str = ""  # the objective best_value is of


@dataclass
class RunStatus:
    """The state of a running or finished fit, as :func:`cerebro.report.read_status` sees it.

    Attributes:
        planned_models: models the fit will have trained (a search asks for them as it
            runs: ``models`` holds those asked so far).
        hops_done: completed hops of every model.
        hops_total: hops the fit will have run when it ends (a failed model's remaining
            hops are not counted: they will never run).
        hops_running: hops in flight now.
        elapsed: seconds from the fit's creation to its end (or now).
        eta: seconds left, from the mean train and val hop times; ``None`` when unknown
            (no hop done yet) and 0 when the fit is not running.
        busy: the workers' busy fraction while the fit was active, ``None`` before any hop.
        objective, mode: what ranks the models (given, else the fit's, else the default).
        best: ``{"model_id", "value", "hyperparams", "epoch", "status"}`` or ``None``;
            ``epoch`` (from 1) is where the value was reached (``None`` for a test
            objective).
        last_activity: the time (``time.time()``) of the last hop start or end.
        driver_pid: the process that last held the run directory (``DIR/.lock``), if known.
        driver_alive: whether that process runs on this machine (``None``: unknown).
    """

    run_dir: str
    fit_id: int
    fit_status: str
    num_epochs: int
    workers: int
    models: list[ModelProgress]
    planned_models: int
    hops_done: int
    hops_total: int
    hops_running: int
    elapsed: float
    eta: float | None
    busy: float | None
    active_seconds: float
    objective: str
    mode: str
    best: dict[str, Any] | None
    last_activity: float | None
    now: float
    driver_pid: int | None = None
    driver_alive: bool | None = None

    @property
    def failed(self) -> list[ModelProgress]:
        return [m for m in self.models if m.status in DROPPED]

    @property
    def state(self) -> str:
        """``running``, ``interrupted`` (the catalog says running, its driver is dead),
        ``stopped`` or ``done``."""
        if self.fit_status == FitStatus.RUNNING and self.driver_alive is False:
            return FitStatus.INTERRUPTED
        return self.fit_status


def active_segments(
    intervals: list[tuple[float, float]], gap: float = RESUME_GAP, breaks: tuple[float, ...] = ()
) -> list[tuple[float, float]]:
    """Merge hop intervals into the periods a driver was running.

    Intervals closer than ``gap`` are joined (that time counts as idle workers), unless a
    driver restart lies between them: ``breaks`` are the start times of resumed drivers'
    first hops (see :func:`driver_restarts`).
    """
    segs: list[tuple[float, float]] = []
    for s, e in sorted(intervals):
        restarted = bool(segs) and any(segs[-1][1] < b <= s for b in breaks)
        if segs and s <= segs[-1][1] + gap and not restarted:
            segs[-1] = (segs[-1][0], max(segs[-1][1], e))
        else:
            segs.append((s, e))
    return segs


def driver_restarts(run: RunData) -> tuple[float, ...]:
    """When a resumed driver ran its first hop: its workers are new processes (new pids).

    A pid whose first hop starts after every earlier pid's last hop ended is a new
    generation of workers, i.e. a new driver; one worker restarted inside a running fit is
    not (the other workers go on past its start).
    """
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for h in run.hops:
        if h["pid"] is None or h["start"] is None:
            continue
        pid, s = int(h["pid"]), float(h["start"])
        e = float(h["end"]) if h["end"] is not None else s
        first[pid] = min(first.get(pid, s), s)
        last[pid] = max(last.get(pid, e), e)
    out = []
    for s in first.values():
        older = [q for q in first if first[q] < s]
        if older and all(last[q] <= s for q in older):
            out.append(s)
    return tuple(sorted(set(out)))


def hop_intervals(run: RunData) -> list[tuple[float, float]]:
    """(start, end) of every hop that has a start, in ``run.hops`` order.

    A hop still running ends now. A hop a dead driver left behind (``lost``, no end) ends
    where the last hop of that driver's session ended: about when the driver died.
    """
    breaks = driver_restarts(run)
    ends = sorted(float(h["end"]) for h in run.hops if h["end"] is not None)
    out = []
    for h in run.hops:
        if h["start"] is None:
            continue
        start = float(h["start"])
        end = h["end"]
        if end is None and h["status"] == HopStatus.RUNNING and not run.finished:
            end = run.now
        elif end is None:
            session_end = next((b for b in breaks if b > start), math.inf)
            i = bisect.bisect_left(ends, session_end) - 1
            end = ends[i] if i >= 0 and ends[i] >= start else start
        out.append((start, max(float(end), start)))
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _ranking_rows(run: RunData) -> list[dict[str, Any]]:
    """Per-epoch metrics, plus each model's latest test results at its last epoch."""
    last: dict[str, int] = {}
    for m in run.metrics:
        last[m["model_id"]] = max(last.get(m["model_id"], 0), int(m["epoch"]))
    rows = list(run.metrics)
    for mid, values in run.test_metrics().items():
        for key, v in values.items():
            split, name = _ranking.split_objective(key)
            epoch = last.get(mid, 0)
            rows.append(
                {"model_id": mid, "epoch": epoch, "split": split, "name": name, "value": v}
            )
    return rows


def summarize(run: RunData, objective: str | None = None, mode: str | None = None) -> RunStatus:
    """Progress, timing and the best model of ``run``.

    ``objective`` and ``mode`` default as NOTE [ the best model is FitResult's best ] says.
    """
    names = {f"{m['split']}_{m['name']}" for m in run.metrics}
    objective, mode = _ranking.choose(objective, mode, names, run.run_dir, run.signature)
    driver = _driver(run)
    stopped = run.fit["status"] == FitStatus.STOPPED
    dead = run.fit["status"] == FitStatus.RUNNING and driver.get("driver_alive") is False
    order = _ranking.rank(_ranking_rows(run), objective, mode)
    ranked = {b.model_id: b for b in order}
    last = run.last_epoch_metrics()
    tests = run.test_metrics()
    done_hops = [h for h in run.hops if h["status"] == HopStatus.DONE]
    per_model: dict[str, dict[str, int]] = {}
    seconds: dict[str, float] = {}
    for h in done_hops:
        c = per_model.setdefault(h["model_id"], {"train": 0, "val": 0})
        c[h["kind"]] = c.get(h["kind"], 0) + 1
        seconds[h["model_id"]] = seconds.get(h["model_id"], 0.0) + _dur(h)
    epochs_done: dict[str, int] = {}
    for mrow in run.metrics:
        mid = mrow["model_id"]
        epochs_done[mid] = max(epochs_done.get(mid, 0), int(mrow["epoch"]) + 1)
    test_objective = objective.startswith("test_")
    held = waiting(run.stopping)
    models = []
    for row in run.models:
        mid = row["model_id"]
        c = per_model.get(mid, {})
        status = row["status"]
        if status in LIVE and (stopped or dead):  # NOTE [ a fit that is not running ... ]
            status = ModelStatus.INTERRUPTED
        elif status == ModelStatus.RUNNING and mid in held:
            status = ModelStatus.WAITING
        b = ranked.get(mid)
        models.append(
            ModelProgress(
                model_id=mid,
                status=status,
                error=row["error"],
                hyperparams=row["hyperparams"],
                epochs_done=epochs_done.get(mid, 0),
                hops_done=sum(c.values()),
                hops_total=run.hops_per_model,
                metrics=last.get(mid, {}),
                test=tests.get(mid, {}),
                hop_seconds=seconds.get(mid, 0.0),
                best_value=b.value if b else None,
                best_epoch=b.epoch + 1 if b and not test_objective else None,
                ranked_by=objective,
            )
        )
    hops_done = len(done_hops)
    hops_total = sum(
        m.hops_done if m.status in ENDED_EARLY else max(m.hops_total, m.hops_done) for m in models
    )
    unasked = 0 if run.finished else run.planned_models - len(models)  # a search's, to come
    hops_total += unasked * run.hops_per_model
    train_mean = _mean([_dur(h) for h in done_hops if h["kind"] == "train"])
    val_mean = _mean([_dur(h) for h in done_hops if h["kind"] != "train"]) or train_mean
    eta: float | None = 0.0
    if not run.finished:
        rem_train = rem_val = 0
        for m in models:
            if m.status in LIVE:
                c = per_model.get(m.model_id, {})
                rem_train += max(run.num_epochs * run.train_partitions - c.get("train", 0), 0)
                rem_val += max(run.num_epochs * run.val_partitions - c.get("val", 0), 0)
        rem_train += unasked * run.num_epochs * run.train_partitions
        rem_val += unasked * run.num_epochs * run.val_partitions
        if train_mean is None:
            eta = None
        else:
            work = rem_train * train_mean + rem_val * (val_mean or 0.0)
            eta = work / run.workers
    intervals = hop_intervals(run)
    segs = active_segments(intervals, breaks=driver_restarts(run))
    active = sum(e - s for s, e in segs)
    busy = None
    if intervals and active > 0:
        busy = min(sum(e - s for s, e in intervals) / (run.workers * active), 1.0)
    stamps = [float(t) for h in run.hops for t in (h["start"], h["end"]) if t is not None]
    elapsed = max(run.end_time - float(run.fit["created"]), 0.0)
    if not run.finished and driver.get("driver_alive") is False:  # interrupted: frozen
        eta = None
        elapsed = max((max(stamps) if stamps else run.now) - float(run.fit["created"]), 0.0)
    return RunStatus(
        run_dir=str(run.run_dir),
        fit_id=run.fit_id,
        fit_status=str(run.fit["status"]),
        num_epochs=run.num_epochs,
        workers=run.workers,
        models=models,
        planned_models=len(models) + unasked,
        hops_done=hops_done,
        hops_total=hops_total,
        hops_running=0
        if stopped or dead
        else sum(1 for h in run.hops if h["status"] == HopStatus.RUNNING),
        elapsed=elapsed,
        eta=eta,
        busy=busy,
        active_seconds=active,
        objective=objective,
        mode=mode,
        best=best_model(models, next(iter(_ranking.contenders(order, run.models)), None)),
        last_activity=max(stamps) if stamps else None,
        now=run.now,
        **driver,
    )


def _driver(run: RunData) -> dict[str, Any]:
    """Who holds the run directory (``DIR/.lock``), and whether it is alive."""
    return lock_holder(run.run_dir)


def objective_value(m: ModelProgress, objective: str) -> float | None:
    """The value that ranks ``m`` by ``objective``: its best at any epoch for the run's
    objective (``m.ranked_by``), else its last epoch's (or test) value; finite or None."""
    if objective == m.ranked_by:
        return m.best_value
    v = m.metrics.get(objective, m.test.get(objective))
    return v if v is not None and math.isfinite(v) else None


def best_model(models: list[ModelProgress], top: _ranking.Best | None) -> dict[str, Any] | None:
    """The ``RunStatus.best`` dict of ``top``, the first model :mod:`cerebro._ranking` ranks."""
    m = next((m for m in models if top is not None and m.model_id == top.model_id), None)
    if m is None:
        return None
    return {
        "model_id": m.model_id,
        "value": m.best_value,
        "hyperparams": m.hyperparams,
        "epoch": m.best_epoch,
        "status": m.status,
    }


def _dur(h: dict[str, Any]) -> float:
    if h["start"] is None or h["end"] is None:
        return 0.0
    return max(float(h["end"]) - float(h["start"]), 0.0)


def short_error(error: str | None) -> str:
    """The gist of a model's error: ``RuntimeError: ...`` or what diverged, not the where."""
    lines = (error or "").strip().splitlines()
    if not lines:
        return ""
    first = lines[0]
    m = re.search(r": ([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b.*)$", first)
    if m:
        return m.group(1)
    if " diverged: " in first:
        return "diverged: " + first.split(" diverged: ", 1)[1]
    return first


def sort_metrics(names: list[str], objective: str) -> list[str]:
    """``<split>_<name>`` keys: val, test, train; within each, the objective's name first."""
    order = {"val": 0, "test": 1, "train": 2}
    obj_name = objective.partition("_")[2]

    def key(k: str) -> tuple[int, bool, str]:
        split, _, name = k.partition("_")
        return (order.get(split, 3), name != obj_name, name)

    return sorted(names, key=key)


def fmt_seconds(s: float | None) -> str:
    """``1:02:03`` / ``2:03`` / ``4.2 s``; ``?`` for unknown."""
    if s is None or not math.isfinite(s):
        return "?"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def fmt_value(v: Any) -> str:
    """A metric or hyperparameter value, short."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)
