"""The Ray engine: worker slots as Ray actors pinned to the nodes that hold their partitions.

Same contract as the local engine (``workers``, ``submit``, ``poll``, ``shutdown``; see
:mod:`cerebro.engine`), for a cluster of machines. Only this engine imports Ray, and only
when it is used (:func:`cerebro._imports.import_ray`).

NOTE [ data stays on its node ]
Worker slot ``w`` owns the partitions ``p`` with ``p % W == w``, as in the local engine, and
slot ``w`` lives on alive node ``w % N`` (round robin, head node first). :func:`ray_etl` runs
``row_prep`` on those slots, so each node preprocesses and stores its own partitions on its
own disk; the manifest on the driver records, per partition, the node and the folder that
hold it, and :class:`RayEngine` pins each slot's actor to that node
(``NodeAffinitySchedulingStrategy(soft=False)``). No shared filesystem is needed.

NOTE [ models travel through the driver ]
The driver reads ``task.in_ckpt``, sends the bytes with the hop, and writes the bytes the
hop returns to ``task.out_ckpt`` (NOTE [ atomic renames ]) before it reports
``HopDone``. The controller and catalog are unchanged, and the driver holds every model's
latest state: a lost node loses no completed hop.

NOTE [ lost actors ]
An actor that dies (``ray.kill``, SIGKILL, its node's raylet gone) fails its hop's
ObjectRef with ``RayActorError`` at once. The slot gets a fresh actor on the same node that
reloads the partitions from that node's disk, and the hop is reported as ``WorkerLost`` so
the controller runs it again. A slot whose node has left the cluster cannot be restarted
yet (its partitions are on that node's disk): the engine stops with an error that says so.

NOTE [ a local Ray stays on loopback ]
``address=None`` starts a Ray instance on this machine with no dashboard, whose servers
listen on 127.0.0.1 only (Ray does so when its node address is loopback and its "cluster
mode" is off). It stays up for later fits in the same process; Ray stops it at exit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from cerebro._atomic import write_atomic
from cerebro.engine import EngineEvent, HopDone, HopFailed, WorkerLost
from cerebro.engine._pending import PendingError
from cerebro.engine._ray_etl import ray_etl
from cerebro.engine._ray_nodes import (
    alive_nodes,
    connect,
    find_node,
    kill,
    misc_files,
    node_gone,
    plan_slots,
    release_idle,
    spawn,
    spec_payload,
)
from cerebro.engine.messages import GroupBroken, HopOutcome, HopTask, UserFailure
from cerebro.errors import ParamsError, UserCodeError, WorkerError
from cerebro.spec import MinibatchSpec

__all__ = ["RayEngine", "connect", "ray_etl", "release_idle"]


class RayEngine:
    """Worker slots as Ray actors, each pinned to the node that holds its partitions.

    Args:
        spec: the user's Minibatch spec (sent to each actor by value).
        data_dir: the ETL output folder on the driver. With a manifest written by
            :func:`ray_etl`, each slot's actor goes to the node that holds its partitions
            and reads them from that node's folder; otherwise (data preprocessed by the
            local ETL) slots go round robin over the nodes and read ``data_dir`` itself,
            which must then be on storage every node mounts at the same path.
        owned: for each worker slot, ``{split: [partition indices]}`` it holds.
        misc_dir: folder with the ``misc`` files; they are copied to every node.
        address: Ray cluster to join (``"HOST:6379"``); None starts a local Ray instance
            (see :func:`connect`). An existing ``ray.init`` connection is used as it is.
        resources_per_worker: Ray resources per actor, e.g. ``{"CPU": 4, "GPU": 1}``;
            default: each node's CPUs (and GPUs) shared evenly by its slots.
        max_restarts: how many times one slot may be restarted before the run stops.
        num_cpus: CPUs of a local Ray instance (``address=None``); default: all cores.
        start_timeout: seconds to wait for the actors to start and load their partitions.

    Raises:
        WorkerError: a slot's node is not in the cluster, or an actor did not start.
        UserCodeError: the spec's ``initialize_worker`` or ``read_misc`` raised.

    Example:
        >>> manifest = ray_etl(etl_spec, params, data_dir, misc_dir, partitions=2,
        ...                    fraction=1.0, seed=1, address="10.0.0.1:6379")  # doctest: +SKIP
        >>> engine = RayEngine(spec, str(data_dir), [{"train": [0]}, {"train": [1]}],
        ...                    str(misc_dir), address="10.0.0.1:6379")     # doctest: +SKIP
        >>> engine.submit(0, task); engine.poll(timeout=1.0)               # doctest: +SKIP
        >>> engine.shutdown()                                              # doctest: +SKIP
    """

    def __init__(
        self,
        spec: MinibatchSpec,
        data_dir: str,
        owned: list[dict[str, list[int]]],
        misc_dir: str,
        *,
        address: str | None = None,
        resources_per_worker: Mapping[str, float] | None = None,
        max_restarts: int = 3,
        num_cpus: int | None = None,
        start_timeout: float = 300.0,
        ranks: list[int] | None = None,
    ):
        t0 = time.perf_counter()
        self._ray = ray = connect(address, num_cpus=num_cpus)
        self.workers = len(owned)
        self.timings: dict[str, float] = {"connect_s": time.perf_counter() - t0}
        self._timeout = start_timeout
        self._max_restarts = max_restarts
        self.restarts = [0] * self.workers
        self.info: list[dict[str, Any]] = [{} for _ in range(self.workers)]
        self.pid_node: dict[int, str] = {}  # every actor pid this engine used -> its node id
        # ref -> (slot, task, actor, n): the n-th hop submitted; an actor runs its calls in
        # order, so a slot's oldest outstanding hop is the one running, the rest wait
        self._running: dict[Any, tuple[int, HopTask, Any, int]] = {}
        self._submitted = 0
        self._dead: list[Any] = []  # actors whose death was reported (with their running hop)
        self._setting_up: dict[Any, tuple[int, Any, float]] = {}  # ref -> (slot, actor, by)
        self._early: list[EngineEvent] = []
        self._pending = PendingError()  # for the next poll to raise (Engine.poll)
        self._actors: list[Any] = []
        nodes, roots = _placement(ray, Path(data_dir), owned)
        self.slots = plan_slots(ray, nodes, resources_per_worker, ranks)
        misc = ray.put(misc_files(misc_dir))
        blob, paths = spec_payload(spec)
        self._setup_args = [
            (blob, paths, roots[w], owned[w], misc, s["threads"], s["device"])
            + ((ranks[w],) if ranks and ranks[w] > 1 else ())
            for w, s in enumerate(self.slots)
        ]
        t1 = time.perf_counter()
        try:
            self._actors = [spawn(ray, s) for s in self.slots]
            release_idle(ray)  # parked ETL actors this fit could not use hold CPUs
            refs = [
                a.setup.remote(*args)
                for a, args in zip(self._actors, self._setup_args, strict=True)
            ]
            for w, ref in enumerate(refs):
                try:
                    result = self._get(ref, w)
                except ray.exceptions.RayActorError as e:  # e.g. a parked ETL actor that died
                    self._restart(w, _first_line(e))
                    continue
                self._finish_setup(w, result)
            while self._setting_up:  # replacements for actors that died while starting
                ref, (w, _, by) = next(iter(self._setting_up.items()))
                if not ray.wait([ref], timeout=max(0.0, by - time.monotonic()))[0]:
                    raise self._not_started(w)
                self._collect_setups([ref])
        except BaseException:
            self.shutdown()
            raise
        self.timings["actors_s"] = time.perf_counter() - t1

    def _get(self, ref: Any, w: int) -> Any:
        ray = self._ray
        try:
            return ray.get(ref, timeout=self._timeout)
        except ray.exceptions.GetTimeoutError as e:
            raise self._not_started(w) from e

    def _not_started(self, w: int) -> WorkerError:
        s = self.slots[w]
        return WorkerError(
            f"worker {w}'s actor did not start on node {s['node_id']} ({s['ip']}) within "
            f"{self._timeout:.0f} s; does that node have the resources it asks for "
            f"({s['options']})? Check `ray status`, or pass resources_per_worker."
        )

    def _finish_setup(self, w: int, result: Any) -> None:
        if isinstance(result, UserFailure):
            raise UserCodeError(
                result.message,
                function=result.function,
                where=f"worker {w} set-up on node {self.slots[w]['node_id']}",
                user_traceback=result.traceback,
            )
        self.info[w] = dict(result)
        self.pid_node[result["pid"]] = result["node_id"]

    def _restart(self, w: int, reason: str) -> None:
        """Replace slot ``w``'s actor with a fresh one on the same node and start its set-up.

        Returns at once: the set-up (process start, imports, the spec's hooks, the
        partitions) runs while the other slots' hops go on, and :meth:`poll` collects it.
        A hop submitted meanwhile queues behind it (an actor runs one caller's calls in
        order).
        """
        ray = self._ray
        self.restarts[w] += 1
        if self.restarts[w] > self._max_restarts:
            raise WorkerError(
                f"worker {w} died {self.restarts[w]} times (last: {reason}); stopping "
                "rather than looping. Check the node's memory and the spec's native code; "
                "resume with `cerebro resume DIR` once fixed."
            )
        kill(ray, self._actors[w])
        node = self.slots[w]["node_id"]
        if not any(n["NodeID"] == node and n.get("Alive") for n in ray.nodes()):
            raise WorkerError(node_gone(node, f"it left the cluster ({reason})"))
        actor = self._actors[w] = spawn(ray, self.slots[w])
        ref = actor.setup.remote(*self._setup_args[w])
        self._setting_up[ref] = (w, actor, time.monotonic() + self._timeout)

    def _collect_setups(self, ready: list[Any]) -> None:
        """Finish the set-ups among ``ready`` (blocking until each answers).

        Raises:
            UserCodeError: the spec's set-up hook failed.
            WorkerError: a slot died too often, or its node left.
        """
        ray = self._ray
        for ref in ready:
            w, actor, _ = self._setting_up.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                if actor is self._actors[w]:
                    self._restart(w, f"died while starting: {_first_line(e)}")
                continue
            self._finish_setup(w, result)

    def kill_worker(self, worker: int) -> None:
        """Testing hook (NOTE [ killing a worker in a test ] in :mod:`cerebro.testing`):
        SIGKILL slot ``worker``'s actor process, as the OOM killer would (the actor must
        run on this machine: a local Ray, or ``ray.cluster_utils.Cluster``); :meth:`poll`
        finds out as it does for any death. A replacement still setting up, whose process
        is not known yet, is ended with ``ray.kill``."""
        import os
        import signal

        if any(w == worker for w, _, _ in self._setting_up.values()):
            kill(self._ray, self._actors[worker])
        else:
            os.kill(self.info[worker]["pid"], signal.SIGKILL)

    def submit(self, worker: int, task: HopTask) -> None:
        """Start ``task`` on ``worker``, or right after the hops already sent there."""
        try:
            state = Path(task.in_ckpt).read_bytes() if task.in_ckpt is not None else None
        except OSError as e:
            failure = UserFailure(
                "reading the checkpoint", f"{task.in_ckpt}: {e}", "", system=True
            )
            self._early.append(HopFailed(worker, task, failure))
            return
        actor = self._actors[worker]
        ref = actor.hop.remote(task, state)
        self._running[ref] = (worker, task, actor, self._submitted)
        self._submitted += 1

    def poll(self, timeout: float | None = None) -> list[EngineEvent]:
        """Wait up to ``timeout`` seconds for hops to end; return what happened.

        A replaced actor finishing its set-up also ends the wait (with no event).

        Raises:
            WorkerError: a replacement actor did not start within ``start_timeout``.
        """
        ray = self._ray
        self._pending.raise_unless()  # found by the last poll, which had events to return
        events, self._early = self._early, []
        now = time.monotonic()
        for w, _, by in self._setting_up.values():
            if now > by:
                raise self._not_started(w)
        if not self._running and not self._setting_up:
            return events
        wait_s = timeout
        if events:
            wait_s = 0
        elif self._setting_up:  # wake up in time to report a replacement that never starts
            soonest = max(0.0, min(by for _, _, by in self._setting_up.values()) - now)
            wait_s = soonest if wait_s is None else min(wait_s, soonest)
        refs = list(self._setting_up) + list(self._running)
        ready, rest = ray.wait(refs, num_returns=1, timeout=wait_s)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        try:
            self._collect_setups([r for r in ready if r in self._setting_up])
        except (UserCodeError, WorkerError) as e:
            self._pending.keep(e)  # the hops that finished meanwhile are still reported
        # Each slot's events in the order its hops were submitted (the controller completes
        # a queued hop only after the one before it); one whose elder is not in yet waits
        # for the next poll.
        for ref in sorted((r for r in ready if r in self._running), key=self._order):
            w, task, actor, n = self._running[ref]
            if any(a is actor and m < n for _, _, a, m in self._running.values()):
                continue
            del self._running[ref]
            try:
                events.append(self._event(ref, w, task, actor))
            except WorkerError as e:  # its replacement cannot start: the slot is done for
                self._pending.keep(e)
        self._pending.raise_unless(events)
        return events

    def _order(self, ref: Any) -> int:
        return self._running[ref][3]

    def _lost(self, w: int, task: HopTask, actor: Any, why: str) -> WorkerLost:
        """The loss of ``task`` with its actor: the first one reported was running, the
        others waited behind it."""
        if any(a is actor for a in self._dead):
            why += " (this hop was queued behind the one it was running)"
            return WorkerLost(w, task, why, started=False)
        self._dead.append(actor)
        return WorkerLost(w, task, why)

    def _event(self, ref: Any, w: int, task: HopTask, actor: Any) -> EngineEvent:
        ray = self._ray
        try:
            result, state = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            if actor is self._actors[w]:  # else: already replaced (it died while starting)
                self._restart(w, _first_line(e))
            return self._lost(w, task, actor, f"Ray actor died: {_first_line(e)}")
        except ray.exceptions.RayTaskError as e:  # outside the user's hooks: a bug, unpicklable
            failure = UserFailure("cerebro worker", _first_line(e), str(e), system=True)
            return HopFailed(w, task, failure)
        except ray.exceptions.RayError as e:  # object lost with its node, and the like
            if actor is self._actors[w]:
                self._restart(w, _first_line(e))
            return self._lost(w, task, actor, f"Ray error: {_first_line(e)}")
        if isinstance(result, GroupBroken):  # the actor's process group: replace it all
            if actor is self._actors[w]:
                self._restart(w, result.reason)
            if result.failure is not None:
                return HopFailed(w, task, result.failure)
            return self._lost(w, task, actor, f"worker process group broke: {result.reason}")
        if isinstance(result, UserFailure):
            return HopFailed(w, task, result)
        assert isinstance(result, HopOutcome)
        if state is not None and task.out_ckpt is not None:
            s0 = time.perf_counter()
            try:
                write_atomic(task.out_ckpt, state)
            except OSError as e:
                failure = UserFailure(
                    "saving the checkpoint", f"{task.out_ckpt}: {e}", "", system=True
                )
                return HopFailed(w, task, failure)
            result.save_seconds += time.perf_counter() - s0
        return HopDone(w, task, result)

    def shutdown(self) -> None:
        """Stop every actor (a hop in flight is abandoned); Ray itself stays up."""
        ray = self._ray
        idle = [a for a in self._actors if a is not None]
        try:
            ray.wait([a.close.remote() for a in idle], num_returns=len(idle), timeout=5)
        except Exception:  # noqa: BLE001 - a dead actor has nothing to clean
            pass
        for actor in idle:
            kill(ray, actor)
        self._actors = []
        self._running.clear()
        self._setting_up.clear()
        self._dead.clear()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _placement(
    ray: ModuleType, data_dir: Path, owned: list[dict[str, list[int]]]
) -> tuple[list[str], list[str]]:
    """Node id and data folder of each slot, from the manifest written by :func:`ray_etl`."""
    from cerebro.etl import load_manifest

    manifest = load_manifest(data_dir) or {}
    where = manifest.get("ray", {}).get("placement")
    if where is None:  # local ETL: a folder every node must see; round robin over nodes
        nodes = alive_nodes(ray)
        if not nodes:
            raise WorkerError("the Ray cluster has no alive node with CPUs.")
        ids = [nodes[w % len(nodes)]["NodeID"] for w in range(len(owned))]
        return ids, [str(data_dir)] * len(owned)
    ids, roots = [], []
    for w, parts in enumerate(owned):
        homes = {
            (where[split][p]["node_id"], where[split][p]["root"])
            for split, indices in parts.items()
            for p in indices
        }
        if not homes:  # a slot with nothing to read (test/predict with empty partitions)
            homes = {(e[w]["node_id"], e[w]["root"]) for e in where.values() if w < len(e)}
        if len(homes) != 1:
            raise ParamsError(
                f"worker {w}'s partitions {parts} are on {len(homes)} nodes; the data was "
                f"preprocessed for {manifest['ray']['workers']} workers. Run the fit with that "
                "many workers, or rerun run_etl for this many."
            )
        node_id, root = homes.pop()
        ip = _ip_of(where, node_id)
        node = find_node(ray, node_id, ip)
        if node is None:
            raise WorkerError(
                node_gone(node_id, f"no alive node has that id or, alone, its address {ip}")
            )
        ids.append(node)
        roots.append(root)
    return ids, roots


def _ip_of(where: dict[str, list[dict[str, Any]]], node_id: str) -> str:
    return next(e["ip"] for es in where.values() for e in es if e["node_id"] == node_id)
