"""The Ray engine on a real two-node Ray cluster (``ray.cluster_utils.Cluster``, loopback).

Each node gets its own data folder, as if it were its own machine: the ETL writes every
partition on the node whose worker owns it, the fit's actors read only their own node's
folder, models travel through the driver, and the result is bit-identical to the local
engine's. One cluster serves the whole module (Ray starts slowly). The fits go through the
public API, ``Experiment(engine="ray", address=...)``; where a test needs to know where a
hop ran, its spec records the node of every worker process (:class:`NodeSpec`).

What every engine must do with a lost worker (the hop it ran and the one queued behind it
lost once each, the replacement set up in the background) is the engine contract suite's,
``test_engine_contract.py``, which runs the Ray engine too; the cases here are the Ray
engine's own (nodes, placement, a replacement that never starts).

Ray is imported only inside fixtures and tests, never at collection: ``import cerebro``
must not pull Ray in (``test_public_api``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from cerebro import Experiment
from cerebro.partitions import partition_path
from toy import (
    GatedSpec,
    SlowSpec,
    ToyETL,
    ToySpec,
    WideSpec,
    done_hops,
    hop_rows,
    hop_task,
    write_toy_csvs,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (pip install 'cerebro-mop[ray]'); the Ray engine is optional",
)

GRID: dict[str, list[Any]] = {"lr": [0.05, 0.01], "batch_size": [32, 64]}
EPOCHS = 2


class NodeSpec(ToySpec):
    """Each worker process that sets it up writes its Ray node id to ``folder/<pid>``: with
    the catalog's pids, that tells which node ran each hop."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def initialize_worker(self) -> None:
        import ray

        node = ray.get_runtime_context().get_node_id()
        Path(self.folder, str(os.getpid())).write_text(node)


class SlowNodeSpec(NodeSpec, SlowSpec):
    delay = 0.02


def _nodes(folder: Path) -> dict[int, str]:
    """pid -> node id of every worker process a :class:`NodeSpec` ran in."""
    return {int(f.name): f.read_text() for f in folder.iterdir()}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head and a worker node of 1 CPU each, on loopback; the driver connected to it."""
    ray = pytest.importorskip("ray", reason="the Ray engine is optional")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # Keep every Ray server on 127.0.0.1 (as RayEngine does for a local instance).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    args: dict[str, Any] = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    c = Cluster(initialize_head=True, head_node_args={**args, "include_dashboard": False})
    c.add_node(**args)
    c.wait_for_nodes()
    # The driver joins now (the actors import `toy` from the driver's sys.path); the
    # experiments are given the same address.
    ray.init(address=c.address)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        ray_constants.ENABLE_RAY_CLUSTER = True


def _ray_etl(spec: Any, exp: Experiment, nodes: Path) -> dict[str, Any]:
    """``exp``'s data through the Ray ETL into 2 partitions (seed 1), each node writing its
    own under ``nodes/<node id>``, as if every node were its own machine."""
    from cerebro.engine.ray import ray_etl

    return ray_etl(
        spec,
        exp.params,
        exp.data_dir,
        exp._misc_dir(),
        partitions=2,
        fraction=1.0,
        seed=1,
        node_data_dir=str(nodes / "{node_id}"),
        progress=False,
    )


@pytest.fixture(scope="module")
def data(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The toy data through the local ETL and through the Ray ETL (one folder per node)."""

    root = tmp_path_factory.mktemp("ray")
    params = write_toy_csvs(root / "csv")
    local = Experiment(dict(params, output_dir=str(root / "local")), workers=2, verbose=False)
    local.run_etl(ToyETL(), seed=1)
    exp = Experiment(dict(params, output_dir=str(root / "ray")), workers=2, verbose=False)
    manifest = _ray_etl(ToyETL(), exp, root / "nodes")
    return {
        "params": params,
        "root": root,
        "local": local,
        "manifest": manifest,
        "address": cluster.address,
    }


def _ray_experiment(data: dict[str, Any], name: str, workers: int = 2, **params: Any) -> Any:
    """``Experiment(engine="ray")`` joined to the module's cluster, output under ``name``."""
    params = dict(data["params"], output_dir=str(data["root"] / name), **params)
    return Experiment(
        params, workers=workers, engine="ray", address=data["address"], verbose=False
    )


def _fit(data: dict[str, Any], name: str, engine: str, spec: Any = None) -> tuple[Any, Experiment]:
    """A real ``run_fit`` (probe, controller loop, catalog) on the local or the Ray engine,
    on the local or the Ray ETL's data."""
    if engine == "local":
        etl_dir = data["local"].data_dir
        params = dict(data["params"], output_dir=str(data["root"] / name), etl_dir=str(etl_dir))
        exp = Experiment(params, workers=2, verbose=False)
    else:
        exp = _ray_experiment(data, name, etl_dir=str(data["root"] / "ray" / "data"))
    result = exp.run_fit(spec or ToySpec(), GRID, num_epochs=EPOCHS, seed=3)
    return result, exp


def _watch(until: Any, act: Any) -> threading.Thread:
    """A thread that does ``act()`` once ``until()`` holds (checked every 10 ms, for at most
    120 s); join it to learn whether it did (it raises otherwise)."""
    failed: list[str] = []

    def run() -> None:
        try:
            deadline = time.time() + 120
            while not until():
                if time.time() > deadline:
                    failed.append("the condition never held")
                    return
                time.sleep(0.01)
            act()
        except Exception as e:  # noqa: BLE001 - reported by join(), not lost in the thread
            failed.append(f"the watcher raised {type(e).__name__}: {e}")

    class Watch(threading.Thread):
        def join(self, timeout: float | None = None) -> None:
            super().join(timeout)
            assert not failed, failed

    t = Watch(target=run, daemon=True)
    t.start()
    return t


def _same_history(a: Any, b: Any) -> None:
    keys = ["model_id", "epoch", "split", "metric"]
    x = a.history.sort_values(keys).reset_index(drop=True)
    y = b.history.sort_values(keys).reset_index(drop=True)
    assert x.equals(y)


def _per_hop_metrics(catalog: Path) -> dict[tuple[str, str, int, int], Any]:
    return {
        (r["model_id"], r["kind"], r["partition"], r["epoch"]): json.loads(r["metrics"])
        for r in hop_rows(catalog)
        if r["status"] == "done"
    }


def test_ray_etl_writes_each_partition_on_its_own_node(data: dict[str, Any]) -> None:
    manifest, root = data["manifest"], data["root"]
    placement = manifest["ray"]["placement"]
    nodes = {e["node_id"] for entries in placement.values() for e in entries}
    assert len(nodes) == 2  # two workers, two nodes: one worker per node
    local_dir = data["local"].data_dir
    for split, entries in placement.items():
        for p, entry in enumerate(entries):
            assert entry["node_id"] == placement["train"][p % 2]["node_id"]
            here = partition_path(Path(entry["root"]), split, p)
            assert Path(entry["root"]).parent == root / "nodes"
            assert (here / "meta.json").is_file()
            # ... and on no other node
            for other in nodes - {entry["node_id"]}:
                assert not partition_path(root / "nodes" / other, split, p).exists()
            # the same bytes as the local ETL's partition
            there = partition_path(local_dir, split, p)
            files = sorted(f.name for f in there.iterdir())
            assert sorted(f.name for f in here.iterdir()) == files
            for f in files:
                if f.endswith(".npy"):
                    assert np.array_equal(np.load(here / f), np.load(there / f))
                else:
                    assert (here / f).read_bytes() == (there / f).read_bytes()
    # the driver keeps only the manifest
    assert sorted(p.name for p in (root / "ray" / "data").iterdir()) == ["manifest.json"]
    assert manifest["splits"] == json.loads((local_dir / "manifest.json").read_text())["splits"]


def test_ray_etl_reuses_its_output(data: dict[str, Any]) -> None:

    exp = Experiment(
        dict(data["params"], output_dir=str(data["root"] / "ray")), workers=2, verbose=False
    )

    def files() -> list[tuple[str, int, int]]:
        out = []
        for f in sorted([*(data["root"] / "nodes").rglob("*"), *exp.data_dir.rglob("*")]):
            st = f.stat()
            out.append((str(f), st.st_ino, st.st_mtime_ns))
        return out

    before = files()
    again = _ray_etl(ToyETL(), exp, data["root"] / "nodes")
    assert again == data["manifest"]
    assert files() == before  # nothing preprocessed or written again: the same files


def test_fit_matches_local_engine_and_reads_only_local_partitions(
    data: dict[str, Any], tmp_path: Path
) -> None:
    reference, local_exp = _fit(data, "fit-local", "local")
    result, exp = _fit(data, "fit-ray", "ray", NodeSpec(tmp_path))
    node_of = _nodes(tmp_path)
    placement = data["manifest"]["ray"]["placement"]
    hops = hop_rows(exp.catalog_path, "done")
    assert len(hops) == 4 * 2 * 2 * EPOCHS
    assert len({h["pid"] for h in hops}) == 2  # one actor per worker slot
    for h in hops:  # every hop ran on the node that holds its partition
        assert node_of[h["pid"]] == placement[h["kind"]][h["partition"]]["node_id"]
        assert h["worker"] == h["partition"] % 2
    # same seed, same grid, same partitions: the very same per-minibatch values (so the same
    # row order in every hop) and the same epoch metrics as the local engine
    assert _per_hop_metrics(exp.catalog_path) == _per_hop_metrics(local_exp.catalog_path)
    _same_history(result, reference)
    assert set(result.table["status"]) == {"done"}
    # the driver holds every model's latest state
    assert Path(result.best["checkpoint"]).is_file()
    # test and predict hops run on the nodes too, with the same results
    tested = exp.run_test(ToySpec())
    predicted = exp.run_predict(ToySpec())
    assert tested == local_exp.run_test(ToySpec())
    assert predicted.read_bytes() == local_exp.run_predict(ToySpec()).read_bytes()
    local_exp.close()


def test_killed_actor_loses_no_hop(data: dict[str, Any], tmp_path: Path) -> None:
    catalog = data["root"] / "fit-kill" / "catalog.sqlite"
    killed: list[tuple[int, float]] = []

    def worker_1_busy_after_6_hops() -> bool:
        rows = hop_rows(catalog)
        done = [r for r in rows if r["status"] == "done"]
        return (
            len(done) >= 6
            and any(r["status"] == "running" and r["worker"] == 1 for r in rows)
            and any(r["worker"] == 1 for r in done)
        )

    def kill_worker_1() -> None:  # its actor: the pid of its hops
        pid = [r["pid"] for r in hop_rows(catalog, "done") if r["worker"] == 1][-1]
        os.kill(pid, signal.SIGKILL)
        killed.append((pid, time.time()))

    watch = _watch(worker_1_busy_after_6_hops, kill_worker_1)
    result, exp = _fit(data, "fit-kill", "ray", SlowNodeSpec(tmp_path))
    watch.join()
    [(pid, when)] = killed
    rows = hop_rows(exp.catalog_path)
    # worker 1 got one new actor (worker 0 none), which ran the rest of worker 1's hops
    pids = {w: {r["pid"] for r in rows if r["worker"] == w and r["pid"]} for w in (0, 1)}
    assert len(pids[0]) == 1 and len(pids[1]) == 2 and pid in pids[1]
    (new,) = pids[1] - {pid}
    first_new = min(r["start"] for r in rows if r["pid"] == new)
    assert all(r["start"] < when for r in rows if r["pid"] == pid)
    lost = [r for r in rows if r["status"] == "lost"]
    # the hop it ran, and the one queued behind it if there was one (not the model's fault),
    # each recorded as the actor's death after the kill and before the new actor's first hop
    assert len([r for r in lost if "queued behind" not in r["error"]]) == 1 and len(lost) <= 2
    for r in lost:
        assert r["worker"] == 1 and "Ray actor died" in r["error"]
        assert when <= r["end"] <= first_new
    done = Counter((r["model_id"], r["kind"], r["partition"], r["epoch"]) for r in rows)
    expected = {
        (f"m{i:03d}", k, p, e)
        for i in range(4)
        for k in ("train", "val")
        for p in (0, 1)
        for e in range(EPOCHS)
    }
    finished = Counter(
        (r["model_id"], r["kind"], r["partition"], r["epoch"])
        for r in rows
        if r["status"] == "done"
    )
    assert set(finished) == expected and set(finished.values()) == {1}
    assert sum(done.values()) == len(expected) + len(lost)
    placement = data["manifest"]["ray"]["placement"]
    node_of = _nodes(tmp_path)
    assert node_of[new] == node_of[pid]  # the replacement stayed on the node with the data
    for r in rows:
        if r["status"] == "done":
            assert node_of[r["pid"]] == placement[r["kind"]][r["partition"]]["node_id"]
    reference, _ = _fit(data, "fit-kill-local", "local", SlowSpec(0.02))
    _same_history(result, reference)


def _gated_engine(data: dict[str, Any], tmp_path: Path) -> Any:
    """A RayEngine over the Ray ETL's data with a :class:`GatedSpec` gated by ``tmp_path``."""
    from cerebro.engine.ray import RayEngine

    exp = Experiment(dict(data["params"], output_dir=str(tmp_path / "x")), workers=2)
    owned = [{"train": [0]}, {"train": [1]}]
    data_dir = str(data["root"] / "ray" / "data")
    return RayEngine(GatedSpec(tmp_path), data_dir, owned, str(exp._misc_dir()))


@pytest.mark.timeout(180)
def test_replacement_actor_that_never_starts_is_an_error(
    data: dict[str, Any], tmp_path: Path
) -> None:
    from cerebro import WorkerError
    from cerebro.engine import WorkerLost

    engine = _gated_engine(data, tmp_path)
    try:
        engine._timeout = 3.0  # for the replacement only (the first start took longer)
        (tmp_path / "gate").touch()  # the replacement's set-up never finishes
        engine.kill_worker(1)  # the testing hook (NOTE [ killing a worker in a test ])
        engine.submit(1, hop_task(1))
        events: list[Any] = []
        with pytest.raises(WorkerError, match="worker 1's actor did not start .* within 3 s"):
            deadline = time.time() + 60
            while time.time() < deadline:
                events += engine.poll(timeout=1.0)
        assert [type(e) for e in events] == [WorkerLost]
    finally:
        engine.shutdown()


class BadETL(ToyETL):
    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        if row["id"] == 1005:
            raise ValueError("bad row")
        return super().row_prep(row, mode, object_dir)


class BadInitSpec(ToySpec):
    def initialize_worker(self) -> None:
        raise RuntimeError("no GPU driver")


def test_errors_name_the_function_and_where(data: dict[str, Any]) -> None:
    from cerebro import UserCodeError
    from cerebro.engine import _ray_nodes
    from cerebro.engine.ray import RayEngine

    exp = Experiment(
        dict(data["params"], output_dir=str(data["root"] / "bad")), workers=2, verbose=False
    )
    with pytest.raises(UserCodeError, match=r"BadETL.row_prep failed for split 'train', row id"):
        _ray_etl(BadETL(), exp, data["root"] / "bad-nodes")
    assert not (exp.data_dir / "manifest.json").exists()
    assert not _ray_nodes._IDLE  # a failed ETL's actors are killed, not kept for a fit
    owned = [{"train": [0]}, {"train": [1]}]
    data_dir = str(data["root"] / "ray" / "data")
    with pytest.raises(UserCodeError, match=r"BadInitSpec.initialize_worker failed for worker"):
        RayEngine(BadInitSpec(), data_dir, owned, str(exp._misc_dir()))


class LinkOutETL(ToyETL):
    """Object paths the driver found inside train_dir, that turn into links out of it while
    the ETL runs: the first row_prep call of each chunk repoints every other row's file."""

    def set_features(self) -> list[str]:
        return ["blob"]

    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        assert object_dir is not None
        outside = Path(object_dir).parent / "secret.txt"
        for f in Path(object_dir).iterdir():
            if f.name != row["blob"] and not f.is_symlink():
                tmp = f.with_name(f".{f.name}.{os.getpid()}")
                tmp.symlink_to(outside)
                os.replace(tmp, f)
        return super().row_prep(row, mode, object_dir)


def test_object_paths_are_checked_on_the_node_that_runs_row_prep(
    data: dict[str, Any], tmp_path: Path
) -> None:
    from cerebro import ParamsError
    from cerebro.engine import _ray_nodes

    objs = tmp_path / "objs"
    objs.mkdir()
    (tmp_path / "secret.txt").write_text("outside")
    train = pd.read_csv(data["params"]["train_main"]).iloc[:40]
    for i in train["id"]:
        (objs / f"{i}.bin").write_bytes(b"ok")
    train.assign(blob=[f"{i}.bin" for i in train["id"]]).to_csv(tmp_path / "t.csv", index=False)
    params = {"train_main": str(tmp_path / "t.csv"), "train_dir": str(objs)}
    exp = Experiment(dict(params, output_dir=str(tmp_path / "run")), workers=2, verbose=False)
    with pytest.raises(ParamsError) as e:
        _ray_etl(LinkOutETL(), exp, tmp_path / "nodes")
    message = str(e.value)
    assert "column 'blob'" in message and "is a symbolic link" in message
    assert "where row_prep reads them" in message  # refused on the node, not the driver
    assert not (exp.data_dir / "manifest.json").exists()
    assert not _ray_nodes._IDLE


def test_lost_node_stops_the_fit_and_resume_completes(
    cluster: Any, data: dict[str, Any], tmp_path: Path
) -> None:
    from cerebro import WorkerError
    from cerebro.engine.ray import ray_etl

    extra = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    exp = _ray_experiment(data, "three", workers=3)

    def etl() -> dict[str, Any]:
        return ray_etl(
            ToyETL(),
            exp.params,
            exp.data_dir,
            exp._misc_dir(),
            partitions=3,
            fraction=1.0,
            seed=1,
            node_data_dir=str(data["root"] / "three-nodes" / "{node_id}"),
            progress=False,
        )

    placement = etl()["ray"]["placement"]["train"]
    assert extra.node_id in {e["node_id"] for e in placement}

    # After 5 hops the train hops wait (GatedSpec's hold file) while the node goes away;
    # then the fit goes on, and stops when it needs the lost node's worker.
    hold = tmp_path / "hold"

    def remove_node() -> None:
        hold.touch()
        cluster.remove_node(extra)
        hold.unlink()

    grid = {**GRID, "hold": [True]}
    watch = _watch(lambda: done_hops(exp.catalog_path) >= 5, remove_node)
    with pytest.raises(WorkerError, match="left the cluster|not an alive node"):
        exp.run_fit(GatedSpec(tmp_path), grid, num_epochs=EPOCHS, seed=3)
    watch.join()
    before = hop_rows(exp.catalog_path, "done")
    assert len(before) >= 5
    # the way out the error names: preprocess again on the nodes left, then resume
    assert etl()["ray"]["placement"]["train"] != placement
    result = exp.run_fit(GatedSpec(tmp_path), grid, num_epochs=EPOCHS, seed=3)
    rows = hop_rows(exp.catalog_path)
    done = Counter(
        (r["model_id"], r["kind"], r["partition"], r["epoch"])
        for r in rows
        if r["status"] == "done"
    )
    assert len(done) == 4 * 2 * 3 * EPOCHS and set(done.values()) == {1}
    assert {r["hop_id"] for r in before} <= {r["hop_id"] for r in rows if r["status"] == "done"}
    assert set(result.table["status"]) == {"done"}


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from cerebro._imports import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'cerebro-mop\[ray\]'"):
        import_ray()


LOCAL = """
import json, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from cerebro import Experiment
from cerebro.engine.ray import RayEngine, connect, ray_etl
from toy import ToyETL, ToySpec, write_toy_csvs

def listening():
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A":  # LISTEN
                out.add(f[1])
    return out

before = listening()
ray = connect(None, num_cpus=2)
nodes = [n["NodeManagerAddress"] for n in ray.nodes()]
new = sorted(listening() - before)
exp = Experiment(dict(write_toy_csvs(Path("csv")), output_dir="run"), workers=2, verbose=False)
m = ray_etl(ToyETL(), exp.params, exp.data_dir, exp._misc_dir(), partitions=2, fraction=1.0,
            seed=1, progress=False)
ray.shutdown()
# a new Ray instance (a later process, a resume) gives the node a new id: the engine finds
# the data by the node's address
ray = connect(None, num_cpus=2)
owned = [{{"train": [0]}}, {{"train": [1]}}]
engine = RayEngine(ToySpec(), str(exp.data_dir), owned, str(exp._misc_dir()))
etl_nodes = [e["node_id"] for e in m["ray"]["placement"]["train"]]
moved = [i["node_id"] for i in engine.info] != etl_nodes
engine.shutdown()
ray.shutdown()
print(json.dumps({{"nodes": nodes, "new": new, "new_node_id": moved}}))
"""


def _loopback(hex_addr: str) -> bool:
    ip = hex_addr.split(":")[0]
    if len(ip) == 8:  # IPv4, little-endian
        return ip.endswith("7F")
    return ip in ("00000000000000000000000001000000",) or (
        ip.startswith("0000000000000000FFFF0000") and ip.endswith("7F")
    )


def test_local_instance_listens_on_loopback_only(tmp_path: Path) -> None:
    """``address=None``: a local Ray whose every server listens on 127.0.0.1 (own process);
    its ETL output serves a later Ray instance, whose node has another id."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run(
        [sys.executable, "-c", LOCAL.format(tests=str(Path(__file__).resolve().parent))],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["nodes"] == ["127.0.0.1"]
    assert report["new"], "Ray opened no listening socket?"
    assert all(_loopback(a) for a in report["new"]), report["new"]
    assert report["new_node_id"]


def test_deterministic_fit_on_ray_matches_local_on_another_worker_count(
    data: dict[str, Any],
) -> None:
    """NOTE [ same bits at any scale ]: 2 Ray actors on two nodes and 1 local worker (with
    the cores of 2) train the same weights, bit for bit, in deterministic mode."""
    from test_same_bits import tensors

    grid = {"lr": [0.05], "hidden": [16384], "batch_size": [16]}
    params = dict(data["params"], output_dir=str(data["root"] / "det-local"))
    with Experiment(
        dict(params, etl_dir=str(data["local"].data_dir)), workers=1, verbose=False
    ) as local:
        local.run_fit(WideSpec(), grid, num_epochs=2, seed=5, deterministic=True)
    exp = _ray_experiment(data, "det-ray", etl_dir=str(data["root"] / "ray" / "data"))
    exp.run_fit(WideSpec(), grid, num_epochs=2, seed=5, deterministic=True)
    exp.close()
    a, b = tensors(local.output_dir), tensors(exp.output_dir)
    assert a.keys() == b.keys() and len(a) == 3
    for key in a:
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
    assert _per_hop_metrics(local.catalog_path) == _per_hop_metrics(exp.catalog_path)
