"""Test and predict with a trained model: one hop per partition, on the workers, in parallel."""

from __future__ import annotations

import copy
import csv
import io
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from cerebro._atomic import replacing, write_atomic
from cerebro.catalog import Catalog
from cerebro.engine import Engine, HopDone, HopFailed, WorkerLost
from cerebro.engine._process import Output
from cerebro.engine.messages import HopOutcome, HopTask
from cerebro.errors import ParamsError, SpecError, UserCodeError
from cerebro.etl._partitions import owner as etl_owner
from cerebro.spec import MinibatchMetrics, MinibatchSpec, defines_hook

__all__ = [
    "ACCEPTED_FORMATS",
    "EvalKind",
    "ModelFile",
    "ModelRef",
    "check_predict",
    "evaluate",
    "import_start",
    "need_batch_size",
    "read_model_file",
    "resolve_model",
    "with_components",
    "write_predictions",
]

EvalKind = Literal["test", "predict"]  # the hops run_test and run_predict send


class ModelRef:
    """A trained model to evaluate: its id, hyperparameters and checkpoint file.

    ``components`` holds the model itself when the file was in the original's format (the
    whole ``create_model_components`` dict): the workers then use those objects as they are
    (see :func:`with_components`), and ``checkpoint`` is only the file's name.
    """

    def __init__(
        self,
        tag: str,
        model_id: str,
        hyperparams: dict[str, Any],
        checkpoint: str,
        components: dict[str, Any] | None = None,
    ):
        self.tag, self.model_id, self.hyperparams, self.checkpoint = (
            tag,
            model_id,
            hyperparams,
            checkpoint,
        )
        self.components = components


# --- model files a user names: model_tag, models_dir/<model_id>.pt ---------------------------

ACCEPTED_FORMATS = (
    "a Cerebro checkpoint (as in DIR/models/<model_id>/), a dict of state dicts "
    "{component: module.state_dict()} with the keys create_model_components returns, or the "
    "original Cerebro's format: torch.save of the whole create_model_components dict (the "
    "module and optimizer objects themselves, with the key 'optimizer')"
)


class ModelFile:
    """A model file read on the driver: ``kind`` is ``"cerebro"`` (a checkpoint a worker
    wrote), ``"state_dicts"`` or ``"objects"`` (the original's format); ``content`` is
    what ``torch.load`` gave."""

    def __init__(self, path: Path, kind: str, content: dict[str, Any]):
        self.path, self.kind, self.content = path, kind, content


def read_model_file(path: Path, what: str) -> ModelFile:
    """Load and classify a model file the user named (``what``: where it was named).

    Loaded with ``weights_only=False``, as the original's whole-object files need: only
    files a user names, which the README's Trust section asks them to trust.

    Raises:
        ParamsError: the file cannot be loaded, or holds none of the accepted formats.
    """
    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ParamsError(
            f"{what} {path} could not be loaded with torch.load ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Accepted model files: "
            f"{ACCEPTED_FORMATS}."
        ) from e
    kind, why = _classify(content)
    if kind is None:
        raise ParamsError(
            f"{what} {path} is not a model file Cerebro can use: it holds {why}. Accepted "
            f"model files: {ACCEPTED_FORMATS}."
        )
    return ModelFile(path, kind, content)


def _classify(content: Any) -> tuple[str | None, str]:
    """The kind of a loaded model file, or None and a description of what it holds."""
    if not isinstance(content, Mapping):
        return None, f"a {type(content).__name__}"
    if not content:
        return None, "an empty dict"
    if isinstance(content.get("components"), Mapping):
        return "cerebro", ""
    values = list(content.values())
    if any(isinstance(v, torch.nn.Module | torch.optim.Optimizer) for v in values):
        if "optimizer" not in content:
            return None, (
                f"model objects without an optimizer (keys {sorted(map(str, content))}); "
                "create_model_components' dict has the key 'optimizer'"
            )
        return "objects", ""
    if all(isinstance(v, Mapping) for v in values):
        return "state_dicts", ""
    if all(isinstance(v, torch.Tensor) for v in values):
        return None, (
            "one module's state_dict (tensors by parameter name); save it under the name "
            "create_model_components gives the module: torch.save({'model': sd}, path)"
        )
    kinds = sorted({type(v).__name__ for v in values})
    return None, f"a dict of {', '.join(kinds)}"


def _state_of(objects: Mapping[str, Any]) -> dict[str, Any]:
    """The state dicts of the original's whole-object components (those that have one)."""
    return {
        k: v.state_dict()
        for k, v in objects.items()
        if hasattr(v, "state_dict") and hasattr(v, "load_state_dict")
    }


def import_start(path: Path, model_id: str, hyperparams: dict[str, Any], into: Path) -> str:
    """A starting point ``models_dir/<model_id>.pt`` as a checkpoint the workers load.

    Cerebro checkpoints and state-dict files are used as they are; a file in the original's
    format becomes a checkpoint of its components' state dicts, written atomically into
    ``into`` (the model's folder of the run), so that workers load one format and never
    unpickle the user's objects.

    Raises:
        ParamsError: the file is none of the accepted formats.
    """
    f = read_model_file(path, f"the starting point of model {model_id}:")
    if f.kind != "objects":
        return str(path)
    out = into / f"imported-{path.name}"
    state = {"model_id": model_id, "hyperparams": dict(hyperparams)}
    with replacing(out) as tmp:
        torch.save({**state, "components": _state_of(f.content)}, tmp)
    return str(out)


class SavedComponents:
    """``create_model_components`` of a model file in the original's format: the file's
    objects, whatever the hyperparameters (they were pickled with the spec, by value)."""

    def __init__(self, components: dict[str, Any]):
        self.components = components

    def __call__(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
        return dict(self.components)


def with_components(spec: MinibatchSpec, components: dict[str, Any]) -> MinibatchSpec:
    """A copy of ``spec`` whose ``create_model_components`` returns ``components``.

    NOTE [ original model files ]
    The original saved a model as the whole ``create_model_components`` dict, and its
    ``run_test`` used those objects: no hyperparameters were needed to rebuild the model.
    So for such a file the driver loads it once and sends its objects along with the spec;
    a hop then builds "fresh" from them (no checkpoint), and the workers never read the
    user's file or need their model classes importable.
    """
    out = copy.copy(spec)
    vars(out)["create_model_components"] = SavedComponents(components)
    return out


def resolve_model(
    catalog: Catalog, tag: str, best: Any, models_dir: Path | None = None
) -> ModelRef:
    """``"best"``, a model id of the latest fit, or a model file's path: absolute, relative to
    the working directory, or relative to params' ``models_dir``.

    A file that records no hyperparameters (all but Cerebro's checkpoints) gets those of
    the latest fit's model its name is (``m003.pt``), or none (only ``batch_size``).

    Raises:
        TypeError: ``tag`` is not a str.
        ParamsError: an unknown tag, a model with no checkpoint yet, a path that names two
            different files, or a file in none of the accepted formats.
    """
    if not isinstance(tag, str):
        raise TypeError(f"model_tag must be a str, got {type(tag).__name__} ({tag!r}).")
    fit = catalog.latest_fit()
    rows = {r["model_id"]: r for r in catalog.models(fit["fit_id"])} if fit is not None else {}
    if tag == "best":
        if fit is None:
            raise ParamsError(
                "model_tag='best' but this run directory has no fit yet; call run_fit first."
            )
        b = best(fit["fit_id"])
        return ModelRef("best", b["model_id"], b["hyperparams"], b["checkpoint"])
    if tag in rows:
        row = rows[tag]
        if row["checkpoint"] is None:
            raise ParamsError(
                f"model {tag} has no trained checkpoint (status {row['status']}); pick "
                "another model."
            )
        return ModelRef(tag, tag, json.loads(row["hyperparams"]), row["checkpoint"])
    path = _model_path(tag, models_dir)
    if path is None:
        where = f", or a path relative to models_dir {models_dir}" if models_dir else ""
        raise ParamsError(
            f"unknown model_tag {tag!r}: use 'best', a model id of the latest fit "
            f"({', '.join(rows) or 'none yet'}), or the path of a model file{where}."
        )
    f = read_model_file(path, f"model_tag {tag!r}:")
    if f.kind == "cerebro" and "hyperparams" in f.content:
        model_id = str(f.content.get("model_id", path.stem))
        return ModelRef(path.stem, model_id, dict(f.content["hyperparams"]), str(path))
    named = rows.get(path.stem)
    hyperparams = json.loads(named["hyperparams"]) if named is not None else {}
    components = f.content if f.kind == "objects" else None
    return ModelRef(path.stem, path.stem, hyperparams, str(path), components)


def _model_path(tag: str, models_dir: Path | None) -> Path | None:
    """The file ``tag`` names, if any; a relative path is tried in the working directory
    and in ``models_dir``, and must not name two different files."""
    here = Path(tag).expanduser()
    found = [p for p in (here, models_dir / here if models_dir else None) if p and p.is_file()]
    if len(found) == 2 and not found[0].samefile(found[1]):
        raise ParamsError(
            f"model_tag {tag!r} names two files: {found[0].resolve()} (from the working "
            f"directory) and {found[1]} (in models_dir); give the one you mean as an "
            "absolute path."
        )
    return found[0].resolve() if found else None


def check_predict(spec: MinibatchSpec) -> None:
    """``run_predict`` needs the optional ``predict`` hook: checked on the driver before any
    worker starts, rather than as a worker's ``NotImplementedError``.

    Raises:
        SpecError: the spec's class does not define ``predict``.
    """
    if not defines_hook(spec, "predict"):
        name = type(spec).__name__
        raise SpecError(
            f"{name} has no predict hook, which run_predict calls once per minibatch of the "
            f"predict split: define predict(self, model_object, minibatch, hyperparams, "
            f"device) in {name}, returning (classes, confidences), one of each per row."
        )


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ParamsError(f"batch_size must be a positive int, got {batch_size!r}.")


def need_batch_size(ref: ModelRef, batch_size: int | None, step: str) -> None:
    """A model file without hyperparameters has no ``batch_size``: the call must give one.

    Raises:
        ParamsError: naming the file and the call to make.
    """
    if batch_size is None and "batch_size" not in ref.hyperparams:
        raise ParamsError(
            f"model file {ref.checkpoint} records no hyperparameters, so {step} needs the "
            f"batch size: {step}(spec, {ref.checkpoint!r}, batch_size=64), for instance."
        )


def evaluate(
    engine: Engine,
    ref: ModelRef,
    kind: EvalKind,
    partitions: list[int],
    batch_size: int | None,
) -> list[HopOutcome]:
    """Run a ``test`` or ``predict`` hop on every partition; outcomes in partition order."""
    hp = dict(ref.hyperparams)
    if batch_size is not None:
        hp["batch_size"] = batch_size
    pending = list(partitions)
    idle = list(range(engine.workers))
    outcomes: dict[int, HopOutcome] = {}
    owner = {p: etl_owner(p, engine.workers) for p in partitions}
    busy: dict[int, int] = {}
    while pending or busy:
        for p in [p for p in pending if owner[p] in idle]:
            idle.remove(owner[p])
            pending.remove(p)
            busy[owner[p]] = p
            # NOTE [ original model files ]: the components travel with the spec instead
            ckpt = ref.checkpoint if ref.components is None else None
            task = HopTask(
                model_id=ref.model_id, hyperparams=hp, kind=kind, partition=p, epoch=0,
                in_ckpt=ckpt, out_ckpt=None, init_seed=0, shuffle_seed=0,
            )  # fmt: skip
            engine.submit(owner[p], task)
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


def aggregate(
    spec: MinibatchSpec, ref: ModelRef, outcomes: list[HopOutcome], *, quiet: bool = False
) -> dict[str, float]:
    """The test metrics: the user's ``metrics_agg`` over every worker's minibatches, its
    prints shown as ``[driver · <model>]`` as in a fit (none when ``quiet``)."""
    values: dict[str, list[float]] = {}
    sizes: list[int] = []
    for o in outcomes:
        for k, v in o.metrics.items():
            values.setdefault(k, []).extend(v)
        sizes.extend(o.batch_sizes)
    try:
        with Output(quiet).capture(f"[driver · {ref.model_id}]"):
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
    return write_atomic(path, buf.getvalue())


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
