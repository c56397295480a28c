"""Test and predict with a trained model: one hop per partition, on the workers, in parallel."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from cerebro.catalog import Catalog
from cerebro.engine import Engine, HopDone, HopFailed, WorkerLost
from cerebro.errors import ParamsError, UserCodeError
from cerebro.spec import MinibatchMetrics, MinibatchSpec
from cerebro.worker import HopOutcome, HopTask

__all__ = ["ModelRef", "evaluate", "resolve_model", "write_predictions"]


class ModelRef:
    """A trained model to evaluate: its id, hyperparameters and checkpoint file."""

    def __init__(self, tag: str, model_id: str, hyperparams: dict[str, Any], checkpoint: str):
        self.tag, self.model_id, self.hyperparams, self.checkpoint = (
            tag,
            model_id,
            hyperparams,
            checkpoint,
        )


def resolve_model(catalog: Catalog, tag: str, best: Any) -> ModelRef:
    """``"best"``, a model id of the latest fit, or a checkpoint file path.

    Raises:
        ParamsError: an unknown tag, a model with no checkpoint yet, or an unreadable file.
    """
    if not isinstance(tag, str):
        raise TypeError(f"model_tag must be a str, got {type(tag).__name__} ({tag!r}).")
    fit = catalog.latest_fit()
    if tag == "best":
        if fit is None:
            raise ParamsError(
                "model_tag='best' but this run directory has no fit yet; call run_fit first."
            )
        b = best(fit["fit_id"])
        return ModelRef("best", b["model_id"], b["hyperparams"], b["checkpoint"])
    if fit is not None:
        for row in catalog.models(fit["fit_id"]):
            if row["model_id"] == tag:
                if row["checkpoint"] is None:
                    raise ParamsError(
                        f"model {tag} has no trained checkpoint (status "
                        f"{row['status']}); pick another model."
                    )
                return ModelRef(tag, tag, json.loads(row["hyperparams"]), row["checkpoint"])
    path = Path(tag)
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            return ModelRef(path.stem, state["model_id"], state["hyperparams"], str(path))
        except Exception as e:
            raise ParamsError(
                f"model_tag {tag!r} is a file but not a Cerebro checkpoint: "
                f"{type(e).__name__}: {e}"
            ) from e
    ids = [r["model_id"] for r in catalog.models(fit["fit_id"])] if fit is not None else []
    raise ParamsError(
        f"unknown model_tag {tag!r}: use 'best', a model id of the latest fit "
        f"({', '.join(ids) or 'none yet'}), or the path of a checkpoint file."
    )


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ParamsError(f"batch_size must be a positive int, got {batch_size!r}.")


def evaluate(
    engine: Engine, ref: ModelRef, kind: str, partitions: list[int], batch_size: int | None
) -> list[HopOutcome]:
    """Run a ``test`` or ``predict`` hop on every partition; outcomes in partition order."""
    hp = dict(ref.hyperparams)
    if batch_size is not None:
        hp["batch_size"] = batch_size
    pending = list(partitions)
    idle = list(range(engine.workers))
    outcomes: dict[int, HopOutcome] = {}
    owner = {p: p % engine.workers for p in partitions}
    busy: dict[int, int] = {}
    while pending or busy:
        for p in [p for p in pending if owner[p] in idle]:
            idle.remove(owner[p])
            pending.remove(p)
            busy[owner[p]] = p
            engine.submit(
                owner[p], HopTask(ref.model_id, hp, kind, p, 0, ref.checkpoint, None, 0, 0)
            )
        for event in engine.poll(timeout=1.0):
            p = busy.pop(event.worker)
            idle.append(event.worker)
            if isinstance(event, WorkerLost):
                pending.append(p)
            elif isinstance(event, HopFailed):
                f = event.failure
                raise UserCodeError(
                    f.message,
                    function=f.function,
                    where=f"model {ref.model_id} {json.dumps(hp)}, {kind} partition {p}",
                    user_traceback=f.traceback,
                )
            elif isinstance(event, HopDone):
                outcomes[p] = event.outcome
    return [outcomes[p] for p in sorted(outcomes)]


def aggregate(spec: MinibatchSpec, ref: ModelRef, outcomes: list[HopOutcome]) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    sizes: list[int] = []
    for o in outcomes:
        for k, v in o.metrics.items():
            values.setdefault(k, []).extend(v)
        sizes.extend(o.batch_sizes)
    try:
        agg = spec.metrics_agg("test", dict(ref.hyperparams), MinibatchMetrics(values, sizes))
        return {f"test_{k}": float(v) for k, v in dict(agg).items()}
    except Exception as e:
        raise UserCodeError(
            f"{type(e).__name__}: {e}",
            function=f"{type(spec).__name__}.metrics_agg",
            where=f"model {ref.model_id}, mode 'test'",
        ) from e


def write_predictions(path: Path, outcomes: list[HopOutcome]) -> Path:
    """``row_id, output_class, confidence``, one row per predict row, by row id; atomic."""
    rows = sorted(r for o in outcomes for r in (o.predictions or []))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row_id", "output_class", "confidence"])
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)
    return path


def record_test(catalog: Catalog, ref: ModelRef, metrics: dict[str, float]) -> None:
    fit = catalog.latest_fit()
    with catalog.transaction() as db:
        db.executemany(
            "INSERT INTO evaluations VALUES (?,?,?,?,?,?,?,?)",
            [
                (
                    fit["fit_id"] if fit is not None else None,
                    ref.model_id,
                    ref.tag,
                    "test",
                    k.removeprefix("test_"),
                    v,
                    ref.checkpoint,
                    time.time(),
                )
                for k, v in metrics.items()
            ],
        )
