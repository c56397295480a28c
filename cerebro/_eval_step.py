"""The test and predict steps of an ``Experiment``: their refusals, the model a tag names,
and its evaluation on the workers that hold the split (the hops are in ``_evaluate``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from cerebro import etl
from cerebro._evaluate import (
    EvalKind,
    ModelRef,
    check_batch_size,
    check_predict,
    evaluate,
    need_batch_size,
    record_test,
    resolve_model,
    with_components,
)
from cerebro._preflight import check_picklable
from cerebro.catalog import Catalog
from cerebro.engine import Engine
from cerebro.engine.messages import HopOutcome
from cerebro.errors import ParamsError
from cerebro.etl import owner
from cerebro.result import FitResult
from cerebro.spec import MinibatchSpec, check_spec

__all__ = ["EvalData", "check_eval", "eval_data", "find_model", "record_test_metrics", "run_eval"]


class EvalData(NamedTuple):
    """The split a step evaluates: its non-empty partitions and which worker holds each."""

    kind: EvalKind
    parts: list[int]
    owned: list[dict[str, list[int]]]


def check_eval(spec: MinibatchSpec, kind: EvalKind, batch_size: int | None) -> None:
    """Refuse ``run_test``/``run_predict`` arguments (``kind``: test or predict) before work."""
    check_batch_size(batch_size)
    check_spec(spec, MinibatchSpec)
    if kind == "predict":
        check_predict(spec)
    check_picklable(spec)


def eval_data(data_dir: Path, kind: EvalKind, workers: int) -> EvalData:
    """The preprocessed ``kind`` split in ``data_dir``, shared among at most ``workers``."""
    manifest = etl.load_manifest(data_dir)
    if manifest is None or kind not in manifest["splits"]:
        raise ParamsError(
            f"no preprocessed {kind} data in {data_dir}: give "
            f"params['{kind}_main'] and run run_etl first."
        )
    sizes = manifest["splits"][kind]["sizes"]
    parts = [p for p, n in enumerate(sizes) if n > 0]
    w = min(workers, len(sizes))
    owned: list[dict[str, list[int]]] = [{} for _ in range(w)]
    for p in parts:
        owned[owner(p, w)].setdefault(kind, []).append(p)
    return EvalData(kind, parts, owned)


def find_model(catalog_path: Path, model_tag: str, models_dir: Path | None) -> ModelRef:
    """The model ``model_tag`` names: ``"best"``, a model id of the catalog, or a file."""

    def best(fit_id: int) -> dict[str, Any]:
        return FitResult(catalog_path, fit_id).best

    catalog = Catalog(catalog_path)
    try:
        return resolve_model(catalog, model_tag, best, models_dir)
    finally:
        catalog.close()


def run_eval(
    ref: ModelRef,
    spec: MinibatchSpec,
    data: EvalData,
    batch_size: int | None,
    make_engine: Callable[[MinibatchSpec, list[dict[str, list[int]]]], Engine],
) -> list[HopOutcome]:
    """Evaluate ``ref`` on every partition of ``data``, on workers ``make_engine`` starts."""
    need_batch_size(ref, batch_size, f"run_{data.kind}")
    if ref.components is not None:  # NOTE [ original model files ]
        spec = with_components(spec, ref.components)
    engine = make_engine(spec, data.owned)
    try:
        return evaluate(engine, ref, data.kind, data.parts, batch_size)
    finally:
        engine.shutdown()


def record_test_metrics(catalog_path: Path, ref: ModelRef, metrics: dict[str, float]) -> None:
    """Store ``ref``'s test metrics in the catalog."""
    catalog = Catalog(catalog_path)
    try:
        record_test(catalog, ref, metrics)
    finally:
        catalog.close()
