"""The ETL on Ray: ``row_prep`` runs on the worker actors, each node writing its partitions.

The driver plans the ETL with the planner the local ETL uses (:mod:`cerebro.etl._plan`:
the same fingerprint, the same rows in the same partitions, the same manifest); then it sends
each partition's rows, in chunks and in order, to the actor of the worker slot that will own
that partition in the fit. The actor runs ``row_prep`` (``cerebro.etl._prep.prep_chunk``) and
writes the partition to its own node's disk with the same writer as the local ETL, so a
partition holds the same bytes whichever ETL made it. The manifest, on the driver, adds where
each partition is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cerebro.engine._ray_nodes import (
    alive_nodes,
    connect,
    find_node,
    kill,
    misc_files,
    park,
    plan_slots,
    release_idle,
    spawn,
    spec_payload,
)
from cerebro.errors import CerebroError, ParamsError, UserCodeError, WorkerError
from cerebro.etl._partitions import owner
from cerebro.etl._plan import (
    CHUNK_ROWS,
    check_fraction,
    fingerprint,
    manifest,
    plan_splits,
    progress_bar,
    reusable_manifest,
    start_manifest,
    write_manifest,
)
from cerebro.etl._prep import RowFailure
from cerebro.etl._read import SplitPlan
from cerebro.params import Params
from cerebro.spec import ETLSpec, check_spec

__all__ = ["ray_etl"]

_IN_FLIGHT_PER_ACTOR = 4


def ray_etl(
    spec: ETLSpec,
    params: Params,
    data_dir: Path,
    misc_dir: Path,
    *,
    partitions: int,
    fraction: float,
    seed: int,
    workers: int | None = None,
    address: str | None = None,
    resources_per_worker: Mapping[str, float] | None = None,
    node_data_dir: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Preprocess every split into ``partitions`` partitions on the nodes of a Ray cluster.

    Partition ``p`` goes to worker slot ``owner(p, workers)``, and slot ``w`` to alive node
    ``w % N`` (head node first): the placement :class:`~cerebro.engine.ray.RayEngine` uses.
    Skips the work when ``data_dir``'s manifest already describes the same inputs, spec,
    fraction, seed and partitions on nodes that are still in the cluster.

    Args:
        spec, params, partitions, fraction, seed: as for the local ETL
            (:func:`cerebro.etl.run_etl`).
        data_dir: where the driver keeps the manifest (and, by default, where every node
            keeps its partitions: the same path on each node's own disk).
        misc_dir: the ``misc`` files, copied to every node for ``read_misc``.
        workers: the fit's worker count (default: ``partitions``).
        address, resources_per_worker, num_cpus: as for ``RayEngine``.
        node_data_dir: the folder for the partitions on each node, if not ``data_dir``; may
            name ``{node_id}`` or ``{node_ip}``, e.g. ``"/local/ssd/cerebro/{node_id}"``.
        progress: show a progress bar of rows.

    Returns:
        The manifest, with a ``"ray"`` entry: the placement of every partition.

    Raises:
        UserCodeError: ``row_prep`` or a set-up hook raised or returned bad output.
        ParamsError: a CSV or its object files are wrong, or a bad ``node_data_dir``.
        WorkerError: an actor died or could not start.
    """
    check_spec(spec, ETLSpec)
    check_fraction(fraction)
    workers = workers or partitions
    if node_data_dir is not None and not os.path.isabs(node_data_dir):
        raise ParamsError(
            f"node_data_dir must be an absolute path (it is used on every node), got "
            f"{node_data_dir!r}."
        )
    data_dir = Path(data_dir).resolve()
    fp = fingerprint(params, spec, partitions, fraction, seed)
    ray = connect(address, num_cpus=num_cpus)
    old = reusable_manifest(data_dir, fp)
    if old is not None and _reusable(ray, old, workers):
        return old
    nodes = alive_nodes(ray)
    if not nodes:
        raise WorkerError("the Ray cluster has no alive node with CPUs.")
    slots = plan_slots(
        ray, [nodes[w % len(nodes)]["NodeID"] for w in range(workers)], resources_per_worker
    )
    for s in slots:
        template = node_data_dir or str(data_dir)
        s["root"] = template.format(node_id=s["node_id"], node_ip=s["ip"])
    # The actors boot (a Python process importing torch: seconds) while the driver reads
    # and checks the CSVs.
    t0 = time.perf_counter()
    release_idle(ray)  # actors an earlier ETL left for a fit that never came
    actors = [spawn(ray, s) for s in slots]
    try:
        blob, paths = spec_payload(spec)
        misc = ray.put(misc_files(misc_dir))
        setups = [
            a.etl_setup.remote(blob, paths, misc, s["threads"])
            for a, s in zip(actors, slots, strict=True)
        ]
        plans = plan_splits(spec, params, partitions, fraction, seed)
        start_manifest(data_dir)
        seconds = _run(ray, actors, setups, spec, params, plans, slots, progress)
        seconds["actors_s"] = seconds.pop("setup_done") - t0
    except BaseException:
        _close(ray, actors)
        raise
    # Hand the actors, reset, to the fit that comes next (see NOTE in _ray_nodes).
    try:
        _get(ray, [a.reset.remote() for a in actors])
    except BaseException:
        _close(ray, actors)
        raise
    for a, s in zip(actors, slots, strict=True):
        park(ray, s, a)
    record = manifest(fp, partitions, plans)
    record["ray"] = {
        "workers": workers,
        "placement": {
            plan.split: [
                {k: slots[owner(p, workers)][k] for k in ("node_id", "ip", "root")}
                for p in range(partitions)
            ]
            for plan in plans
        },
        "seconds": seconds,
    }
    write_manifest(data_dir, record)
    return record


def _reusable(ray: Any, old: dict[str, Any], workers: int) -> bool:
    """Whether the partitions an earlier ETL wrote are still where the manifest says."""
    alive = {n["NodeID"]: n for n in alive_nodes(ray)}
    info = old.get("ray")
    if info is None:  # the local ETL's output: usable when this machine is the whole cluster
        return len(alive) == 1 and all(
            n["NodeManagerAddress"] in ("127.0.0.1", ray.util.get_node_ip_address())
            for n in alive.values()
        )
    return info.get("workers") == workers and all(
        find_node(ray, e["node_id"], e["ip"]) is not None
        for entries in info["placement"].values()
        for e in entries
    )


def _run(
    ray: Any,
    actors: list[Any],
    setups: list[Any],
    spec: ETLSpec,
    params: Params,
    plans: list[SplitPlan],
    slots: list[dict[str, Any]],
    progress: bool,
) -> dict[str, float]:
    """Finish the actors' set-up, stream the rows to them, close every partition."""
    workers = len(actors)
    for w, failure in enumerate(_get(ray, setups)):
        if failure is not None:
            function, message, tb = failure
            raise UserCodeError(
                message,
                function=function,
                where=f"ETL worker {w} on node {slots[w]['node_id']}",
                user_traceback=tb,
            )
    splits = [plan.split for plan in plans]
    first: dict[tuple[str, str], int] = {}
    for w, s in enumerate(slots):
        first.setdefault((s["node_id"], s["root"]), w)
    _get(ray, [actors[w].etl_clean.remote(slots[w]["root"], splits) for w in first.values()])
    t1 = time.perf_counter()
    in_flight: dict[Any, int] = {}  # ObjectRef -> rows
    bar = progress_bar(sum(len(p.rows) for p in plans), progress)

    def drain(limit: int) -> None:
        while len(in_flight) > limit:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                n = in_flight.pop(ref)
                _check(_get(ray, [ref])[0])
                bar.update(n)

    try:
        for plan in plans:
            object_dir = params.object_dir(plan.split)
            for p, size in enumerate(plan.sizes):
                if size == 0:
                    w = owner(p, workers)
                    in_flight[actors[w].etl_empty.remote(slots[w]["root"], plan.split, p)] = 0
            for p, rows in plan.chunks(CHUNK_ROWS):
                w = owner(p, workers)
                ref = actors[w].etl_rows.remote(
                    slots[w]["root"], plan.split, p, plan.sizes[p], object_dir, plan.features, rows
                )
                in_flight[ref] = len(rows)
                drain(_IN_FLIGHT_PER_ACTOR * workers)
        drain(0)
    finally:
        bar.close()
    unfinished = _get(ray, [a.etl_finish.remote() for a in actors])
    if any(unfinished):
        raise CerebroError(f"ETL left partitions unfinished: {unfinished}; rerun run_etl.")
    return {"setup_done": t1, "rows_s": time.perf_counter() - t1}


def _close(ray: Any, actors: list[Any]) -> None:
    """Clean up and kill the actors of a failed ETL (no fit will use them)."""
    try:
        ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=5)
    except Exception:  # noqa: BLE001 - a dead actor has nothing to clean
        pass
    for a in actors:
        kill(ray, a)


def _get(ray: Any, refs: list[Any]) -> list[Any]:
    try:
        return list(ray.get(refs))
    except ray.exceptions.RayActorError as e:
        raise WorkerError(
            f"an ETL actor died: {str(e).strip().splitlines()[0]}. Rerun run_etl; if it "
            "repeats, the node may be running out of memory in row_prep."
        ) from e
    except ray.exceptions.RayTaskError as e:
        raise CerebroError(
            f"the ETL failed on a Ray node: {str(e).strip()}\nFree disk space on that node "
            "(or fix the error above), then rerun run_etl."
        ) from e


def _check(result: Any) -> None:
    if isinstance(result, RowFailure):
        raise result.error()
