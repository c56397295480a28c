"""Ray plumbing shared by the Ray engine and the Ray ETL: connecting, nodes, actor slots.

Imported only once Ray is wanted; nothing here runs on the nodes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from cerebro._imports import import_ray
from cerebro.engine._ray_actor import WorkerActor
from cerebro.errors import WorkerError

__all__ = [
    "actor_class",
    "alive_nodes",
    "connect",
    "find_node",
    "kill",
    "misc_files",
    "node_gone",
    "park",
    "plan_slots",
    "release_idle",
    "spawn",
    "spec_payload",
]

# --- connecting -------------------------------------------------------------------------------


def connect(address: str | None = None, *, num_cpus: int | None = None) -> ModuleType:
    """Make sure this process is connected to Ray; returns the ``ray`` module.

    An existing connection (``ray.init`` called by the user or by an earlier engine) is used
    as it is. Otherwise ``address=None`` starts a local, loopback-only Ray instance with
    ``num_cpus`` CPUs (default: all cores) and no dashboard, and an address such as
    ``"10.0.0.1:6379"`` joins that cluster.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address is None:
        _start_local(ray, num_cpus or os.cpu_count() or 1)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return ray


def _start_local(ray: ModuleType, num_cpus: int) -> None:
    # The one private name we touch; see NOTE [ a local Ray stays on loopback ] in ray.py.
    from ray._private import ray_constants

    env_key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    saved_env, saved_flag = os.environ.get(env_key), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[env_key] = "0"  # inherited by Ray's own processes
    ray_constants.ENABLE_RAY_CLUSTER = False  # else Ray swaps 127.0.0.1 for the LAN address
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(env_key, None)
        else:
            os.environ[env_key] = saved_env


_ACTOR: dict[str, Any] = {}


def actor_class(ray: ModuleType) -> Any:
    """``ray.remote(WorkerActor)``, made once per process."""
    if "cls" not in _ACTOR:
        _ACTOR["cls"] = ray.remote(WorkerActor)
    return _ACTOR["cls"]


# --- where the slots go -----------------------------------------------------------------------


def alive_nodes(ray: ModuleType) -> list[dict[str, Any]]:
    """Alive nodes with CPUs, head node first, then by address and id: the round-robin order."""
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    return sorted(
        nodes,
        key=lambda n: (
            "node:__internal_head__" not in n["Resources"],
            n["NodeManagerAddress"],
            n["NodeID"],
        ),
    )


def find_node(ray: ModuleType, node_id: str, ip: str) -> str | None:
    """The alive node holding data an ETL recorded on node ``node_id`` at address ``ip``.

    That very node if it is alive; else, since Ray gives a node a new id each time it
    starts (a new ``ray.init``, ``ray start`` again), the only alive node at ``ip``; else
    None.
    """
    alive = alive_nodes(ray)
    if any(n["NodeID"] == node_id for n in alive):
        return node_id
    same = [n["NodeID"] for n in alive if n["NodeManagerAddress"] == ip]
    return same[0] if len(same) == 1 else None


def plan_slots(
    ray: ModuleType,
    node_ids: list[str],
    resources_per_worker: Mapping[str, float] | None = None,
    ranks: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Actor options, torch threads and device for the slots placed on ``node_ids``.

    By default the slots on one node share its CPUs evenly (``num_cpus`` = node CPUs / slots
    there, fractions allowed, torch threads = its floor, at least 1) and, when the node has
    GPUs, one GPU each (or an even share when there are fewer GPUs than slots), with device
    ``"cuda"`` (Ray sets ``CUDA_VISIBLE_DEVICES`` for the actor). ``resources_per_worker``
    replaces this: ``{"CPU": 4, "GPU": 1, "my_resource": 1}``.

    A slot of ``ranks[w]`` = k devices is one actor that holds all of them, so its ranks
    run on one node (NOTE [ a worker's process group ]: the actor starts them): by default
    k GPUs when the node has k for each of its slots, and its share of the CPUs split
    among the ranks for their torch threads.
    """
    nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    count = {nid: node_ids.count(nid) for nid in node_ids}
    slots = []
    for w, nid in enumerate(node_ids):
        k = ranks[w] if ranks else 1
        if nid not in nodes:
            raise WorkerError(node_gone(nid, "it is not an alive node of this Ray cluster"))
        res = nodes[nid]["Resources"]
        if resources_per_worker is not None:
            want = dict(resources_per_worker)
            cpus = float(want.pop("CPU", 1))
            gpus = float(want.pop("GPU", 0))
        else:
            want = {}
            cpus = res.get("CPU", 1) / count[nid]
            g = res.get("GPU", 0)
            gpus = 0.0 if g == 0 else (float(k) if g >= k * count[nid] else g / count[nid])
        slots.append(
            {
                "node_id": nid,
                "ip": nodes[nid]["NodeManagerAddress"],
                "threads": max(1, int(cpus // k)),  # per rank
                "device": "cuda" if gpus > 0 else "cpu",
                "options": {"num_cpus": cpus, "num_gpus": gpus, "resources": want},
            }
        )
    return slots


def node_gone(node_id: str, why: str) -> str:
    return (
        f"Ray node {node_id} cannot take its worker: {why}. Its partitions are on that node's "
        "disk, and moving them to another node is not supported yet: rerun run_etl with the "
        "Ray engine on the nodes you have now, then resume the fit (no completed hop is lost)."
    )


# NOTE [ the ETL hands its actors to the fit ]
# Starting an actor costs seconds (a Python process importing torch). ``ray_etl`` parks its
# actors here, reset, instead of killing them, and the next ``spawn`` for the same node and
# resources in the same Ray session takes one, so ETL then fit starts each slot's process
# once. Only ETL actors are parked: a fit's actor has run the Minibatch spec's
# ``initialize_worker``, which runs once per worker process, so it is never reused.
_IDLE: list[tuple[tuple[Any, ...], Any]] = []


def _key(ray: ModuleType, slot: Mapping[str, Any]) -> tuple[Any, ...]:
    o = slot["options"]
    return (
        ray.get_runtime_context().get_job_id(),
        slot["node_id"],
        o["num_cpus"],
        o["num_gpus"],
        tuple(sorted(o["resources"].items())),
    )


def spawn(ray: ModuleType, slot: Mapping[str, Any]) -> Any:
    """An actor on ``slot["node_id"]``, pinned there: a parked one, or a new one."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    key = _key(ray, slot)
    for i, (k, actor) in enumerate(_IDLE):
        if k == key:
            del _IDLE[i]
            return actor
    return (
        actor_class(ray)
        .options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(slot["node_id"], soft=False),
            max_restarts=0,
            max_task_retries=0,
            **slot["options"],
        )
        .remote()
    )


def park(ray: ModuleType, slot: Mapping[str, Any], actor: Any) -> None:
    """Keep a reset actor for the next :func:`spawn` of the same slot."""
    _IDLE.append((_key(ray, slot), actor))


def release_idle(ray: ModuleType | None = None) -> None:
    """Kill the parked actors (``ray_etl`` leaves them for the next fit), freeing their CPUs."""
    while _IDLE:
        _, actor = _IDLE.pop()
        if ray is not None:
            kill(ray, actor)


def spec_payload(spec: Any) -> tuple[bytes, list[str]]:
    """A spec as cloudpickle bytes, and the driver's import path to unpickle it with."""
    import cloudpickle

    return cloudpickle.dumps(spec), [p for p in sys.path if p]


def misc_files(misc_dir: str | Path) -> dict[str, bytes]:
    """The ``misc`` files as ``{name: bytes}``, to recreate on every node."""
    d = Path(misc_dir)
    if not d.is_dir():
        return {}
    return {f.name: f.read_bytes() for f in sorted(d.iterdir()) if f.is_file()}


def kill(ray: ModuleType, actor: Any) -> None:
    """Kill ``actor`` for good (no Ray restart); a dead one is fine."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead
        pass
