"""The run's catalog: one SQLite database per run directory, written by the controller only.

NOTE [ one writer, atomic steps ]
Only the controller process writes; readers (``cerebro status``, the report) open their own
read connections, which WAL mode lets run beside the writer without blocking it. Every
state change that must stay consistent (a hop done + the model's new checkpoint + its hop
count) is one transaction, so a killed driver leaves the catalog at a hop boundary.

NOTE [ WAL only while writing ]
The writer turns WAL on when it opens the catalog and, closing it, checkpoints the log into
the database and turns it back off. A finished run's directory then holds ``catalog.sqlite``
alone: no ``-wal``/``-shm`` files, which a read-only connection (status, report, results)
would otherwise create and, being read-only, never remove. A killed writer leaves the log,
which the next connection reads as usual.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cerebro.statuses import FitStatus, HopStatus, ModelStatus

__all__ = ["Catalog", "StopRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fits(
    fit_id INTEGER PRIMARY KEY, signature TEXT NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL, created REAL NOT NULL, finished REAL);
CREATE TABLE IF NOT EXISTS models(
    fit_id INTEGER NOT NULL, model_id TEXT NOT NULL, hyperparams TEXT NOT NULL,
    status TEXT NOT NULL, error TEXT, checkpoint TEXT, train_hops INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(fit_id, model_id));
CREATE TABLE IF NOT EXISTS hops(
    hop_id INTEGER PRIMARY KEY, fit_id INTEGER NOT NULL, model_id TEXT NOT NULL,
    epoch INTEGER NOT NULL, kind TEXT NOT NULL, partition INTEGER NOT NULL,
    worker INTEGER NOT NULL, pid INTEGER, start REAL NOT NULL, end REAL,
    status TEXT NOT NULL, rows INTEGER, user_seconds REAL, load_seconds REAL,
    save_seconds REAL, metrics TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS hops_by_model ON hops(fit_id, model_id, epoch, kind);
CREATE TABLE IF NOT EXISTS metrics(
    fit_id INTEGER NOT NULL, model_id TEXT NOT NULL, epoch INTEGER NOT NULL,
    split TEXT NOT NULL, name TEXT NOT NULL, value REAL,
    PRIMARY KEY(fit_id, model_id, epoch, split, name));
CREATE TABLE IF NOT EXISTS evaluations(
    fit_id INTEGER, model_id TEXT NOT NULL, tag TEXT NOT NULL, split TEXT NOT NULL,
    name TEXT NOT NULL, value REAL, checkpoint TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS stopping(
    seq INTEGER PRIMARY KEY, fit_id INTEGER NOT NULL, event TEXT NOT NULL, model_id TEXT,
    epoch INTEGER, value REAL, decision TEXT);
CREATE TABLE IF NOT EXISTS checkpoints(
    fit_id INTEGER NOT NULL, model_id TEXT NOT NULL, epoch INTEGER NOT NULL,
    path TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY(fit_id, model_id, epoch));
CREATE TABLE IF NOT EXISTS parallelism(
    fit_id INTEGER NOT NULL, model_id TEXT NOT NULL, choice TEXT NOT NULL,
    trials TEXT NOT NULL, worker INTEGER NOT NULL, hop_id INTEGER NOT NULL,
    PRIMARY KEY(fit_id, model_id));
"""


@dataclass
class StopRecord:
    """What one moment of early stopping writes (see ``cerebro/_early_stopping.py``).

    ``events``: calls to the stopper as ``(event, model_id, epoch, value, decision)``;
    ``resolved``: waiting models now decided; ``stopped``: models it stopped;
    ``status``: other model status changes ``(model_id, status, error)`` that go with it.
    """

    events: list[tuple[str, str | None, int | None, float | None, str | None]] = field(
        default_factory=list
    )
    resolved: list[tuple[str, str]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    status: list[tuple[str, ModelStatus, str | None]] = field(default_factory=list)


class Catalog:
    """Read and write the catalog of one run directory.

    Args:
        path: the ``catalog.sqlite`` file (created if missing).
        readonly: open for reading only (``cerebro status`` while a run is live).
    """

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._journal("wal")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        self.readonly = readonly
        self.db.row_factory = sqlite3.Row

    def _journal(self, mode: str) -> None:
        """Switch the journal mode; a reader that holds the file a moment makes SQLite keep
        the old one, so try for a second before going on in it (NOTE [ WAL only while
        writing ])."""
        for _ in range(20):
            if self.db.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode:
                return
            time.sleep(0.05)

    def close(self) -> None:
        """Close the connection; the writer first folds the log into the database."""
        if not self.readonly:
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._journal("delete")
            except sqlite3.Error:
                pass  # a full disk, say: the log stays and the next open reads it
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All statements inside commit together or not at all."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- fits and models ----------------------------------------------------------------------

    def find_fit(self, signature: str) -> int | None:
        """The fit trained with exactly these settings (``signature``), or None."""
        row = self.db.execute("SELECT fit_id FROM fits WHERE signature=?", (signature,)).fetchone()
        return None if row is None else int(row[0])

    def latest_fit(self) -> sqlite3.Row | None:
        """The most recently created fit's row, or None in an empty catalog."""
        return self.db.execute(  # type: ignore[no-any-return]
            "SELECT * FROM fits ORDER BY fit_id DESC LIMIT 1"
        ).fetchone()

    def fit(self, fit_id: int) -> sqlite3.Row:
        """One fit's row: signature, config, status, created, finished."""
        return self.db.execute(  # type: ignore[no-any-return]
            "SELECT * FROM fits WHERE fit_id=?", (fit_id,)
        ).fetchone()

    def create_fit(
        self, signature: str, config: dict[str, Any], models: list[tuple[str, dict[str, Any]]]
    ) -> int:
        """A new ``running`` fit with its first models ``pending``, in one transaction."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO fits(signature, config, status, created) VALUES (?,?,?,?)",
                (signature, json.dumps(config), FitStatus.RUNNING, time.time()),
            )
            fit_id = int(cur.lastrowid)  # type: ignore[arg-type]
            db.executemany(
                "INSERT INTO models(fit_id, model_id, hyperparams, status) VALUES (?,?,?,?)",
                [(fit_id, m, json.dumps(hp), ModelStatus.PENDING) for m, hp in models],
            )
        return fit_id

    def add_models(self, fit_id: int, models: list[tuple[str, dict[str, Any]]]) -> None:
        """Models a search asked for join the fit as ``pending`` (one transaction)."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO models(fit_id, model_id, hyperparams, status) VALUES (?,?,?,?)",
                [(fit_id, m, json.dumps(hp), ModelStatus.PENDING) for m, hp in models],
            )

    def fit_code(self, fit_id: int) -> str | None:
        """The fingerprint of the Minibatch spec code the fit was trained with (None for a
        catalog from before fits recorded it)."""
        code = json.loads(self.fit(fit_id)["config"]).get("code")
        return None if code is None else str(code)

    def set_fit_code(self, fit_id: int, code: str) -> None:
        """Record the fingerprint of the Minibatch spec code the fit trains with."""
        config = json.loads(self.fit(fit_id)["config"])
        config["code"] = code
        self.db.execute("UPDATE fits SET config=? WHERE fit_id=?", (json.dumps(config), fit_id))

    def done_hop_count(self, fit_id: int) -> int:
        """How many hops of the fit completed: 0 for a fit that trained nothing."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM hops WHERE fit_id=? AND status=?", (fit_id, HopStatus.DONE)
        ).fetchone()
        return int(row[0])

    def delete_fit(self, fit_id: int) -> None:
        """Remove a fit and every row that belongs to it (``reset``), in one transaction."""
        with self.transaction() as db:
            for table in (
                "fits",
                "models",
                "hops",
                "metrics",
                "checkpoints",
                "evaluations",
                "stopping",
                "parallelism",
            ):
                db.execute(f"DELETE FROM {table} WHERE fit_id=?", (fit_id,))

    def set_fit_status(self, fit_id: int, status: FitStatus) -> None:
        """Set a fit's status; an end status stamps ``finished``, except when the fit was
        already in it (a finished fit run again computes nothing, so it ended back then)."""
        finished = None if status == FitStatus.RUNNING else time.time()
        self.db.execute(
            "UPDATE fits SET finished = CASE WHEN status = ? AND finished IS NOT NULL "
            "THEN finished ELSE ? END, status = ? WHERE fit_id = ?",
            (status, finished, status, fit_id),
        )

    def models(self, fit_id: int) -> list[sqlite3.Row]:
        """The fit's models (id, hyperparameters, status, error, checkpoint), by model id."""
        return self.db.execute(
            "SELECT * FROM models WHERE fit_id=? ORDER BY model_id", (fit_id,)
        ).fetchall()

    def set_model_status(
        self, fit_id: int, model_id: str, status: ModelStatus, error: str | None = None
    ) -> None:
        """Set one model's status (and the error that ended it, if any)."""
        self.db.execute(
            "UPDATE models SET status=?, error=? WHERE fit_id=? AND model_id=?",
            (status, error, fit_id, model_id),
        )

    # --- hops ---------------------------------------------------------------------------------

    def hop_started(
        self, fit_id: int, model_id: str, epoch: int, kind: str, partition: int, worker: int
    ) -> int:
        """Record a hop sent to ``worker`` (``running``; its model leaves ``pending``)."""
        cur = self.db.execute(
            "INSERT INTO hops(fit_id, model_id, epoch, kind, partition, worker, start, status)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (fit_id, model_id, epoch, kind, partition, worker, time.time(), HopStatus.RUNNING),
        )
        self.db.execute(
            "UPDATE models SET status=? WHERE fit_id=? AND model_id=? AND status=?",
            (ModelStatus.RUNNING, fit_id, model_id, ModelStatus.PENDING),
        )
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def hop_done(self, hop_id: int, outcome: Any, checkpoint: str | None) -> None:
        """Record a finished hop and, for a train hop, the model's new checkpoint, at once."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT fit_id, model_id, kind FROM hops WHERE hop_id=?", (hop_id,)
            ).fetchone()
            db.execute(
                "UPDATE hops SET status=?, pid=?, start=?, end=?, rows=?, user_seconds=?,"
                " load_seconds=?, save_seconds=?, metrics=? WHERE hop_id=?",
                (
                    HopStatus.DONE,
                    outcome.pid,
                    outcome.start,
                    outcome.end,
                    outcome.rows,
                    outcome.user_seconds,
                    outcome.load_seconds,
                    outcome.save_seconds,
                    json.dumps({"values": outcome.metrics, "sizes": outcome.batch_sizes}),
                    hop_id,
                ),
            )
            if row["kind"] == "train" and checkpoint is not None:
                db.execute(
                    "UPDATE models SET checkpoint=?, train_hops=train_hops+1 "
                    "WHERE fit_id=? AND model_id=?",
                    (checkpoint, row["fit_id"], row["model_id"]),
                )
            if outcome.parallelism is not None:  # a train hop on several devices
                # the model's first such hop says how it trains; "auto"'s, which timed the
                # trials (NOTE [ choosing the parallelism ]), is the one that chose
                verb = "REPLACE" if outcome.trials is not None else "IGNORE"
                db.execute(
                    f"INSERT OR {verb} INTO parallelism SELECT fit_id, model_id, ?, ?, "
                    "worker, hop_id FROM hops WHERE hop_id=?",
                    (outcome.parallelism, json.dumps(outcome.trials or {}), hop_id),
                )

    def parallelism(self, fit_id: int) -> dict[str, dict[str, Any]]:
        """How each model that trained on a worker of several devices trains: ``{model_id:
        {"choice", "trials" (``parallelism="auto"``'s seconds per minibatch, or why not
        feasible; empty without trials), "worker"}}``."""
        try:
            rows = self.db.execute(
                "SELECT model_id, choice, trials, worker FROM parallelism WHERE fit_id=?",
                (fit_id,),
            ).fetchall()
        except sqlite3.OperationalError:  # read-only, from before the table existed
            return {}
        return {
            r["model_id"]: {
                "choice": r["choice"],
                "trials": json.loads(r["trials"]),
                "worker": r["worker"],
            }
            for r in rows
        }

    def hop_ended(self, hop_id: int, status: HopStatus, error: str | None = None) -> None:
        """Close a hop that did not complete: failed or diverged (the model's code) or lost
        (its worker died)."""
        self.db.execute(
            "UPDATE hops SET status=?, end=?, error=? WHERE hop_id=?",
            (status, time.time(), error, hop_id),
        )

    def abandon_running(self, fit_id: int) -> int:
        """Mark hops left 'running' by a dead driver as lost; returns how many."""
        cur = self.db.execute(
            "UPDATE hops SET status=?, error='driver stopped during the hop', "
            "end=COALESCE(end, start) WHERE fit_id=? AND status=?",
            (HopStatus.LOST, fit_id, HopStatus.RUNNING),
        )
        return cur.rowcount

    def done_hops(self, fit_id: int) -> list[sqlite3.Row]:
        """The fit's completed hops in the order they completed (what ``resume`` replays)."""
        return self.db.execute(
            "SELECT * FROM hops WHERE fit_id=? AND status=? ORDER BY hop_id",
            (fit_id, HopStatus.DONE),
        ).fetchall()

    def hops(self, fit_id: int) -> list[sqlite3.Row]:
        """Every hop of the fit, whatever its status, in the order started."""
        return self.db.execute(
            "SELECT * FROM hops WHERE fit_id=? ORDER BY hop_id", (fit_id,)
        ).fetchall()

    def epoch_metric_lists(
        self, fit_id: int, model_id: str, epoch: int, kind: str
    ) -> tuple[dict[str, list[float]], list[int]]:
        """This epoch's per-minibatch metrics of one model and kind, in hop order."""
        order = "hop_id" if kind == "train" else "partition"
        rows = self.db.execute(
            f"SELECT metrics FROM hops WHERE fit_id=? AND model_id=? AND epoch=? AND kind=? "
            f"AND status=? ORDER BY {order}",
            (fit_id, model_id, epoch, kind, HopStatus.DONE),
        ).fetchall()
        values: dict[str, list[float]] = {}
        sizes: list[int] = []
        for r in rows:
            m = json.loads(r["metrics"])
            for k, v in m["values"].items():
                values.setdefault(k, []).extend(v)
            sizes.extend(m["sizes"])
        return values, sizes

    # --- epoch metrics and checkpoints --------------------------------------------------------

    def epoch_done(
        self,
        fit_id: int,
        model_id: str,
        epoch: int,
        metrics: dict[str, dict[str, float]],
        checkpoint: str | None,
        stopping: StopRecord | None = None,
    ) -> None:
        """Store one epoch's aggregated metrics (``{split: {name: value}}``) and checkpoint,
        and what early stopping made of it, all at once."""
        with self.transaction() as db:
            if stopping is not None:
                self._write_stopping(db, fit_id, stopping)
            for split, values in metrics.items():
                db.executemany(
                    "INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?,?)",
                    [(fit_id, model_id, epoch, split, k, v) for k, v in values.items()],
                )
            if checkpoint is not None:
                db.execute(
                    "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?)",
                    (fit_id, model_id, epoch, checkpoint, time.time()),
                )

    def has_epoch_metrics(self, fit_id: int, model_id: str, epoch: int) -> bool:
        """Whether the model's aggregated metrics of ``epoch`` are stored."""
        row = self.db.execute(
            "SELECT 1 FROM metrics WHERE fit_id=? AND model_id=? AND epoch=? LIMIT 1",
            (fit_id, model_id, epoch),
        ).fetchone()
        return row is not None

    def metrics(self, fit_id: int) -> list[sqlite3.Row]:
        """The fit's aggregated per-epoch metrics, by model, epoch, split and name."""
        return self.db.execute(
            "SELECT * FROM metrics WHERE fit_id=? ORDER BY model_id, epoch, split, name", (fit_id,)
        ).fetchall()

    # --- early stopping -----------------------------------------------------------------------

    def record_stopping(self, fit_id: int, stopping: StopRecord) -> None:
        """Store calls to the fit's stopper and the decisions they led to, at once."""
        with self.transaction() as db:
            self._write_stopping(db, fit_id, stopping)

    def _write_stopping(self, db: sqlite3.Connection, fit_id: int, rec: StopRecord) -> None:
        for event, model_id, epoch, value, decision in rec.events:
            db.execute(
                "INSERT INTO stopping(fit_id, event, model_id, epoch, value, decision) "
                "VALUES (?,?,?,?,?,?)",
                (fit_id, event, model_id, epoch, value, decision),
            )
        for model_id, decision in rec.resolved:
            db.execute(
                "UPDATE stopping SET decision=? WHERE fit_id=? AND model_id=? AND "
                "event='report' AND decision='wait'",
                (decision, fit_id, model_id),
            )
        for model_id in rec.stopped:
            self.set_model_status(fit_id, model_id, ModelStatus.STOPPED)
        for model_id, status, error in rec.status:
            self.set_model_status(fit_id, model_id, status, error)

    def stopping_log(self, fit_id: int) -> list[sqlite3.Row]:
        """Every call to the fit's stopper, in the order made (NOTE [ stopping seam ])."""
        return self.db.execute(
            "SELECT * FROM stopping WHERE fit_id=? ORDER BY seq", (fit_id,)
        ).fetchall()

    def epoch_checkpoints(self, fit_id: int, model_id: str) -> list[sqlite3.Row]:
        """The checkpoints kept at the model's epoch ends, by epoch."""
        return self.db.execute(
            "SELECT * FROM checkpoints WHERE fit_id=? AND model_id=? ORDER BY epoch",
            (fit_id, model_id),
        ).fetchall()
