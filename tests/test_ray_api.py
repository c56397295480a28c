"""The same experiment through the public API on the Ray engine: ``Experiment(engine="ray",
address=..., resources_per_worker=...)`` joins a running Ray cluster (one node, loopback)
and computes exactly what the local engine computes."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install 'cerebro-mop[ray]'")

from cerebro import Experiment  # noqa: E402
from cerebro.engine.local import threads_per_worker  # noqa: E402
from toy import ToyETL, ToySpec  # noqa: E402

GRID = {"lr": [0.05, 0.01], "batch_size": [32]}
# Each actor gets the torch threads a local worker gets, so both do the same arithmetic.
THREADS = threads_per_worker(2)


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A running one-node Ray cluster on loopback, that this process has not joined."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2 * THREADS,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        },
    )
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        ray_constants.ENABLE_RAY_CLUSTER = True


def _hops(catalog: Path) -> dict[tuple[str, str, int, int], Any]:
    con = sqlite3.connect(catalog)
    try:
        rows = con.execute(
            "SELECT model_id, kind, partition, epoch, metrics FROM hops WHERE status='done'"
        ).fetchall()
    finally:
        con.close()
    return {tuple(r[:4]): json.loads(r[4])["values"] for r in rows}


def test_experiment_on_ray_matches_local(
    toy_params: dict[str, str], tmp_path: Path, cluster: Any
) -> None:
    import ray

    local = Experiment(
        dict(toy_params, output_dir=str(tmp_path / "local")), workers=2, verbose=False
    )
    local.run_etl(ToyETL(), seed=1)
    expected = local.run_fit(ToySpec(), GRID, num_epochs=2, seed=1)

    resources = {"CPU": THREADS}
    exp = Experiment(
        toy_params,
        workers=2,
        engine="ray",
        address=cluster.address,
        resources_per_worker=resources,
        verbose=False,
    )
    exp.run_etl(ToyETL(), seed=1)
    assert ray.is_initialized()  # joined the cluster at that address
    assert ray.get_runtime_context().gcs_address == cluster.address
    result = exp.run_fit(ToySpec(), GRID, num_epochs=2, seed=1)
    assert set(result.table["status"]) == {"done"}
    # the very same numbers: every hop's per-minibatch metrics, every epoch metric, the
    # results table and the test metrics (test_ray_engine compares predictions too)
    assert _hops(exp.catalog_path) == _hops(local.catalog_path)
    assert len(_hops(exp.catalog_path)) == 2 * 2 * 2 * 2
    keys = ["model_id", "epoch", "split", "metric"]
    a = result.history.sort_values(keys).reset_index(drop=True)
    b = expected.history.sort_values(keys).reset_index(drop=True)
    assert a.equals(b)
    numbers = [c for c in result.table.columns if c not in ("train_seconds",)]
    assert result.table[numbers].equals(expected.table[numbers])
    assert exp.run_test(ToySpec()) == local.run_test(ToySpec())
    local.close()

    again = Experiment.from_dir(toy_params["output_dir"], verbose=False)
    assert (again.engine, again.address, again.resources_per_worker) == (
        "ray",
        cluster.address,
        resources,
    )


def test_workers_of_two_devices_on_ray_match_local(
    toy_params: dict[str, str], tmp_path: Path, cluster: Any
) -> None:
    """``devices_per_worker=2`` on Ray: each actor leads a process group of two ranks on
    its node, and the fit's numbers are the local engine's, to the bit (a one-rank worker
    would differ: rank 1 draws its own dropout masks). A rank SIGKILLed in its first
    minibatch breaks the group: the actor is replaced and the hop runs again, lost once."""
    from test_devices import KillsRankOnce

    grid = {"lr": [0.05], "batch_size": [16]}
    local = Experiment(
        dict(toy_params, output_dir=str(tmp_path / "local")),
        workers=2,
        devices_per_worker=2,
        verbose=False,
    )
    local.run_etl(ToyETL(), seed=1)
    local.run_fit(ToySpec(), grid, num_epochs=2, seed=1)
    local.close()
    exp = Experiment(
        toy_params,
        workers=2,
        engine="ray",
        address=cluster.address,
        resources_per_worker={"CPU": THREADS},
        devices_per_worker=2,
        verbose=False,
    )
    exp.run_etl(ToyETL(), seed=1)
    armed = tmp_path / "armed"
    armed.touch()
    result = exp.run_fit(KillsRankOnce(str(armed)), grid, num_epochs=2, seed=1)
    assert not armed.exists()  # a rank was killed
    assert set(result.table["status"]) == {"done"}
    assert _hops(exp.catalog_path) == _hops(local.catalog_path)
    assert len(_hops(exp.catalog_path)) == 2 * 2 * 2
    db = sqlite3.connect(exp.catalog_path)
    lost = db.execute("SELECT error FROM hops WHERE status='lost'").fetchall()
    db.close()
    assert len(lost) == 1 and "rank 1" in lost[0][0] and "signal 9" in lost[0][0], lost
    exp.close()
