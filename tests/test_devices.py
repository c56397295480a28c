"""Several devices per worker (``Experiment(devices_per_worker=k)``): each worker is a
process group of k CPU ranks (gloo) that runs every hop data-parallel with DDP.

Real processes on the session's toy data (2 partitions). The fits are small: on 2 cores a
2 × 2 fit runs four processes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch

from cerebro import Experiment
from cerebro.errors import ParamsError
from toy import ToySpec, computed, hop_rows

GRID = {"lr": [0.05], "batch_size": [16]}
EPOCHS = 2


def _fit(data: dict[str, str], out: Path, devices: Any, spec: Any = None) -> Any:
    with Experiment(
        dict(data, output_dir=str(out)), workers=2, devices_per_worker=devices, verbose=False
    ) as exp:
        return exp.run_fit(spec or ToySpec(), GRID, num_epochs=EPOCHS, seed=3)


def _val_acc(result: Any) -> float:
    return float(result.table.set_index("model_id").loc["m000", "val_acc"])


def _every_hop_once(run: Path) -> None:
    hops, _ = computed(run / "catalog.sqlite")  # (asserts that no hop was done twice)
    # each epoch: 2 train hops and 2 val hops (one per partition) of the one model
    assert sorted(hops) == sorted(
        ("m000", kind, p, e) for e in range(EPOCHS) for kind in ("train", "val") for p in (0, 1)
    )


@pytest.fixture(scope="module")
def two_by_two(toy_data: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    run = tmp_path_factory.mktemp("devices") / "run"
    return run, _fit(toy_data, run, 2)


def test_two_workers_of_two_ranks_run_every_hop_once(two_by_two: Any) -> None:
    run, result = two_by_two
    _every_hop_once(run)
    assert result.table.set_index("model_id").loc["m000", "status"] == "done"


def test_two_ranks_learn_as_one_and_save_the_plain_checkpoint(
    two_by_two: Any, toy_data: dict[str, str], tmp_path: Path
) -> None:
    run, result = two_by_two
    one = _fit(toy_data, tmp_path / "one", 1)
    assert abs(_val_acc(result) - _val_acc(one)) <= 0.1, (_val_acc(result), _val_acc(one))
    assert _val_acc(result) >= 0.8
    # the checkpoint is today's format: the unwrapped module's state_dict, rank 0's RNG
    last = sorted((run / "models" / "m000").glob("*.pt"))[-1]
    state = torch.load(last, map_location="cpu", weights_only=False)
    model = ToySpec().create_model_components(GRID | {"lr": 0.05, "batch_size": 16})["model"]
    model.load_state_dict(state["components"]["model"])  # no "module." prefixes
    assert set(state) == {"model_id", "hyperparams", "epoch", "components", "rng"}


def test_a_model_hops_between_a_two_rank_and_a_one_rank_worker(
    toy_data: dict[str, str], tmp_path: Path
) -> None:
    result = _fit(toy_data, tmp_path / "run", [2, 1])
    _every_hop_once(tmp_path / "run")
    pids = {r["pid"] for r in hop_rows(tmp_path / "run" / "catalog.sqlite") if r["pid"]}
    assert len(pids) == 2  # both workers ran hops of the model: it hopped between them
    assert _val_acc(result) >= 0.8
    # the run folder remembers the devices, so from_dir / resume start the same workers
    again = Experiment.from_dir(tmp_path / "run", verbose=False)
    try:
        assert again.devices_per_worker == [2, 1] and again.ranks == [2, 1]
    finally:
        again.close()


class KillsRankOnce(ToySpec):
    """SIGKILLs rank 1 in its first train minibatch while the file ``armed`` exists, once."""

    def __init__(self, armed: str) -> None:
        self.armed = armed

    def train(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_rank() == 1 and os.path.exists(self.armed):
            os.unlink(self.armed)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().train(model_object, minibatch, hyperparams, device)


def test_a_killed_rank_loses_no_hop(
    toy_data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"  # the workers' TMPDIR: where their groups meet
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    armed = tmp_path / "armed"
    armed.touch()
    result = _fit(toy_data, tmp_path / "run", 2, KillsRankOnce(str(armed)))
    assert not armed.exists()  # a rank was killed
    # the killed worker's group folder went when its replacement started, the others' at
    # their exit (NOTE [ scratch folders ])
    assert not list(scratch.glob("cerebro-group-*")), list(scratch.iterdir())
    _every_hop_once(tmp_path / "run")
    db = sqlite3.connect(tmp_path / "run" / "catalog.sqlite")
    lost = db.execute("SELECT error FROM hops WHERE status='lost'").fetchall()
    db.close()
    assert len(lost) == 1 and "rank 1" in lost[0][0] and "signal 9" in lost[0][0], lost
    assert result.table.set_index("model_id").loc["m000", "status"] == "done"


@pytest.mark.parametrize(
    ("devices", "error", "match"),
    [
        (0, ParamsError, r"devices_per_worker must be at least 1, got 0; pass an int >= 1"),
        ("2", TypeError, r"devices_per_worker must be an int or a list of ints, got str"),
        (1.5, TypeError, r"devices_per_worker must be an int .* got float"),
        (True, TypeError, r"devices_per_worker must be an int .* got bool"),
        ([2], ParamsError, r"devices_per_worker lists 1 counts for workers=2"),
    ],
)
def test_bad_device_counts_are_refused(
    toy_data: dict[str, str], tmp_path: Path, devices: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        Experiment(dict(toy_data, output_dir=str(tmp_path)), workers=2, devices_per_worker=devices)


def test_more_ranks_than_minibatch_rows_and_ray_are_refused(
    toy_data: dict[str, str], tmp_path: Path
) -> None:
    params = dict(toy_data, output_dir=str(tmp_path))
    with Experiment(params, workers=2, devices_per_worker=4, verbose=False) as exp:
        with pytest.raises(ParamsError, match=r"batch_size=2 .* devices_per_worker=4.*>= 4"):
            exp.run_fit(ToySpec(), {"lr": [0.1], "batch_size": [8, 2]}, num_epochs=1)
    with pytest.raises(ParamsError, match="local engine only"):
        Experiment(params, workers=2, devices_per_worker=2, engine="ray")


def test_a_process_group_listens_on_loopback_only() -> None:
    """NOTE [ loopback only ]: the ranks meet at a file, and gloo's connections are bound to
    the loopback interface: nothing a process of the group holds is reachable from another
    machine."""
    from test_worker_env import _inet_sockets

    from cerebro.worker._group import Group

    group = Group(2, 1, "cpu")
    try:
        group.join()
        found, _ = _inet_sockets([os.getpid(), *group.pids()])
        sockets = [s for held in found.values() for s in held]
        assert sockets, "gloo opened no socket?"
        loopback = ("0100007F:", "0000000000000000FFFF00000100007F:", "0" * 24 + "01000000:")
        assert all(s.split()[1].startswith(loopback) for s in sockets), sockets
    finally:
        group.close()
