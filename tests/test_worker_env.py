"""What a fit worker gets: its torch threads, its device, the ``misc`` files through
``read_misc`` (local and Ray workers), and no network port (the local engine)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cerebro import Experiment, FitResult
from cerebro.engine.local import default_devices, threads_per_worker
from toy import ToyETL, ToySpec, hop_rows, worker_pids, write_toy_csvs

GRID = {"lr": [0.05, 0.01], "batch_size": [32]}
OFFSET = 7.25  # the content of the misc file


def _device_code(device: Any) -> float:
    """A device as a number a metric can carry: -1 for the CPU, the index for a GPU."""
    d = torch.device(device)
    if d.type == "cpu":
        return -1.0
    return float(d.index if d.index is not None else 99)


class EnvSpec(ToySpec):
    """Reports, with every minibatch's metrics, the torch threads and the device the hook
    runs with and the number its ``read_misc`` read from the misc file; each ``read_misc``
    call also leaves a file ``log_dir/misc-<pid>`` naming the folder it was given."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir

    def read_misc(self, misc_path: str) -> None:
        self.offset = float((Path(misc_path) / "offset.txt").read_text())
        with open(os.path.join(self.log_dir, f"misc-{os.getpid()}"), "a") as f:
            f.write(misc_path + "\n")

    def _env(self, device: Any) -> dict[str, float]:
        return {
            "threads": float(torch.get_num_threads()),
            "device": _device_code(device),
            "offset": self.offset,
        }

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        return {**super().train(model_object, minibatch, hyperparams, device), **self._env(device)}

    def valtest(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        out = super().valtest(model_object, minibatch, hyperparams, device)
        return {**out, **self._env(device)}


def _values(row: sqlite3.Row, name: str) -> set[float]:
    return set(json.loads(row["metrics"])["values"][name])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The toy data preprocessed once, with a misc file; and one local fit of EnvSpec on
    the experiment's warm workers."""
    root = tmp_path_factory.mktemp("worker-env")
    (root / "offset.txt").write_text(str(OFFSET))
    params = dict(write_toy_csvs(root / "csv"), misc=[str(root / "offset.txt")])
    log = root / "log"
    log.mkdir()
    with Experiment(dict(params, output_dir=str(root / "run")), workers=2, verbose=False) as e:
        e.run_etl(ToyETL(), seed=1)
        result = e.run_fit(EnvSpec(str(log)), GRID, num_epochs=2, seed=1)
        yield {
            "params": dict(params, etl_dir=str(e.data_dir)),
            "root": root,
            "exp": e,
            "result": result,
            "log": log,
        }


# --- threads and devices ------------------------------------------------------------------


def test_threads_per_worker_is_cores_divided_by_workers() -> None:
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(3, cores=8) == 2  # floor: 3 x 2 <= 8, never oversubscribed
    assert threads_per_worker(4, cores=16) == 4
    assert threads_per_worker(8, cores=2) == 1  # at least one
    cores = os.cpu_count() or 1
    assert threads_per_worker(2) == max(1, cores // 2)  # this machine's cores by default


def test_worker_i_gets_accelerator_i_mod_n_named_as_torch_names_it() -> None:
    """Any accelerator torch finds (CUDA, XPU, MPS, a plugin's hpu); ranks take the next
    ones after their worker's; collectives use the type's backend, whatever else has
    registered itself for the type in this process (torch's test-only "fake" group
    does, for cpu, cuda and hpu)."""
    from cerebro.worker._devices import accelerator, backend, devices_for, rank_device

    assert devices_for(5, ("cuda", 3)) == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert devices_for(2, ("xpu", 1)) == ["xpu:0", "xpu:0"]
    assert devices_for(3, None) == ["cpu", "cpu", "cpu"]
    assert [rank_device("cuda:1", r, count=4) for r in range(4)] == [
        "cuda:1", "cuda:2", "cuda:3", "cuda:0",
    ]  # fmt: skip
    assert rank_device("hpu:0", 1, count=8) == "hpu:1" and rank_device("cpu", 3) == "cpu"
    assert (backend("cpu"), backend("cuda:0"), backend("xpu:1")) == ("gloo", "nccl", "xccl")
    assert backend("hpu:0") == "hccl"  # (Gaudi's plugin registers it when imported)
    # this machine: what torch finds decides the workers' devices
    if torch.accelerator.current_accelerator() is None:
        assert accelerator() is None and default_devices(3) == ["cpu", "cpu", "cpu"]
    else:
        kind = torch.accelerator.current_accelerator().type
        assert default_devices(3)[0] == f"{kind}:0"


def test_fit_workers_train_with_cores_over_workers_threads_and_their_device(
    data: dict[str, Any],
) -> None:
    result: FitResult = data["result"]
    assert set(result.table["status"]) == {"done"}
    hops = hop_rows(data["exp"].catalog_path, "done")
    assert {h["worker"] for h in hops} == {0, 1}
    want_threads = max(1, (os.cpu_count() or 1) // 2)  # cores ÷ workers
    devices = default_devices(2)  # "cpu" here; "cuda:<i mod n>" on a GPU machine
    for h in hops:  # every minibatch of every train and val hop, on both workers
        assert _values(h, "threads") == {want_threads}, (h["worker"], h["kind"])
        assert _values(h, "device") == {_device_code(devices[h["worker"]])}, h["worker"]


# --- read_misc ----------------------------------------------------------------------------


def test_read_misc_once_per_fit_worker_and_its_file_reaches_the_hooks(
    data: dict[str, Any],
) -> None:
    result: FitResult = data["result"]
    exp: Experiment = data["exp"]
    hops = hop_rows(exp.catalog_path, "done")
    assert all(_values(h, "offset") == {OFFSET} for h in hops)  # train and valtest
    history = result.history
    offset = history[history["metric"] == "offset"]
    assert set(offset["split"]) == {"train", "val"} and set(offset["value"]) == {OFFSET}
    # once per worker process, in the processes that ran the hops
    logs = sorted(data["log"].glob("misc-*"))
    pids = {int(p.name.removeprefix("misc-")) for p in logs}
    assert pids == {h["pid"] for h in hops} and len(pids) == 2
    assert all(len(p.read_text().splitlines()) == 1 for p in logs)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
def test_read_misc_on_ray_workers(data: dict[str, Any]) -> None:
    import ray

    root: Path = data["root"]
    log = root / "ray-log"
    log.mkdir()
    params = dict(data["params"], output_dir=str(root / "ray-run"))
    try:
        exp = Experiment(params, workers=2, engine="ray", verbose=False)
        result = exp.run_fit(EnvSpec(str(log)), {"lr": [0.05], "batch_size": [32]}, 1, seed=1)
        assert set(result.table["status"]) == {"done"}
        hops = hop_rows(exp.catalog_path, "done")
        assert {h["kind"] for h in hops} == {"train", "val"}
        assert all(_values(h, "offset") == {OFFSET} for h in hops)
        # one read_misc per actor, each given its node's own copy of the misc folder
        logs = sorted(log.glob("misc-*"))
        assert {int(p.name.removeprefix("misc-")) for p in logs} == {h["pid"] for h in hops}
        assert len(logs) == 2
        driver_copy = str(exp.output_dir / "misc")
        assert all(p.read_text().splitlines() != [driver_copy] for p in logs)
        # the two actors share this one node's CPUs evenly (a local Ray: all its cores)
        want = max(1, (os.cpu_count() or 1) // 2)
        assert all(_values(h, "threads") == {want} for h in hops)
    finally:
        ray.shutdown()


# --- no network port ----------------------------------------------------------------------

DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from cerebro import Experiment
from toy import GatedSpec
folder = Path({folder!r})
exp = Experiment({params!r}, workers=2, verbose=False)
exp.start()
(folder / "started").touch()
while not (folder / "go").exists():
    time.sleep(0.01)
exp.run_fit(GatedSpec(folder), {{"lr": [0.05], "batch_size": [32], "hold": [1]}}, 1)
exp.close()
"""


def _tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parent[int(d.name)] = int(fields[1])
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += [c for c, p in parent.items() if p == pid]
    return out


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[len("socket:[") : -1])
    return out


def _table(name: str) -> dict[str, str]:
    """inode -> "local address, state" of every socket in /proc/net/<name>."""
    try:
        lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
    except OSError:
        return {}
    out = {}
    for line in lines:
        f = line.split()
        if name == "unix":
            out[f[6]] = "unix"
        else:  # sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            out[f[9]] = f"{name} {f[1]} state {f[3]}"
    return out


def _inet_sockets(pids: list[int]) -> tuple[dict[int, list[str]], int]:
    """Per process, its TCP/UDP/raw sockets (any: listening, bound or connected); and how
    many of all its sockets /proc/net/unix lists (the socket pairs), to show the lookup
    finds what the processes hold."""
    inet: dict[str, str] = {}
    for name in ("tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6"):
        inet.update(_table(name))
    unix = _table("unix")
    found: dict[int, list[str]] = {}
    n_unix = 0
    for pid in pids:
        inodes = _socket_inodes(pid)
        n_unix += len(inodes & unix.keys())
        mine = [inet[i] for i in sorted(inodes & inet.keys())]
        if mine:
            found[pid] = mine
    return found, n_unix


def test_local_engine_listens_on_no_network_port(tmp_path: Path, data: dict[str, Any]) -> None:
    folder = tmp_path / "gate"
    folder.mkdir()
    params = dict(data["params"], output_dir=str(tmp_path / "run"))
    script = DRIVER.format(tests=str(Path(__file__).parent), folder=str(folder), params=params)
    (folder / "hold").touch()  # the fit's first train call waits inside the worker
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        for stage, flag in (("started", "started"), ("during a hop", "inside")):
            deadline = time.time() + 120
            while not (folder / flag).exists() and time.time() < deadline:
                assert proc.poll() is None, f"the driver ended before {stage}"
                time.sleep(0.01)
            assert proc.poll() is None and (folder / flag).exists(), stage
            pids = _tree(proc.pid)
            workers = worker_pids(proc.pid)
            assert len(workers) >= 2, (stage, pids)
            found, n_unix = _inet_sockets(pids)
            assert found == {}, f"{stage}: inet sockets {found}"
            assert n_unix >= 2 * len(workers), stage  # the socket pairs are seen
            (folder / "go").touch()
        (folder / "hold").unlink()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
