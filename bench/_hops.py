"""Where a Cerebro fit's time went, and what it trained, read from the run's catalog
through :class:`cerebro.catalog.Catalog` (opened read-only; the run's latest fit).

A done hop's ``start``/``end`` are the worker's wall clock at the start and end of
``run_hop``; ``user_seconds`` is the time inside the user's ``train``/``valtest``,
``load_seconds`` building the model and loading its checkpoint, ``save_seconds`` writing
the new one. So for each worker:

* in-hop overhead = (end - start) - user_seconds: state load and save, minibatch slicing
  (``Partition.batch``), metric conversion;
* gap = next hop's start - this hop's end: the result's trip to the controller, the
  catalog write, scheduling, the next task's trip back (and idling when no hop was
  runnable, which the tail of a fit shows);
* lead = first hop's start - the time ``run_fit`` was called: worker start, set-up and the
  probe minibatch; tail = fit end - the worker's last hop end: waiting for the other
  worker's last hop, and shutdown (``last_hop_to_return_s``: from the end of the fit's last
  hop to the return of ``run_fit``); ``stalls_over_10ms_s``: the gaps over 10 ms, where a
  worker had no runnable hop (MOP's rule: a model is on one worker at a time);
  ``work_imbalance_s``: how much less hop time the workers had than the busiest one, which
  they idle in any schedule (a partition's hops run only on its worker).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cerebro.catalog import Catalog
from cerebro.params import ask_order
from cerebro.statuses import HopStatus

__all__ = ["fit_models", "hop_overhead", "hop_stats", "hop_trace", "profile"]


@contextmanager
def _latest_fit(catalog: Path) -> Iterator[tuple[Catalog, int | None]]:
    """The catalog, read-only, and its latest fit's id (None in an empty catalog)."""
    cat = Catalog(catalog, readonly=True)
    try:
        fit = cat.latest_fit()
        yield cat, None if fit is None else int(fit["fit_id"])
    finally:
        cat.close()


def _rows(catalog: Path) -> list[dict[str, Any]]:
    """The latest fit's done hops, in the order they started."""
    with _latest_fit(catalog) as (cat, fit_id):
        hops = [] if fit_id is None else cat.hops(fit_id)
        rows = [dict(r) for r in hops if r["status"] == HopStatus.DONE]
    return sorted(rows, key=lambda r: r["start"])


def fit_models(catalog: Path, split: str = "val", metric: str = "acc") -> list[dict[str, Any]]:
    """The latest fit's models in the order asked: ``model_id``, ``hyperparams``,
    ``status`` and ``curve``, the ``split`` ``metric`` after each epoch it trained."""
    with _latest_fit(catalog) as (cat, fit_id):
        if fit_id is None:
            return []
        models = cat.models(fit_id)
        metrics = cat.metrics(fit_id)  # by model, epoch, split and name
    curves: dict[str, list[float]] = {}
    for m in metrics:
        if m["split"] == split and m["name"] == metric and m["value"] is not None:
            curves.setdefault(m["model_id"], []).append(float(m["value"]))
    return [
        {
            "model_id": r["model_id"],
            "hyperparams": json.loads(r["hyperparams"]),
            "status": r["status"],
            "curve": curves.get(r["model_id"], []),
        }
        for r in sorted(models, key=lambda r: ask_order(r["model_id"]))
    ]


def _by_worker(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Each worker's hops, in start order, workers sorted."""
    return [[r for r in rows if r["worker"] == w] for w in sorted({r["worker"] for r in rows})]


def _gaps(mine: list[dict[str, Any]]) -> list[float]:
    """The gaps between one worker's consecutive hops."""
    return [max(0.0, b["start"] - a["end"]) for a, b in zip(mine, mine[1:], strict=False)]


def hop_trace(catalog: Path) -> dict[str, Any]:
    """Every done hop's duration, for replaying a real fit's hop times in the scheduler
    simulator (``bench/scheduler_sim.py --traces``): ``hops`` = ``[model_id, epoch, kind,
    partition, seconds]``, the partitions' owners, and the median gap between a worker's
    hops (the controller's round trip when a hop was not queued)."""
    try:
        rows = [r for r in _rows(catalog) if r["kind"] in ("train", "val")]
    except sqlite3.Error as e:
        return {"error": f"could not read hops from {catalog}: {e}"}
    owners: dict[str, dict[int, int]] = {"train": {}, "val": {}}
    gaps = [g for mine in _by_worker(rows) for g in _gaps(mine)]
    for r in rows:
        owners[r["kind"]][r["partition"]] = r["worker"]
    return {
        "epochs": 1 + max((r["epoch"] for r in rows), default=-1),
        "train_owner": owners["train"],
        "val_owner": owners["val"],
        "gap_s_median": statistics.median(gaps) if gaps else 0.0,
        "hops": [
            [r["model_id"], r["epoch"], r["kind"], r["partition"], r["end"] - r["start"]]
            for r in rows
        ],
    }


def hop_stats(catalog: Path, fit_s: float, workers: int) -> dict[str, Any]:
    """Totals per hop kind; ``busy`` = hop time / (fit wall x workers), ``user`` = time in
    the user's functions / hop time. (The summary ``bench/mop_vs_plain.py`` prints.)"""
    try:
        rows = _rows(catalog)
    except sqlite3.Error as e:
        return {"error": f"could not read hops from {catalog}: {e}"}
    kinds: dict[str, dict[str, Any]] = {}
    for r in rows:
        k = kinds.setdefault(
            r["kind"], {"hops": 0, "wall_s": 0.0, "user_s": 0.0, "load_s": 0.0, "save_s": 0.0}
        )
        k["hops"] += 1
        k["wall_s"] += r["end"] - r["start"]
        k["user_s"] += r["user_seconds"] or 0.0
        k["load_s"] += r["load_seconds"] or 0.0
        k["save_s"] += r["save_seconds"] or 0.0
    wall = sum(v["wall_s"] for v in kinds.values())
    user = sum(v["user_s"] for v in kinds.values())
    return {
        "by_kind": kinds,
        "busy": wall / (fit_s * workers) if fit_s > 0 else None,
        "user": user / wall if wall > 0 else None,
    }


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return 1000 * values[0]
    return 1000 * statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def hop_overhead(catalog: Path, fit_start: float, fit_end: float) -> dict[str, Any]:
    """The hop-overhead breakdown of one fit (times are ``time.time()`` seconds).

    Returns:
        Totals (seconds) and shares: ``in_hop_share`` = in-hop overhead / hop time,
        ``between_share`` = gaps / (hop time + gaps), ``share`` = (in-hop overhead + gaps)
        / (hop time + gaps): the fraction of a busy worker's time spent outside the user's
        functions; ``mechanism_share`` = the same without the stalls (gaps over 10 ms, when
        no hop was runnable). Also ``first_hop_s`` (lead before the first hop) and per-hop
        quantiles.
    """
    rows = _rows(catalog)
    if not rows:
        return {"error": "no done hops in the catalog"}
    hop_s = sum(r["end"] - r["start"] for r in rows)
    user_s = sum(r["user_seconds"] or 0.0 for r in rows)
    load_s = sum(r["load_seconds"] or 0.0 for r in rows)
    save_s = sum(r["save_seconds"] or 0.0 for r in rows)
    gaps: list[float] = []
    leads: list[float] = []
    tails: list[float] = []
    busy: list[float] = []
    for mine in _by_worker(rows):
        busy.append(sum(r["end"] - r["start"] for r in mine))
        leads.append(mine[0]["start"] - fit_start)
        tails.append(fit_end - mine[-1]["end"])
        gaps += _gaps(mine)
    gap_s = sum(gaps)
    short = sum(g for g in gaps if g <= 0.01)
    in_hop = hop_s - user_s
    per_hop = [r["end"] - r["start"] for r in rows]
    per_over = [(r["end"] - r["start"]) - (r["user_seconds"] or 0.0) for r in rows]
    return {
        "hops": len(rows),
        "hop_s": hop_s,
        "user_s": user_s,
        "load_s": load_s,
        "save_s": save_s,
        "other_in_hop_s": in_hop - load_s - save_s,
        "gap_s": gap_s,
        "in_hop_share": in_hop / hop_s if hop_s > 0 else None,
        "between_share": gap_s / (hop_s + gap_s) if hop_s + gap_s > 0 else None,
        "share": (in_hop + gap_s) / (hop_s + gap_s) if hop_s + gap_s > 0 else None,
        "first_hop_s": min(r["start"] for r in rows) - fit_start,
        "last_hop_to_return_s": fit_end - max(r["end"] for r in rows),
        "stalls_over_10ms_s": sum(g for g in gaps if g > 0.01),
        # Each partition's hops run on its own worker, so a worker with less hop time than
        # the busiest one idles at least the difference, in any order of hops: the part of
        # stalls and tail that no schedule can remove.
        "work_imbalance_s": sum(max(busy) - b for b in busy),
        # The hop mechanism's own cost: in-hop overhead plus the short gaps (the result's
        # trip, catalog, scheduling, the next task's trip), not idling for lack of a
        # runnable hop (a property of the schedule, which the efficiency figures show).
        "mechanism_share": (in_hop + short) / (hop_s + short) if hop_s + short > 0 else None,
        "short_gap_s": short,
        "lead_s": leads,
        "tail_s": tails,
        "hop_ms_median": _ms(per_hop, 0.5),
        "in_hop_overhead_ms_median": _ms(per_over, 0.5),
        "gap_ms_median": _ms(gaps, 0.5),
        "gap_ms_p90": _ms(gaps, 0.9),
    }


def profile(catalog: Path, fit_start: float, fit_end: float) -> dict[str, Any]:
    """Where a fit's time went, per worker: the lead before its first hop, time in each
    kind of hop, gaps between hops (with those over 10 ms apart: idle, no runnable hop),
    and the tail after its last hop (times are ``time.time()`` seconds)."""
    out: dict[str, Any] = {"fit_s": fit_end - fit_start, "workers": {}}
    for mine in _by_worker(_rows(catalog)):
        gaps = _gaps(mine)
        by_kind: dict[str, float] = {}
        for r in mine:
            by_kind[r["kind"]] = by_kind.get(r["kind"], 0.0) + r["end"] - r["start"]
        out["workers"][str(mine[0]["worker"])] = {
            "hops": len(mine),
            "lead_s": mine[0]["start"] - fit_start,
            "busy_s": by_kind,
            "gaps_s": sum(gaps),
            "idle_over_10ms_s": sum(g for g in gaps if g > 0.01),
            "tail_s": fit_end - mine[-1]["end"],
        }
    return out
