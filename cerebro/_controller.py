"""The fit loop: the scheduler decides, the engine runs, the catalog remembers.

NOTE [ resume is replay ]
The controller keeps no state the catalog lacks. On start it replays the catalog's done
hops into a fresh scheduler (in the order they completed), drops failed models, marks hops
a dead driver left "running" as lost, and goes on. So a fit killed at any moment and
started again runs each remaining hop once and no completed hop twice.
"""

from __future__ import annotations

import json
import os
import traceback
from typing import Any, cast

from cerebro import _early_stopping, _live, _ranking
from cerebro._bar import step
from cerebro._fit_state import FitState, derive_seed
from cerebro._settings import PARALLELISM
from cerebro.catalog import Catalog, StopRecord
from cerebro.engine import Engine, EngineEvent, HopDone, HopFailed, WorkerLost
from cerebro.engine._process import Output
from cerebro.engine.messages import HopTask, Parallelism, UserFailure
from cerebro.errors import CerebroError, UserCodeError
from cerebro.scheduler import EpochEnd, Hop, HopKind, Scheduler
from cerebro.search import Search
from cerebro.spec import MinibatchMetrics
from cerebro.statuses import DROPPED, HopStatus, ModelStatus

__all__ = ["replay", "run_loop"]


def replay(catalog: Catalog, state: FitState, sched: Scheduler) -> int:
    """Bring a fresh scheduler to where the catalog says the fit is; returns hops replayed."""
    catalog.abandon_running(state.fit_id)
    if state.stopper is not None:
        _early_stopping.restore(catalog, state)
    for row in catalog.models(state.fit_id):
        state.checkpoint[row["model_id"]] = row["checkpoint"]
        state.train_hops[row["model_id"]] = row["train_hops"]
        for ck in catalog.epoch_checkpoints(state.fit_id, row["model_id"]):
            state.keep.add(ck["path"])
    n = 0
    dropped = {row["model_id"] for row in catalog.models(state.fit_id) if row["status"] in DROPPED}
    for row in catalog.done_hops(state.fit_id):
        if row["model_id"] in dropped:
            continue
        hop = Hop(row["model_id"], row["epoch"], row["kind"], row["partition"])
        for end in sched.replay(hop):
            _finish_epoch(catalog, state, sched, end, only_if_missing=True)
        n += 1
    for model_id in dropped:
        sched.drop_model(model_id)
    _replay_best(catalog, state)
    if state.stopper is not None:
        _early_stopping.settle(catalog, state, sched)
    return n


def _replay_best(catalog: Catalog, state: FitState) -> None:
    """The best of the whole fit so far, from every epoch the catalog holds (a resumed
    fit's progress bar shows it, not only this session's), ranked as ``FitResult`` does."""
    metrics = [dict(r) for r in catalog.metrics(state.fit_id)]
    if state.objective is None and metrics:
        state.objective = _ranking.default_objective(
            {f"{m['split']}_{m['name']}" for m in metrics}
        )
    if state.objective is not None:
        ranked = _ranking.rank(metrics, state.objective, state.mode)
        state.model_best = {b.model_id: b for b in ranked}
        state.rerank()


def _task(state: FitState, hop: Hop) -> HopTask:
    cfg = state.configs[hop.model_id]
    index = state.index[hop.model_id]
    out = None
    if hop.kind == "train":
        step = state.train_hops[hop.model_id] + 1
        out = str(state.models_dir / hop.model_id / f"step-{step:05d}.pt")
    return HopTask(
        model_id=hop.model_id,
        hyperparams=cfg.hyperparams,
        kind=hop.kind,
        partition=hop.partition,
        epoch=hop.epoch,
        in_ckpt=state.checkpoint[hop.model_id],
        out_ckpt=out,
        init_seed=derive_seed(state.seed, "init", index),
        shuffle_seed=derive_seed(state.seed, "shuffle", index, hop.epoch, hop.partition),
        threads=state.threads,
        deterministic=state.deterministic,
        parallelism=_parallelism(state, hop),
    )


def _parallelism(state: FitState, hop: Hop) -> Parallelism:
    """How a train hop uses a several-device worker: the fit's setting, what the fit's
    function says for this model's hyperparameters, or under "auto" the model's choice
    once its first such hop made it (NOTE [ choosing the parallelism ])."""
    if hop.kind != "train":
        return "ddp"  # (an evaluation shares each minibatch's rows, whatever the model's)
    model_id = hop.model_id
    if model_id in state.chosen:
        return cast(Parallelism, state.chosen[model_id])
    rule = state.parallelism
    if not callable(rule):
        return cast(Parallelism, rule)
    name = getattr(rule, "__qualname__", type(rule).__name__)
    try:
        with Output(state.quiet).capture(f"[driver · {model_id}]"):
            mode = rule(dict(state.configs[model_id].hyperparams))
    except Exception as e:
        raise UserCodeError(
            f"{type(e).__name__}: {e}",
            function=f"parallelism ({name})",
            where=_where(state, model_id),
            user_traceback=traceback.format_exc(),
        ) from e
    if mode not in PARALLELISM:
        raise UserCodeError(
            f"returned {mode!r}; it must return one of {PARALLELISM} for each model",
            function=f"parallelism ({name})",
            where=_where(state, model_id),
        )
    state.chosen[model_id] = mode  # asked once per model ("auto": until its trials)
    return cast(Parallelism, mode)


def _where(state: FitState, model_id: str) -> str:
    return f"model {model_id} {json.dumps(state.configs[model_id].hyperparams)}"


def _finish_epoch(
    catalog: Catalog,
    state: FitState,
    sched: Scheduler,
    end: EpochEnd,
    only_if_missing: bool = False,
    progress: Any = None,
) -> None:
    """Aggregate one model's epoch with the user's ``metrics_agg`` and store it."""
    last = end.epoch == state.num_epochs - 1
    if only_if_missing and catalog.has_epoch_metrics(state.fit_id, end.model_id, end.epoch):
        # A kill can land between storing the last epoch and marking the model done.
        if last:
            catalog.set_model_status(state.fit_id, end.model_id, ModelStatus.DONE)
        return
    hp = dict(state.configs[end.model_id].hyperparams)
    result: dict[str, dict[str, float]] = {}
    for kind in ("train", "val"):
        values, sizes = catalog.epoch_metric_lists(state.fit_id, end.model_id, end.epoch, kind)
        if not sizes:
            continue
        try:
            with Output(state.quiet).capture(f"[driver · {end.model_id}]"):
                agg = state.spec.metrics_agg(kind, hp, MinibatchMetrics(values, sizes))
            result[kind] = {str(k): float(v) for k, v in dict(agg).items()}
        except Exception as e:
            raise UserCodeError(
                f"{type(e).__name__}: {e} (it must return {{name: float}})",
                function=f"{type(state.spec).__name__}.metrics_agg",
                where=f"{_where(state, end.model_id)}, epoch {end.epoch + 1}, mode {kind!r}",
                user_traceback=traceback.format_exc(),
            ) from e
    if state.objective is None and result:
        state.objective = _ranking.default_objective(
            f"{split}_{name}" for split, values in result.items() for name in values
        )
    if state.objective is not None:
        rows = [
            {"model_id": end.model_id, "epoch": end.epoch, "split": k, "name": n, "value": v}
            for k, values in result.items()
            for n, v in values.items()
        ]
        for b in _ranking.rank(rows, state.objective, state.mode):
            if _ranking.better(b, state.best, state.mode):
                state.best = b
            if _ranking.better(b, state.model_best.get(b.model_id), state.mode):
                state.model_best[b.model_id] = b
    ck = state.checkpoint[end.model_id]
    if ck is not None:
        state.keep.add(ck)
    rec = None
    if state.stopper is not None:
        rec = _early_stopping.epoch(state, end.model_id, end.epoch, result, last)
    catalog.epoch_done(state.fit_id, end.model_id, end.epoch, result, ck, rec)
    if state.search is not None and state.objective is not None:
        split, _, name = state.objective.partition("_")
        if name in result.get(split, {}):
            state.search.report(end.model_id, end.epoch + 1, result[split][name])
    if last:
        catalog.set_model_status(state.fit_id, end.model_id, ModelStatus.DONE)
        state.ended.append((end.model_id, ModelStatus.DONE))
    if rec is not None:
        _early_stopping.apply(state, sched, rec, progress)


def _fail_model(
    catalog: Catalog,
    state: FitState,
    sched: Scheduler,
    model_id: str,
    status: ModelStatus,
    message: str,
) -> None:
    rec: StopRecord | None = None
    if state.stopper is not None:
        rec = _early_stopping.end(state, model_id, status, message)
        catalog.record_stopping(state.fit_id, rec)
    else:
        catalog.set_model_status(state.fit_id, model_id, status, message)
    sched.drop_model(model_id)
    state.failures.append(message)
    state.ended.append((model_id, status))
    if rec is not None:
        _early_stopping.apply(state, sched, rec, state.progress)


# A model whose hop killed its worker process this many times is failed, not retried forever.
MAX_MODEL_DEATHS = 2


def run_loop(
    catalog: Catalog,
    state: FitState,
    sched: Scheduler,
    engine: Engine,
    progress: Any,
    search: Search | None = None,
) -> None:
    """Run hops until the scheduler is done. Raises only when ``on_error="stop"``.

    With a ``search``, each model's end is told to it and new models are asked for as
    room frees up (NOTE [ search seam ]), before the next hops are assigned, so a worker
    that a finished model freed gets the new model at once.

    NOTE [ submit before recording ]
    A worker waits from the moment its hop ends until its next task arrives, so each round
    first frees the models of plainly finished hops in the scheduler (no I/O), starts the
    next hops, and only then writes the finished hops to the catalog and deletes the
    checkpoints they superseded. Crash-safe: a hop counts as done only once the catalog has
    it, so a driver killed in between re-runs it on resume; the file it wrote is then
    simply written again. A hop that ends its model's epoch, fails or diverges is recorded
    before anything else starts, since ``metrics_agg`` reads the epoch from the catalog and
    may fail the model.

    Each busy worker is also sent its next hop in advance where the scheduler knows it
    (NOTE [ Next hops ] in the scheduler), so it need not wait for this loop at all. The
    engine runs a worker's hops in order and reports them in order; a queued hop's result
    is handled only after the one before it (it is not "plainly done" until then).
    """
    state.quiet = bool(getattr(progress, "disable", False))
    state.progress = progress
    hop_ids: dict[Hop, int] = {}
    events: list[EngineEvent] = []
    while True:
        finished: list[tuple[HopDone, str | None]] = []
        other: list[EngineEvent] = []
        for event in events:
            if isinstance(event, HopDone) and _plainly_done(event, sched):
                ends, old = _take(state, sched, event)
                assert not ends
                finished.append((event, old))
            else:
                other.append(event)
        try:
            for event in other:
                _record_event(catalog, state, sched, hop_ids, event, progress)
            if search is not None and (state.ended or state.freed):
                _live.refresh(catalog, state, sched, search)
            assigned = [] if sched.done else sched.assign() + sched.assign_next()
            for a in assigned:
                engine.submit(a.worker, _task(state, a.hop))
        finally:  # even when a failure stops the fit: a finished hop is never lost
            _record_done(catalog, state, sched, hop_ids, finished, progress)
        if sched.done:
            break
        for a in assigned:
            hop_ids[a.hop] = catalog.hop_started(
                state.fit_id, a.hop.model_id, a.hop.epoch, a.hop.kind, a.hop.partition, a.worker
            )
        if not sched.running:
            if sched.paused:
                raise _early_stopping.stuck(sched)
            break  # nothing runs and nothing can start: every model left was dropped
        events = engine.poll(timeout=1.0)


def _hop(event: EngineEvent) -> Hop:
    t = event.task
    return Hop(t.model_id, t.epoch, cast(HopKind, t.kind), t.partition)  # fit hops: train, val


def _plainly_done(event: HopDone, sched: Scheduler) -> bool:
    """A finished, finite hop that does not end its model's epoch (most hops), and no
    longer waits behind another hop in the scheduler."""
    if event.outcome.nonfinite is not None:
        return False
    hop = _hop(event)
    return sched.is_running(hop) and not sched.ends_epoch(hop)


def _take(state: FitState, sched: Scheduler, event: HopDone) -> tuple[list[EpochEnd], str | None]:
    """A finished hop, in memory (no I/O): the model's new checkpoint and the scheduler's
    step. Returns the epochs it ended and the checkpoint it superseded (for ``_store``).

    The one path of every finished hop: a plainly done one is taken at once and stored
    after the next hops start (NOTE [ submit before recording ]), any other is stored
    right away, before its epoch is aggregated."""
    hop = _hop(event)
    old = None
    new = event.task.out_ckpt
    if event.outcome.trials is not None and event.outcome.parallelism is not None:
        state.chosen[hop.model_id] = event.outcome.parallelism  # (_store records it)
    if new is not None:
        old = state.checkpoint[hop.model_id]
        state.checkpoint[hop.model_id] = new
        state.train_hops[hop.model_id] += 1
    return sched.complete(hop), old


def _store(
    catalog: Catalog, state: FitState, hop_id: int, event: HopDone, old: str | None
) -> None:
    """Record a taken hop in the catalog, then delete the checkpoint it superseded (after:
    until the catalog has the hop, resume restarts from the old one)."""
    catalog.hop_done(hop_id, event.outcome, event.task.out_ckpt)
    if old is not None and old not in state.keep:
        try:
            os.unlink(old)
        except FileNotFoundError:
            pass


def _record_done(
    catalog: Catalog,
    state: FitState,
    sched: Scheduler,
    hop_ids: dict[Hop, int],
    finished: list[tuple[HopDone, str | None]],
    progress: Any,
) -> None:
    for event, old in finished:
        _store(catalog, state, hop_ids.pop(_hop(event)), event, old)
        step(state, sched, progress)


def _record_event(
    catalog: Catalog,
    state: FitState,
    sched: Scheduler,
    hop_ids: dict[Hop, int],
    event: EngineEvent,
    progress: Any,
) -> None:
    """Record a hop that failed, was lost, diverged or ended its model's epoch."""
    hop = _hop(event)
    hop_id = hop_ids.pop(hop)
    if isinstance(event, WorkerLost):
        catalog.hop_ended(hop_id, HopStatus.LOST, event.reason)
        sched.requeue(hop)
        if not event.started:
            return  # it was queued behind the hop that was running: not its fault
        # Blame the model only when the same hop kills its worker again: a kill from
        # outside (OOM killer, an operator) rarely hits one hop twice.
        state.deaths[hop] = state.deaths.get(hop, 0) + 1
        if state.deaths[hop] >= MAX_MODEL_DEATHS:
            _fail_model(
                catalog,
                state,
                sched,
                hop.model_id,
                ModelStatus.FAILED,
                f"{_where(state, hop.model_id)}: its hop killed the worker "
                f"process {MAX_MODEL_DEATHS} times ({event.reason}); the "
                "model's code likely crashes natively or runs out of memory",
            )
    elif isinstance(event, HopFailed):
        _on_failure(catalog, state, sched, hop, hop_id, event.failure)
    elif isinstance(event, HopDone):
        _on_done(catalog, state, sched, hop, hop_id, event)
        step(state, sched, progress)


def _on_failure(
    catalog: Catalog,
    state: FitState,
    sched: Scheduler,
    hop: Hop,
    hop_id: int,
    failure: UserFailure,
) -> None:
    where = (
        f"{_where(state, hop.model_id)}, epoch {hop.epoch + 1}, {hop.kind} partition "
        f"{hop.partition}"
    )
    if failure.system:
        # NOTE [ system failures stop the fit ] A full disk or a broken worker is not the
        # model's fault: failing models one by one would wreck the search. Stop instead; the
        # catalog keeps every completed hop and `cerebro resume DIR` goes on once fixed.
        catalog.hop_ended(hop_id, HopStatus.LOST, f"{failure.function}: {failure.message}")
        raise CerebroError(
            f"{failure.function} failed for {where}: {failure.message}. Completed hops are "
            "kept: fix the cause (free disk space, raise the file-size limit) and resume with "
            "`cerebro resume DIR` or the same run_fit call."
        )
    err = UserCodeError(
        failure.message, function=failure.function, where=where, user_traceback=failure.traceback
    )
    catalog.hop_ended(hop_id, HopStatus.FAILED, str(err))
    _fail_model(catalog, state, sched, hop.model_id, ModelStatus.FAILED, str(err))
    if state.on_error == "stop":
        raise err


def _on_done(
    catalog: Catalog, state: FitState, sched: Scheduler, hop: Hop, hop_id: int, event: HopDone
) -> None:
    outcome = event.outcome
    if outcome.nonfinite is not None:
        msg = (
            f"{_where(state, hop.model_id)} diverged: metric {outcome.nonfinite!r} became "
            f"NaN or infinite in epoch {hop.epoch + 1}, {hop.kind} partition {hop.partition}"
        )
        catalog.hop_ended(hop_id, HopStatus.DIVERGED, msg)
        _fail_model(catalog, state, sched, hop.model_id, ModelStatus.DIVERGED, msg)
        return
    ends, old = _take(state, sched, event)
    _store(catalog, state, hop_id, event, old)
    for end in ends:
        try:
            _finish_epoch(catalog, state, sched, end, progress=state.progress)
        except UserCodeError as e:
            _fail_model(catalog, state, sched, end.model_id, ModelStatus.FAILED, str(e))
            if state.on_error == "stop":
                raise
