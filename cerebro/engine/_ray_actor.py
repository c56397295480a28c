"""What runs inside a Ray actor: one worker slot on one node, for the ETL and for the fit.

The actor is a plain class here; :func:`cerebro.engine.ray.actor_class` wraps it with
``ray.remote`` once Ray is imported, so importing this module never needs Ray.

NOTE [ hops reuse run_hop unchanged ]
A hop arrives with the model state as bytes (read by the driver from ``task.in_ckpt``). The
actor writes them to a node-local scratch file, runs :func:`cerebro.worker.run_hop` on a copy
of the task whose checkpoint paths point at that scratch folder, and sends the new state back
as bytes. The minibatch loop, RNG handling and checkpoint format are the local engine's to
the byte, so both engines train the same model; the scratch files (in ``/dev/shm`` when the
node has it) are removed after every hop, and the scratch folder when the slot closes.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from cerebro._scratch import private_dir
from cerebro.engine.messages import GroupBroken, HopOutcome, HopTask, UserFailure
from cerebro.etl._prep import RowFailure, prep_chunk
from cerebro.partitions import PartitionWriter, StructureError, partition_path
from cerebro.worker import run_hop, setup_worker

__all__ = ["WorkerActor"]


def load_spec(blob: bytes, paths: list[str]) -> Any:
    """Unpickle a spec sent by the driver, after adding the driver's import path.

    Like the local engine's workers (which get the driver's ``sys.path``), so a spec class
    defined in the user's own module imports here; paths this node lacks are skipped, and
    they go after the node's own, never shadowing its packages.
    """
    for p in paths:
        if p not in sys.path and os.path.isdir(p):
            sys.path.append(p)
    return pickle.loads(blob)


def _scratch_root() -> str:
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


class WorkerActor:
    """One worker slot: holds its node's partitions and runs ETL chunks or hops on them."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        # (a killed actor's folder goes at the next start: NOTE [ scratch folders ])
        self.scratch = Path(private_dir("cerebro-slot-", _scratch_root()))
        self.writers: dict[tuple[str, int], PartitionWriter] = {}

    def where(self) -> dict[str, Any]:
        """This process: pid, Ray node id and the node's IP address."""
        import ray

        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(),
        }

    def _misc(self, files: dict[str, bytes]) -> str:
        """Write the driver's ``misc`` files into a node-local folder; returns its path."""
        d = self.scratch / "misc"
        d.mkdir(exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
        return str(d)

    def reset(self) -> None:
        """Forget the ETL (spec, unfinished writers) so a fit can use this process next."""
        for w in self.writers.values():
            shutil.rmtree(w.tmp, ignore_errors=True)
        self.writers.clear()
        if (group := self.state.get("group")) is not None:
            group.close()  # a worker of several devices: its ranks exit
        self.state.clear()
        shutil.rmtree(self.scratch / "misc", ignore_errors=True)

    def close(self) -> None:
        """Remove this slot's scratch folder (the engine calls it before killing the actor)."""
        self.reset()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # --- ETL ----------------------------------------------------------------------------------

    def etl_setup(
        self, spec_blob: bytes, paths: list[str], misc: dict[str, bytes], threads: int
    ) -> tuple[str, str, str] | None:
        """Run the ETL spec's set-up hooks; returns ``(hook, message, traceback)`` on failure."""
        import torch

        torch.set_num_threads(threads)
        try:
            spec = load_spec(spec_blob, paths)
        except Exception as e:  # noqa: BLE001 - e.g. the spec's module is not on this node
            return "unpickling the ETL spec", _unpickle_hint(e), traceback.format_exc()
        self.state["spec"] = spec
        misc_dir = self._misc(misc)
        for hook, args in (("initialize_worker", ()), ("read_misc", (misc_dir,))):
            try:
                getattr(spec, hook)(*args)
            except Exception as e:  # noqa: BLE001 - reported with the hook's name
                return (
                    f"{type(spec).__name__}.{hook}",
                    f"{type(e).__name__}: {e}",
                    (traceback.format_exc()),
                )
        return None

    def etl_clean(self, root: str, splits: list[str]) -> None:
        """Remove earlier partitions of ``splits`` under ``root`` on this node."""
        for split in splits:
            shutil.rmtree(Path(root) / split, ignore_errors=True)

    def etl_rows(
        self,
        root: str,
        split: str,
        p: int,
        size: int,
        object_dir: str | None,
        features: list[str],
        rows: list[dict[str, Any]],
    ) -> int | RowFailure:
        """``row_prep`` a chunk of partition ``p`` and append it; closes the partition when full.

        Chunks of one partition arrive in order (one caller, one actor), so the rows land in
        the order the driver planned: the same partition bytes as the local ETL.
        """
        key = (split, p)
        if key not in self.writers:
            self.writers[key] = PartitionWriter(partition_path(Path(root), split, p), size)
        writer = self.writers[key]
        out = prep_chunk(self.state, split, object_dir, features, rows)
        if isinstance(out, RowFailure):
            return out
        for row_id, row in out:
            try:
                writer.append(row_id, row)
            except StructureError as e:
                name = f"{type(self.state['spec']).__name__}.row_prep"
                return RowFailure(split, row_id, name, str(e), "")
        if writer.filled == writer.rows:
            writer.close()
            del self.writers[key]
        return len(rows)

    def etl_empty(self, root: str, split: str, p: int) -> None:
        PartitionWriter(partition_path(Path(root), split, p), 0).close()

    def etl_finish(self) -> list[str]:
        """Partitions this slot left unfinished (none after a complete ETL)."""
        return [f"{split}/{p}" for split, p in self.writers]

    # --- fit ----------------------------------------------------------------------------------

    def setup(
        self,
        spec_blob: bytes,
        paths: list[str],
        data_dir: str,
        owned: dict[str, list[int]],
        misc: dict[str, bytes],
        threads: int,
        device: str,
        ranks: int = 1,
    ) -> dict[str, Any] | UserFailure:
        """:func:`cerebro.worker.setup_worker` with the misc files copied to this node
        (with ``ranks`` > 1 this actor starts and leads its worker's process group)."""
        try:
            spec = load_spec(spec_blob, paths)
        except Exception as e:  # noqa: BLE001 - e.g. the spec's module is not on this node
            return UserFailure(
                "unpickling the Minibatch spec", _unpickle_hint(e), traceback.format_exc()
            )
        missing = [
            f"{split}/part-{p:05d}"
            for split, indices in owned.items()
            for p in indices
            if not (partition_path(Path(data_dir), split, p) / "meta.json").is_file()
        ]
        if missing:
            info = self.where()
            return UserFailure(
                "cerebro worker set-up",
                f"node {info['node_id']} ({info['ip']}) has no partition(s) {missing} under "
                f"{data_dir}. The data must be preprocessed onto this node: run the ETL with "
                "the Ray engine (it writes each node's partitions to that node's disk), or "
                "put data_dir on storage every node mounts at the same path.",
                "",
            )
        result = setup_worker(
            self.state, spec, data_dir, owned, self._misc(misc), threads, device, ranks
        )
        if isinstance(result, dict):
            result.update(self.where())
            result["device"] = device
        return result

    def hop(
        self, task: HopTask, model_state: bytes | None
    ) -> tuple[HopOutcome | UserFailure | GroupBroken, bytes | None]:
        """Run one hop with the model state given as bytes; returns the new state's bytes."""
        t0 = time.perf_counter()
        in_path = self.scratch / "in.pt"
        out_path = self.scratch / "out.pt"
        out_path.unlink(missing_ok=True)
        if model_state is not None:
            in_path.write_bytes(model_state)
        local = dataclasses.replace(
            task,
            in_ckpt=str(in_path) if model_state is not None else None,
            out_ckpt=str(out_path) if task.out_ckpt is not None else None,
        )
        staged = time.perf_counter() - t0
        try:
            result = run_hop(self.state, local)
        finally:
            in_path.unlink(missing_ok=True)
        new_state = None
        if isinstance(result, GroupBroken):
            return result, None  # the engine replaces this actor (and so its group)
        if isinstance(result, UserFailure) and task.in_ckpt is not None:
            # name the driver's checkpoint file, not this node's scratch copy of it
            result.message = result.message.replace(str(in_path), task.in_ckpt)
        if isinstance(result, HopOutcome):
            result.load_seconds += staged
            if out_path.exists():
                s0 = time.perf_counter()
                new_state = out_path.read_bytes()
                out_path.unlink()
                result.save_seconds += time.perf_counter() - s0
        return result, new_state


def _unpickle_hint(e: BaseException) -> str:
    info = f"{type(e).__name__}: {e}"
    if isinstance(e, ImportError):
        info += (
            ". The spec's module must be importable on every node: install it there, put it "
            "on a path every node has, or define the spec in the driver script's __main__ "
            "(it then travels by value)."
        )
    return info
