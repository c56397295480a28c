"""Running one fit: a scheduler and an engine, started from what the catalog has.

``Experiment.run_fit`` checks the arguments, ``_fit_step.run_fit_step`` finds or creates the
fit in the catalog; :func:`run_fit_loop` then replays the catalog (resume), runs the probe
minibatch, and hops until every model is done.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cerebro import _live
from cerebro._controller import replay, run_loop
from cerebro._evaluate import import_start
from cerebro._fit_state import FitState
from cerebro._settings import FitSettings
from cerebro.catalog import Catalog
from cerebro.engine import Engine, EngineEvent
from cerebro.engine.messages import HopTask
from cerebro.errors import ParamsError, UserCodeError
from cerebro.etl._partitions import owner
from cerebro.params import ModelConfig, ask_order
from cerebro.scheduler import Scheduler
from cerebro.spec import MinibatchSpec
from cerebro.statuses import FitStatus

__all__ = ["run_fit_loop"]


def run_fit_loop(
    catalog: Catalog,
    fit_id: int,
    spec: MinibatchSpec,
    manifest: dict[str, Any],
    settings: FitSettings,
    *,
    workers: int,
    models_dir: Path,
    start_dir: Path | None,
    search_dir: Path,
    make_engine: Callable[[list[dict[str, list[int]]]], Engine],
    verbose: bool,
) -> None:
    """Run (or resume) fit ``fit_id`` to its end: replay the catalog, probe, run every hop.

    The fit's models come from its search (``settings.make_search``; the grid asks for all
    of them at once): those the catalog holds are replayed, the search is told their ends,
    and it is asked for more while hops run. ``start_dir`` is params' ``models_dir``
    (pre-trained starting points).
    """
    w = workers
    splits = manifest["splits"]
    train_owner = {p: owner(p, w) for p, n in enumerate(splits["train"]["sizes"])}
    val_owner = (
        {p: owner(p, w) for p, n in enumerate(splits["val"]["sizes"]) if n > 0}
        if "val" in splits
        else {}
    )
    rows = sorted(catalog.models(fit_id), key=lambda r: ask_order(r["model_id"]))
    configs = [ModelConfig(r["model_id"], json.loads(r["hyperparams"])) for r in rows]
    sched = Scheduler(
        [c.model_id for c in configs],
        num_epochs=settings.num_epochs,
        train_owner=train_owner,
        val_owner=val_owner,
        policy=settings.policy,
        seed=settings.seed,
        walk=json.loads(catalog.fit(fit_id)["config"]).get("walk", "workers"),
    )
    state = FitState(
        fit_id,
        spec,
        {c.model_id: c for c in configs},
        models_dir,
        settings.seed,
        settings.num_epochs,
        settings.on_error,
        objective=settings.objective,
        mode=settings.mode,
        planned=None if settings.search == "grid" else settings.planned_models(),
        stopper=settings.make_stopper(search_dir),
        threads=settings.threads_per_hop,
        deterministic=settings.deterministic,
        parallelism=settings.parallelism_rule(search_dir),
        # "auto"'s choices (those that timed trials); a fixed setting may have changed
        chosen={m: c["choice"] for m, c in catalog.parallelism(fit_id).items() if c["trials"]},
    )
    per_model = settings.num_epochs * (len(train_owner) + len(val_owner))
    state.total_hops = settings.planned_models() * per_model
    replay(catalog, state, sched)
    search = settings.make_search(search_dir, w)
    state.search = search
    _live.restore(catalog, state, search)
    _live.add_models(catalog, state, sched, search)
    if start_dir is not None:
        # Pre-trained starting points, as the original's models_dir: <model_id>.pt, checked
        # here (a bad file is one error before any work) and, in the original's whole-object
        # format, turned into a checkpoint in the run (see import_start).
        for model_id, ckpt in state.checkpoint.items():
            start = start_dir / f"{model_id}.pt"
            if ckpt is None and start.is_file():
                hp = state.configs[model_id].hyperparams
                path = import_start(start, model_id, hp, models_dir / model_id)
                state.checkpoint[model_id] = path
                if path == str(start):
                    state.keep.add(path)  # the user's file: never cleaned up as a step
    if sched.done:
        catalog.set_fit_status(fit_id, FitStatus.DONE)
        return
    owned: list[dict[str, list[int]]] = [{} for _ in range(w)]
    for split, owners in (("train", train_owner), ("val", val_owner)):
        for p, worker in owners.items():
            owned[worker].setdefault(split, []).append(p)
    engine = make_engine(owned)
    done = sched.total_hops() - sched.remaining_hops() - state.skipped
    progress = _bar(state.total_hops - state.skipped, done, verbose)
    try:
        first = next(iter(state.configs.values()))
        _probe(engine, first, train_owner, val_owner, settings.objective)
        run_loop(catalog, state, sched, engine, progress, search)
    except BaseException:
        catalog.set_fit_status(fit_id, FitStatus.STOPPED)
        progress.leave = False  # cleared, not left with a newline: the error follows directly
        raise
    finally:
        progress.close()
        engine.shutdown()
    catalog.set_fit_status(fit_id, FitStatus.DONE)


def _probe(
    engine: Engine,
    config: ModelConfig,
    train_owner: dict[int, int],
    val_owner: dict[int, int],
    objective: str | None,
) -> None:
    """Before training: run the first config on one minibatch, and check the objective.

    A broken spec (no optimizer, ``train`` returning a list...) fails here in a second,
    naming the function, instead of once per model after the workers have spent time.
    """
    p = next(p for p, w in sorted(train_owner.items()) if w == 0)
    probe = HopTask(
        model_id=config.model_id, hyperparams=config.hyperparams, kind="probe", partition=p,
        epoch=0, in_ckpt=None, out_ckpt=None, init_seed=0, shuffle_seed=0,
    )  # fmt: skip
    engine.submit(0, probe)
    events: list[EngineEvent] = []
    while not events:
        events = engine.poll(timeout=1.0)
    event = events[0]
    failure = getattr(event, "failure", None)
    if failure is not None:
        raise UserCodeError(
            f"{failure.message} (checked on one minibatch before training)",
            function=failure.function,
            where=f"model {config.model_id} {json.dumps(config.hyperparams)}",
            user_traceback=failure.traceback,
        )
    outcome = getattr(event, "outcome", None)
    if outcome is None:
        return  # the worker died: the fit itself will retry and report it
    names = set(outcome.metrics)
    if 0 not in val_owner.values():  # worker 0 holds no val partition: names unknown
        names |= {"val_" + n.removeprefix("train_") for n in list(names)}
    if objective is not None and objective not in names:
        raise ParamsError(
            f"objective {objective!r} is not a metric this spec returns; choose one of "
            f"{', '.join(sorted(names))} (split prefix + the key your train/valtest return)."
        )


def _bar(total: int, done: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="MOP hops", unit="hop", disable=not enabled)
