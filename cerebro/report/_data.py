"""One consistent, read-only snapshot of a run directory's catalog.

NOTE [ readers never disturb the writer ]
The controller is the catalog's only writer and keeps it in WAL mode. Everything in this
package reads through :func:`load_run`, which opens its own read-only connection, takes one
read transaction (so models, hops and metrics come from the same moment, even while hops are
being committed), copies the rows into plain Python objects and closes the connection at
once. A WAL reader never blocks the writer, and the snapshot is all we hold afterwards, so a
report or ``cerebro status`` can run beside a live fit, after it finished, or after a resume.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cerebro._rundir import load_experiment
from cerebro.catalog import Catalog
from cerebro.errors import CerebroError
from cerebro.statuses import FitStatus, ModelStatus

__all__ = ["NoFitError", "RunData", "catalog_path", "driver", "load_run", "unstarted"]

CATALOG = "catalog.sqlite"
# Hop columns without the per-minibatch metrics JSON (large; only TensorBoard needs it).
_HOP_COLS = (
    "hop_id, model_id, epoch, kind, partition, worker, pid, start, end, status, rows, "
    "user_seconds, load_seconds, save_seconds, error"
)


class NoFitError(CerebroError):
    """The run directory has a catalog but no fit recorded in it yet."""


@dataclass
class RunData:
    """What the catalog says about the latest fit of a run directory, at one moment.

    Attributes:
        run_dir: the run directory.
        fit: the ``fits`` row (``fit_id``, ``status``, ``created``, ``finished``, ...).
        signature: the fit's signature (grid, ``num_epochs``, seed, policy, data, workers).
        models: ``models`` rows, ``hyperparams`` decoded to a dict.
        hops: ``hops`` rows in hop-id order; ``metrics`` decoded only when asked for.
        metrics: per-epoch ``metrics`` rows (``model_id, epoch, split, name, value``).
        evaluations: rows of the optional ``evaluations`` table (test-set results).
        stopping: rows of the optional ``stopping`` table (every call to the fit's
            early stopping, in the order made; empty without early stopping).
        now: when the snapshot was taken (``time.time()``).
    """

    run_dir: Path
    fit: dict[str, Any]
    signature: dict[str, Any]
    models: list[dict[str, Any]]
    hops: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    stopping: list[dict[str, Any]] = field(default_factory=list)
    now: float = 0.0
    train_partitions: int = 1
    val_partitions: int = 0

    @property
    def fit_id(self) -> int:
        return int(self.fit["fit_id"])

    @property
    def num_epochs(self) -> int:
        """Epochs asked for; falls back to the epochs seen when the signature lacks it."""
        n = self.signature.get("num_epochs")
        if isinstance(n, int) and n > 0:
            return n
        return max((int(m["epoch"]) + 1 for m in self.metrics), default=1)

    @property
    def workers(self) -> int:
        n = self.signature.get("workers") or json.loads(self.fit.get("config") or "{}").get(
            "workers"
        )
        seen = {int(h["worker"]) for h in self.hops}
        return max(int(n or 0), len(seen), 1)

    @property
    def planned_models(self) -> int:
        """Models the fit trains in all: a search asks for them while it runs, so the
        catalog may hold fewer yet."""
        n = json.loads(self.fit.get("config") or "{}").get("models")
        return max(int(n or 0), len(self.models))

    @property
    def hops_per_model(self) -> int:
        """Hops one model needs for the whole fit: each epoch, every train + val partition."""
        return self.num_epochs * (self.train_partitions + self.val_partitions)

    @property
    def early_stopping(self) -> dict[str, Any] | None:
        """The fit's early-stopping rule as its signature records it (``{"type": "sha",
        ...}``), or ``None`` for a fit without."""
        rule = self.signature.get("early_stopping")
        return rule if isinstance(rule, dict) and isinstance(rule.get("type"), str) else None

    @property
    def stopped_early(self) -> set[str]:
        """Models early stopping ended (catalog status ``stopped``)."""
        return {str(m["model_id"]) for m in self.models if m["status"] == ModelStatus.STOPPED}

    @property
    def finished(self) -> bool:
        return self.fit["status"] != FitStatus.RUNNING

    @property
    def end_time(self) -> float:
        """The fit's end (or now, while it runs)."""
        fin = self.fit.get("finished")
        return float(fin) if fin is not None and self.finished else self.now

    def hyperparam_names(self) -> list[str]:
        names: list[str] = []
        for m in self.models:
            for k in m["hyperparams"]:
                if k not in names:
                    names.append(k)
        return names

    def last_epoch_metrics(self) -> dict[str, dict[str, float]]:
        """``{model_id: {"<split>_<name>": value}}`` at each model's last recorded epoch."""
        last: dict[str, int] = {}
        for m in self.metrics:
            last[m["model_id"]] = max(last.get(m["model_id"], -1), int(m["epoch"]))
        out: dict[str, dict[str, float]] = {}
        for m in self.metrics:
            if int(m["epoch"]) == last[m["model_id"]] and m["value"] is not None:
                out.setdefault(m["model_id"], {})[f"{m['split']}_{m['name']}"] = m["value"]
        return out

    def test_metrics(self) -> dict[str, dict[str, float]]:
        """``{model_id: {"<split>_<name>": value}}`` from ``evaluations``, latest row wins."""
        out: dict[str, dict[str, float]] = {}
        for e in self.evaluations:
            if e.get("model_id") is None or e.get("name") is None:
                continue
            key = f"{e.get('split') or 'test'}_{e['name']}"
            value = e.get("value")
            if isinstance(value, int | float):
                out.setdefault(str(e["model_id"]), {})[key] = float(value)
        return out


def catalog_path(run_dir: str | Path) -> Path:
    """The catalog of ``run_dir``.

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``catalog.sqlite`` (not a run directory).
    """
    path = Path(run_dir) / CATALOG
    if not path.is_file():
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(f"no run directory {run_dir}")
        note = unstarted(run_dir)
        if note is not None:
            raise FileNotFoundError(f"{note} (it has no {CATALOG} yet)")
        raise FileNotFoundError(
            f"{run_dir} has no {CATALOG}: not a Cerebro run directory (pass the output_dir "
            "of a run_fit or `cerebro run`)"
        )
    return path


def driver(run_dir: str | Path) -> dict[str, Any]:
    """Who holds the run directory: the pid ``DIR/.lock`` names, and whether it is alive.

    Only a hint (the lock file is never locked or written here): the pid is checked on
    this machine, with signal 0, which tells whether the process exists and does nothing.
    Returns ``{"driver_pid", "driver_alive"}`` (``None``: cannot tell), or ``{}``.
    """
    try:
        text = (Path(run_dir) / ".lock").read_text(errors="replace")
    except OSError:
        return {}
    match = re.match(r"process (\d+)", text.strip())
    if match is None:
        return {}
    pid = int(match.group(1))
    try:
        os.kill(pid, 0)
        alive: bool | None = True
    except ProcessLookupError:
        alive = False
    except (PermissionError, OSError):
        alive = None  # exists but not ours, or cannot tell
    return {"driver_pid": pid, "driver_alive": alive}


def _has_fit(path: Path) -> bool:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        return db.execute("SELECT 1 FROM fits LIMIT 1").fetchone() is not None
    except sqlite3.Error:  # no tables yet
        return False
    finally:
        db.close()


def unstarted(run_dir: str | Path) -> str | None:
    """What a run directory whose fit has not started holds, for a user; else ``None``.

    ``Experiment.run`` (``cerebro run``) records the ETL and the fit in
    ``DIR/experiment.json`` before either starts, so a run killed in its ETL has that file
    and no fit in a catalog (often no catalog at all): it is a run directory, and
    ``cerebro resume DIR`` continues it.
    """
    run_dir = Path(run_dir)
    session = load_experiment(run_dir)
    if session is None or _has_fit(run_dir / CATALOG):
        return None
    who = driver(run_dir)
    running = who.get("driver_alive") is True
    etl_done = (run_dir / "data" / "manifest.json").is_file()
    if "fit" in session:
        if running:
            return (
                f"{run_dir}: the run is starting (process {who['driver_pid']}): "
                + ("its fit begins" if etl_done else "its ETL runs")
                + "; no model has trained yet"
            )
        if etl_done:
            return (
                f"{run_dir}: the run was interrupted after its ETL, before the fit began; "
                f"`cerebro resume {run_dir}` continues it"
            )
        return (
            f"{run_dir}: the run was interrupted during its ETL, before the fit began; "
            f"`cerebro resume {run_dir}` continues it (the ETL, then the fit)"
        )
    if running:
        return f"{run_dir}: its ETL runs (process {who['driver_pid']}); no fit is recorded here"
    if etl_done:
        return (
            f"{run_dir}: only run_etl ran here, no fit is recorded: call run_fit (or "
            "Experiment.run) with this output_dir"
        )
    return (
        f"{run_dir}: its ETL was interrupted and no fit is recorded here: run run_etl (or "
        "the script that called it) again"
    )


def load_run(run_dir: str | Path, hop_metrics: bool = False) -> RunData:
    """Read the latest fit of ``run_dir`` from its catalog, read-only, in one transaction.

    Args:
        run_dir: a run directory (the ``output_dir`` of a fit).
        hop_metrics: also decode every hop's per-minibatch metrics into ``hop["metrics"]``.

    Raises:
        FileNotFoundError: no catalog in ``run_dir``.
        NoFitError: the catalog has no fit yet (a run that is still starting).
    """
    path = catalog_path(run_dir)
    cat = Catalog(path, readonly=True)
    db = cat.db
    try:
        db.execute("BEGIN")  # one read transaction: a consistent snapshot of every table
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        fit_row = cat.latest_fit() if "fits" in tables else None
        if fit_row is None:
            note = unstarted(run_dir)
            raise NoFitError(note or f"{run_dir}: the catalog has no fit yet (is it starting?)")
        fit = dict(fit_row)
        fid = fit["fit_id"]
        models = [dict(r) for r in cat.models(fid)]
        cols = _HOP_COLS + (", metrics" if hop_metrics else "")
        hops = [
            dict(r)
            for r in db.execute(f"SELECT {cols} FROM hops WHERE fit_id=? ORDER BY hop_id", (fid,))
        ]
        metrics = [dict(r) for r in cat.metrics(fid)]
        evaluations = _evaluations(db, fit) if "evaluations" in tables else []
        # A catalog older than early stopping has no such table.
        stopping = [dict(r) for r in cat.stopping_log(fid)] if "stopping" in tables else []
        db.execute("ROLLBACK")
    finally:
        cat.close()
    for m in models:
        m["hyperparams"] = json.loads(m["hyperparams"])
    if hop_metrics:
        for h in hops:
            h["metrics"] = json.loads(h["metrics"]) if h.get("metrics") else None
    try:
        signature = json.loads(fit["signature"])
    except (TypeError, ValueError):
        signature = {}
    run = RunData(
        run_dir=Path(run_dir),
        fit=fit,
        signature=signature if isinstance(signature, dict) else {},
        models=models,
        hops=hops,
        metrics=metrics,
        evaluations=evaluations,
        stopping=stopping,
        now=time.time(),
    )
    run.train_partitions, run.val_partitions = _partitions(run)
    return run


def _evaluations(db: sqlite3.Connection, fit: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the optional ``evaluations`` table (``run_test`` results), oldest first.

    The table has no fit id: rows older than the fit (a discarded earlier fit's models
    had the same ids) are left out when the table records when each row was made.
    """
    cols = {r[1] for r in db.execute("PRAGMA table_info(evaluations)")}
    if not {"model_id", "name", "value"} <= cols:
        return []
    where, args = [], []
    if "fit_id" in cols:
        where.append("fit_id=?")
        args.append(fit["fit_id"])
    if "created" in cols:
        where.append("created>=?")
        args.append(fit["created"])
    sql = "SELECT * FROM evaluations" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY " + ("created, rowid" if "created" in cols else "rowid")
    return [dict(r) for r in db.execute(sql, args)]


def _partitions(run: RunData) -> tuple[int, int]:
    """How many train and (non-empty) val partitions each epoch visits.

    The catalog's signature records the data's partition count; the run directory's
    manifest, when the data lives there, says which val partitions are empty. Hops already
    seen are a lower bound either way.
    """
    data = run.signature.get("data") if isinstance(run.signature.get("data"), dict) else {}
    assert isinstance(data, dict)
    parts = int(data.get("partitions") or 0)
    has_val = "val" in (data.get("splits") or {})
    train, val = parts, parts if has_val else 0
    manifest = run.run_dir / "data" / "manifest.json"
    try:
        man = json.loads(manifest.read_text())
        if man.get("fingerprint") == data:
            splits = man["splits"]
            train = len(splits["train"]["sizes"])
            val = sum(1 for n in splits.get("val", {}).get("sizes", []) if n > 0)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    seen_train = {h["partition"] for h in run.hops if h["kind"] == "train"}
    seen_val = {h["partition"] for h in run.hops if h["kind"] == "val"}
    return max(train, len(seen_train), 1), max(val, len(seen_val))
