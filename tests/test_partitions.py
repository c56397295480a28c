from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cerebro.partitions import Partition, PartitionWriter, StructureError, write_partition
from cerebro.worker import HopTask, run_hop, setup_worker
from toy import ToySpec


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
    out = run_hop(state, HopTask("m0", hp, "train", 0, 0, None, None, 1, 2))
    assert getattr(out, "rows", None) == 0 and out.metrics == {} and CountingSpec.calls == 0
