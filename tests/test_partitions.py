from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cerebro import Experiment
from cerebro.engine.messages import HopOutcome, UserFailure
from cerebro.partitions import Partition, PartitionWriter, StructureError, write_partition
from cerebro.worker import run_hop, setup_worker
from toy import ToyETL, ToySpec, make_task


def _mapped_file(address: int) -> str:
    """The file mapped at ``address`` in this process (Linux), or ''."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return fields[5] if len(fields) > 5 else ""
    return ""


def test_fixed_shape_round_trip_is_memory_mapped(tmp_path: Path) -> None:
    rows = [
        (10 + i, ((torch.full((3,), float(i)), {"m": torch.tensor([i, i])}), torch.tensor(i % 2)))
        for i in range(7)
    ]
    write_partition(tmp_path / "part-00000", rows, len(rows))
    p = Partition(tmp_path / "part-00000")
    assert len(p) == 7 and p.ids.tolist() == list(range(10, 17))
    leaf = p.leaves[0]
    assert isinstance(leaf, torch.Tensor)
    assert _mapped_file(leaf.data_ptr()).endswith("leaf0.npy")  # zero-copy: the file's pages
    (x, d), y = p.batch(np.array([6, 0]))
    assert x.tolist() == [[6.0] * 3, [0.0] * 3]
    assert d["m"].tolist() == [[6, 6], [0, 0]]
    assert y.tolist() == [0, 0]
    (x, _), y = p.batch(slice(1, 3))
    assert x[:, 0].tolist() == [1.0, 2.0] and y.tolist() == [1, 0]
    (x, d), y = p.batch(torch.tensor([6, 0]))  # a hop's shuffled indices come as a tensor
    assert x[:, 0].tolist() == [6.0, 0.0] and d["m"].tolist() == [[6, 6], [0, 0]]
    assert p.row_ids(torch.tensor([6, 0])).tolist() == [16, 10]
    assert p.nbytes() > 0


def test_minibatch_of_an_input_label_pair_is_a_tuple(tmp_path: Path) -> None:
    rows = [(i, (torch.full((2,), float(i)), torch.tensor(i))) for i in range(5)]
    write_partition(tmp_path / "p", rows, 5)
    batch = Partition(tmp_path / "p").batch(torch.tensor([4, 1]))
    assert isinstance(batch, tuple) and len(batch) == 2
    assert batch[0].tolist() == [[4.0, 4.0], [1.0, 1.0]] and batch[1].tolist() == [4, 1]


def test_ragged_leaf_falls_back_to_list(tmp_path: Path) -> None:
    rows = [(i, (torch.arange(i + 1, dtype=torch.float32), torch.tensor(0))) for i in range(4)]
    write_partition(tmp_path / "p", rows, 4)
    p = Partition(tmp_path / "p")
    assert isinstance(p.leaves[0], list)
    x, y = p.batch(np.array([3, 1]))
    assert [t.tolist() for t in x] == [[0, 1, 2, 3], [0, 1]]
    x, _ = p.batch(np.array([2]))
    assert x.shape == (1, 3)  # same shapes in one minibatch stack
    x, _ = p.batch(torch.tensor([0, 3]))
    assert [t.tolist() for t in x] == [[0], [0, 1, 2, 3]]


def test_predict_rows_have_no_label(tmp_path: Path) -> None:
    write_partition(tmp_path / "p", [(5, (torch.zeros(2), None))], 1)
    x, y = Partition(tmp_path / "p").batch(slice(0, 1))
    assert y is None and x.shape == (1, 2)


def test_inconsistent_structure_is_an_error(tmp_path: Path) -> None:
    rows = [(0, (torch.zeros(2), torch.tensor(1))), (1, ((torch.zeros(2),), torch.tensor(1)))]
    with pytest.raises(
        StructureError,
        match=r"returned \(\(tensor,\), tensor\) for this row but \(tensor, tensor\) for earlier",
    ):
        write_partition(tmp_path / "p", rows, 2)


def test_not_tensors_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StructureError, match="got str"):
        write_partition(tmp_path / "p", [(0, ("text", torch.tensor(1)))], 1)


def test_partial_partition_never_appears(tmp_path: Path) -> None:
    rows = [(0, (torch.zeros(2), torch.tensor(1))), (1, (torch.zeros(2), "bad"))]
    with pytest.raises(StructureError):
        write_partition(tmp_path / "part-00000", rows, 2)
    assert not (tmp_path / "part-00000").exists()


class CountingSpec(ToySpec):
    calls = 0

    def train(self, *args: Any) -> dict[str, float]:
        CountingSpec.calls += 1
        return super().train(*args)


def test_empty_partition_loads_and_a_hop_on_it_runs_no_minibatch(tmp_path: Path) -> None:
    # More partitions than rows leaves some empty; a hop on one must not call the user's code.
    PartitionWriter(tmp_path / "train" / "part-00000", 0).close()
    p = Partition(tmp_path / "train" / "part-00000")
    assert len(p) == 0 and p.nbytes() == 0
    state: dict[str, Any] = {}
    info = setup_worker(state, CountingSpec(), str(tmp_path), {"train": [0]}, "", 1, "cpu")
    assert isinstance(info, dict)
    hp = {"lr": 0.1, "batch_size": 4}
    out = run_hop(
        state,
        make_task(hp),
    )
    assert getattr(out, "rows", None) == 0 and out.metrics == {} and CountingSpec.calls == 0


def test_batches_gathered_together_equal_one_gather_each(tmp_path: Path) -> None:
    # fixed-shape leaves are gathered several minibatches at once; ragged ones row by row
    rows = [
        (i, ((torch.full((3,), float(i)), torch.arange(i % 3 + 1)), torch.tensor(i)))
        for i in range(50)
    ]
    write_partition(tmp_path / "p", rows, 50)
    p = Partition(tmp_path / "p")
    assert isinstance(p.leaves[0], torch.Tensor) and isinstance(p.leaves[1], list)
    order = torch.from_numpy(np.random.default_rng(0).permutation(50))
    indices: list[Any] = [*torch.split(order, 8), slice(0, 4), slice(4, 9)]
    row = 3 * 4 + 8  # bytes of the fixed-shape leaves per row
    for gather_bytes in (1, 8 * row, 20 * row, 1 << 20):  # one, one, two and all per gather
        got = list(p.batches(indices, gather_bytes=gather_bytes))
        assert len(got) == len(indices)
        for index, ((x, r), y) in zip(indices, got, strict=True):
            (x0, r0), y0 = p.batch(index)
            assert torch.equal(x, x0) and torch.equal(y, y0)
            assert [t.tolist() for t in r] == [t.tolist() for t in r0]


def test_slices_of_a_fixed_shape_partition_are_views_cut_in_one_go(tmp_path: Path) -> None:
    rows = [(i, (torch.full((2,), float(i)), torch.tensor(i))) for i in range(10)]
    write_partition(tmp_path / "p", rows, 10)
    p = Partition(tmp_path / "p")
    order = torch.tensor([9, 8, 7, 6])
    indices: list[Any] = [slice(0, 4), slice(4, 8), order, slice(8, 10)]
    got = list(p.batches(indices))
    for index, (x, y) in zip(indices, got, strict=True):
        (x0, y0) = p.batch(index)
        assert torch.equal(x, x0) and torch.equal(y, y0)
    assert got[1][0].data_ptr() == p.leaves[0].data_ptr() + 4 * 2 * 4  # a view of the file


def test_gathered_minibatches_share_one_copy_and_stay_apart(tmp_path: Path) -> None:
    rows = [(i, (torch.full((2,), float(i)), torch.tensor(i))) for i in range(12)]
    write_partition(tmp_path / "p", rows, 12)
    p = Partition(tmp_path / "p")
    (x1, _), (x2, _), (x3, _) = p.batches(list(torch.split(torch.arange(12).flip(0), 4)))
    assert x1.untyped_storage().data_ptr() == x2.untyped_storage().data_ptr()  # one gather
    x1.add_(100)  # a user's in-place change touches neither its neighbours nor the file
    assert x2[:, 0].tolist() == [7.0, 6.0, 5.0, 4.0] and x3[:, 0].tolist() == [3, 2, 1, 0]
    assert p.batch(slice(8, 12))[0][:, 0].tolist() == [8.0, 9.0, 10.0, 11.0]


class LateBadSpec(ToySpec):
    """Returns a usable metric for the first minibatches, then an unusable one."""

    def __init__(self, bad_from: int, value: Any):
        self.bad_from, self.value, self.calls = bad_from, value, 0

    def train(self, *args: Any) -> dict[str, Any]:
        self.calls += 1
        out = super().train(*args)
        return {**out, "loss": self.value} if self.calls > self.bad_from else out


def _one_train_hop(toy_params: dict[str, str], spec: LateBadSpec) -> Any:
    """One train hop of 30 minibatches of 8 rows over the toy data's single partition."""
    with Experiment(toy_params, workers=1, verbose=False) as exp:
        exp.run_etl(ToyETL(), seed=1)
    assert len(Partition(exp.data_dir / "train" / "part-00000")) == 240
    state: dict[str, Any] = {}
    setup_worker(state, spec, str(exp.data_dir), {"train": [0]}, "", 1, "cpu")
    hp = {"lr": 0.1, "batch_size": 8}
    return run_hop(
        state,
        make_task(hp),
    )


@pytest.mark.parametrize(
    "bad_from, value, match",
    [
        (0, "x", "LateBadSpec.train returned metric 'loss' = str"),  # at once
        (13, [1.0], "LateBadSpec.train returned metric 'loss' = list"),  # between two checks
        (29, "x", "LateBadSpec.train returned metric 'loss' = str"),  # the last minibatch
    ],
)
def test_metrics_checked_in_batches_still_fail_the_hop(
    toy_params: dict[str, str], bad_from: int, value: Any, match: str
) -> None:
    # checked after minibatches 1, 9, 17, 25 and 30
    out = _one_train_hop(toy_params, LateBadSpec(bad_from, value))
    assert isinstance(out, UserFailure) and out.function == "LateBadSpec.train"
    assert re.search(match, out.message)


def test_a_nan_stops_a_train_hop_within_a_few_minibatches(toy_params: dict[str, str]) -> None:
    spec = LateBadSpec(3, float("nan"))
    out = _one_train_hop(toy_params, spec)
    assert getattr(out, "nonfinite", None) == "loss"
    assert spec.calls == 9  # the check after the 9th minibatch saw the NaN; 21 were not run


def test_a_hop_reports_one_size_per_minibatch_whose_metrics_it_kept(
    toy_params: dict[str, str],
) -> None:
    # metrics_agg weights each minibatch's metrics by these sizes
    out = _one_train_hop(toy_params, LateBadSpec(10**6, 0.5))
    assert isinstance(out, HopOutcome) and out.batch_sizes == [8] * 30
    assert all(len(v) == 30 for v in out.metrics.values())
    out = _one_train_hop(toy_params, LateBadSpec(3, float("nan")))  # stopped after 9
    assert isinstance(out, HopOutcome) and out.batch_sizes == [8] * 9
    assert all(len(v) == 9 for v in out.metrics.values())


def test_an_evaluation_hop_cuts_in_order_and_a_probe_reports_both_splits(
    toy_params: dict[str, str],
) -> None:
    with Experiment(toy_params, workers=1, verbose=False) as exp:
        exp.run_etl(ToyETL(), seed=1)
    state: dict[str, Any] = {}
    setup_worker(state, ToySpec(), str(exp.data_dir), {"train": [0], "val": [0]}, "", 1, "cpu")
    rows = len(state["partitions"][("val", 0)])
    hp = {"lr": 0.1, "batch_size": 7}
    out = run_hop(
        state,
        make_task(hp, "val"),
    )
    assert isinstance(out, HopOutcome) and out.rows == rows
    assert out.batch_sizes == [7] * (rows // 7) + ([rows % 7] if rows % 7 else [])
    assert torch.is_grad_enabled()  # evaluation's no_grad ends with the hop
    probe = run_hop(
        state,
        make_task(hp, "probe"),
    )
    assert isinstance(probe, HopOutcome) and probe.batch_sizes == [7, 7]
    assert {k.split("_")[0] for k in probe.metrics} == {"train", "val"}
