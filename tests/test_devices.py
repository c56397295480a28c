"""Several devices per worker (``Experiment(devices_per_worker=k)``): each worker is a
process group of k CPU ranks (gloo) that runs every hop data-parallel with DDP.

Real processes on the session's toy data (2 partitions). The fits are small: on 2 cores a
2 × 2 fit runs four processes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from cerebro import Experiment
from cerebro.errors import ParamsError, UserCodeError
from toy import ToySpec, computed, hop_rows

GRID = {"lr": [0.05], "batch_size": [16]}
EPOCHS = 2


def _fit(data: dict[str, str], out: Path, devices: Any, spec: Any = None, **how: Any) -> Any:
    with Experiment(
        dict(data, output_dir=str(out)), workers=2, devices_per_worker=devices, verbose=False
    ) as exp:
        return exp.run_fit(spec or ToySpec(), GRID, num_epochs=EPOCHS, seed=3, **how)


def _checkpoints(run: Path) -> list[dict[str, torch.Tensor]]:
    return [
        torch.load(p, map_location="cpu", weights_only=False)
        for p in sorted((run / "models" / "m000").glob("*.pt"))
    ]


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


@pytest.fixture(scope="module")
def one_by_one(toy_data: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    run = tmp_path_factory.mktemp("devices") / "run"
    return run, _fit(toy_data, run, 1)


def test_two_workers_of_two_ranks_run_every_hop_once(two_by_two: Any) -> None:
    run, result = two_by_two
    _every_hop_once(run)
    assert result.table.set_index("model_id").loc["m000", "status"] == "done"


def test_two_ranks_learn_as_one_and_save_the_plain_checkpoint(
    two_by_two: Any, one_by_one: Any
) -> None:
    run, result = two_by_two
    _, one = one_by_one
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


def test_fsdp_trains_what_ddp_trains_and_saves_the_plain_checkpoint(
    two_by_two: Any, toy_data: dict[str, str], tmp_path: Path
) -> None:
    """NOTE [ FSDP in a hop ]: sharded parameters, gradients and momentum, the same rows
    and dropout masks per rank as DDP: the same model, up to the order of float sums."""
    ddp_run, _ = two_by_two
    result = _fit(toy_data, tmp_path / "run", 2, parallelism="fsdp")
    _every_hop_once(tmp_path / "run")
    assert _val_acc(result) >= 0.8
    ddp, fsdp = _checkpoints(ddp_run), _checkpoints(tmp_path / "run")
    assert len(ddp) == len(fsdp) >= 1
    for a, b in zip(ddp, fsdp, strict=True):
        assert set(b) == {"model_id", "hyperparams", "epoch", "components", "rng"}
        for key, value in a["components"]["model"].items():
            torch.testing.assert_close(b["components"]["model"][key], value, atol=1e-5, rtol=0)
        # the momentum buffers, gathered from the shards into the plain optimizer's format
        moments = [s["momentum_buffer"] for s in b["components"]["optimizer"]["state"].values()]
        for m, n in zip(moments, a["components"]["optimizer"]["state"].values(), strict=True):
            torch.testing.assert_close(m, n["momentum_buffer"], atol=1e-5, rtol=0)
        assert torch.equal(a["rng"], b["rng"])


def test_an_fsdp_model_hops_to_a_one_rank_worker_and_back(
    toy_data: dict[str, str], tmp_path: Path
) -> None:
    result = _fit(toy_data, tmp_path / "run", [2, 1], parallelism="fsdp")
    _every_hop_once(tmp_path / "run")
    pids = {r["pid"] for r in hop_rows(tmp_path / "run" / "catalog.sqlite") if r["pid"]}
    assert len(pids) == 2 and _val_acc(result) >= 0.8


def test_auto_times_each_candidate_once_per_model_and_keeps_the_fastest(
    toy_data: dict[str, str], tmp_path: Path
) -> None:
    """NOTE [ choosing the parallelism ]: the first train hop on a two-rank worker runs the
    trials; the choice and every timing are in the catalog and the table, and a fit run
    again (a resume) keeps them."""
    grid = {"lr": [0.05], "batch_size": [16], "hidden": [8, 16]}
    params = dict(toy_data, output_dir=str(tmp_path / "run"))
    with Experiment(params, workers=2, devices_per_worker=[2, 1], verbose=False) as exp:
        result = exp.run_fit(ToySpec(), grid, num_epochs=EPOCHS, seed=3, parallelism="auto")
    db = sqlite3.connect(tmp_path / "run" / "catalog.sqlite")
    rows = db.execute("SELECT model_id, choice, trials, worker FROM parallelism").fetchall()
    db.close()
    assert sorted(r[0] for r in rows) == ["m000", "m001"]
    for _model, choice, trials, worker in rows:
        timings = json.loads(trials)
        assert worker == 0  # the two-rank worker
        assert set(timings) == {"single", "ddp", "fsdp"}
        assert all(isinstance(t, float) and t > 0 for t in timings.values()), timings
        assert choice == min(timings, key=timings.get)
    table = result.table.set_index("model_id")
    for model_id, choice, trials, _ in rows:
        assert table.loc[model_id, "parallelism"] == choice
        assert table.loc[model_id, "trial_ddp_s"] == json.loads(trials)["ddp"]
    assert (table["status"] == "done").all() and (table["val_acc"] >= 0.8).all()
    with Experiment(params, workers=2, devices_per_worker=[2, 1], verbose=False) as exp:
        again = exp.run_fit(ToySpec(), grid, num_epochs=EPOCHS, seed=3, parallelism="auto")
    assert again.table["parallelism"].tolist() == table["parallelism"].tolist()


def test_auto_leaves_the_trained_model_as_without_trials(
    two_by_two: Any, one_by_one: Any, toy_data: dict[str, str], tmp_path: Path
) -> None:
    """The trials train throwaway copies: the model ends as a fit without trials would
    leave it. Bit for bit when the choice is DDP (the DDP fit) or rank 0 alone (a fit on
    one-device workers: rank 0 draws the model's own RNG stream); FSDP as close as it is
    to DDP. (This toy model is so small that rank 0 alone is the fastest.)"""
    _fit(toy_data, tmp_path / "run", 2, parallelism="auto")
    db = sqlite3.connect(tmp_path / "run" / "catalog.sqlite")
    ((choice,),) = db.execute("SELECT choice FROM parallelism").fetchall()
    db.close()
    reference, _ = one_by_one if choice == "single" else two_by_two
    for a, b in zip(_checkpoints(reference), _checkpoints(tmp_path / "run"), strict=True):
        for key, value in a["components"]["model"].items():
            got = b["components"]["model"][key]
            if choice == "fsdp":
                torch.testing.assert_close(got, value, atol=1e-5, rtol=0)
            else:
                assert torch.equal(got, value), (choice, key)
        assert torch.equal(a["rng"], b["rng"])


def _by_width(hp: dict[str, Any]) -> str:
    """A per-model choice, as a user writes one: shard the wide models."""
    return "fsdp" if hp["hidden"] >= 16 else "ddp"


def test_a_function_of_the_hyperparameters_chooses_per_model(
    toy_data: dict[str, str], tmp_path: Path
) -> None:
    """``parallelism=fn``: each model trains as ``fn(its hyperparameters)`` says (the
    table's ``parallelism``); the function is kept with the run, so resume needs none.
    (One worker of two ranks holding both partitions: the fewest processes.)"""
    grid = {"lr": [0.05], "batch_size": [16], "hidden": [8, 16]}
    params = dict(toy_data, output_dir=str(tmp_path / "run"))
    with Experiment(params, workers=1, devices_per_worker=2, verbose=False) as exp:
        result = exp.run_fit(ToySpec(), grid, num_epochs=1, seed=3, parallelism=_by_width)
    table = result.table.set_index("model_id")
    assert table["parallelism"].to_dict() == {"m000": "ddp", "m001": "fsdp"}
    assert "trial_ddp_s" not in table.columns  # no trials: nothing was timed
    assert (table["status"] == "done").all()
    # resume reads it back (test_a_per_model_fit_cannot_resume_without_its_saved_function)
    assert (tmp_path / "run" / "search" / "parallelism.pkl").is_file()


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        (lambda hp: {"ddp": 1}[hp["hidden"]], r"KeyError: 8"),
        (lambda hp: "pipeline", r"returned 'pipeline'; it must return one of \('ddp'"),
    ],
)
def test_a_failing_parallelism_function_names_itself_and_the_model(
    toy_data: dict[str, str], tmp_path: Path, rule: Any, match: str
) -> None:
    params = dict(toy_data, output_dir=str(tmp_path / "run"))
    # (asked for every train hop, before any worker runs it: one-device workers will do)
    with Experiment(params, workers=2, verbose=False) as exp:
        with pytest.raises(UserCodeError, match=match) as info:
            exp.run_fit(ToySpec(), GRID, num_epochs=1, seed=3, parallelism=rule)
    assert "parallelism (<lambda>)" in str(info.value)
    assert 'model m000 {"lr": 0.05, "batch_size": 16}' in str(info.value)


class FitsEightRows(ToySpec):
    """A device with room for 8 rows of a minibatch: more raise torch's out-of-memory
    error, as a GPU's allocator does."""

    def train(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        if len(minibatch[0]) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().train(model_object, minibatch, hyperparams, device)


def test_auto_counts_out_of_memory_as_not_feasible(
    toy_data: dict[str, str], tmp_path: Path
) -> None:
    """Rank 0 alone gets all 16 rows of a minibatch and runs out of memory; DDP and FSDP
    give each rank 8: the model trains with one of them, and fails nothing."""
    result = _fit(toy_data, tmp_path / "run", 2, FitsEightRows(), parallelism="auto")
    db = sqlite3.connect(tmp_path / "run" / "catalog.sqlite")
    ((choice, trials),) = db.execute("SELECT choice, trials FROM parallelism").fetchall()
    db.close()
    timings = json.loads(trials)
    assert timings["single"].startswith("out of memory (OutOfMemoryError: CUDA out of memory")
    assert choice in ("ddp", "fsdp") and isinstance(timings[choice], float)
    table = result.table.set_index("model_id")
    assert table.loc["m000", "status"] == "done" and pd.isna(table.loc["m000", "trial_single_s"])
    _every_hop_once(tmp_path / "run")


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


def test_more_ranks_than_minibatch_rows_are_refused(
    toy_data: dict[str, str], tmp_path: Path
) -> None:
    params = dict(toy_data, output_dir=str(tmp_path))
    with Experiment(params, workers=2, devices_per_worker=4, verbose=False) as exp:
        with pytest.raises(ParamsError, match=r"batch_size=2 .* devices_per_worker=4.*>= 4"):
            exp.run_fit(ToySpec(), {"lr": [0.1], "batch_size": [8, 2]}, num_epochs=1)


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


def test_a_ray_worker_of_k_devices_is_one_actor_holding_k_gpus() -> None:
    """On Ray a worker's ranks run on one node: its actor asks for all k GPUs, and its
    share of the node's CPUs is split among the ranks' torch threads."""
    from types import SimpleNamespace

    from cerebro.engine._ray_nodes import plan_slots

    node = {
        "NodeID": "n1",
        "Alive": True,
        "NodeManagerAddress": "10.0.0.1",
        "Resources": {"CPU": 16.0, "GPU": 8.0},
    }
    cluster = SimpleNamespace(nodes=lambda: [node])
    slots = plan_slots(cluster, ["n1", "n1"], None, [4, 2])  # type: ignore[arg-type]
    assert [s["options"]["num_gpus"] for s in slots] == [4.0, 2.0]
    assert [s["options"]["num_cpus"] for s in slots] == [8.0, 8.0]
    assert [s["threads"] for s in slots] == [2, 4] and {s["device"] for s in slots} == {"cuda"}
    few = plan_slots(cluster, ["n1", "n1"], None, [8, 8])  # type: ignore[arg-type]
    assert [s["options"]["num_gpus"] for s in few] == [4.0, 4.0]  # an even share, as before


def test_deterministic_fits_on_workers_of_two_ranks_are_the_same_at_any_worker_count(
    toy_data: dict[str, str], tmp_path: Path
) -> None:
    """NOTE [ same bits at any scale ] holds with several devices per worker: one worker of
    two ranks and two such workers train the very same bits (each hop splits its rows the
    same way, whichever worker runs it)."""
    runs = []
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        with Experiment(
            dict(toy_data, output_dir=str(out)), workers=w, devices_per_worker=2, verbose=False
        ) as exp:
            exp.run_fit(ToySpec(), GRID, num_epochs=EPOCHS, seed=3, deterministic=True)
        runs.append(_checkpoints(out))
    assert len(runs[0]) == len(runs[1]) >= 2
    for a, b in zip(*runs, strict=True):
        for key, value in a["components"]["model"].items():
            assert torch.equal(b["components"]["model"][key], value), key


def test_a_per_model_fit_cannot_resume_without_its_saved_function(tmp_path: Path) -> None:
    from cerebro._settings import FitSettings

    settings = FitSettings.check(GRID, 1, parallelism=_by_width)
    record = settings.to_json()
    assert record["parallelism"] == "per model"
    with pytest.raises(ParamsError, match=r"holds no saved parallelism function .*run the"):
        FitSettings.from_json(record, tmp_path / "search")
    (tmp_path / "search").mkdir()
    settings.parallelism_rule(tmp_path / "search")  # a fit's start keeps it
    back = FitSettings.from_json(record, tmp_path / "search").parallelism
    assert back({"hidden": 16}) == "fsdp" and back({"hidden": 8}) == "ddp"
