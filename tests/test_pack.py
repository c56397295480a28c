"""Packed checkpoints: the same state back from ``torch.load``, in fewer storage records."""

from __future__ import annotations

import zipfile
from collections import OrderedDict, defaultdict
from pathlib import Path

import torch

from cerebro._pack import pack


def _records(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return [n for n in z.namelist() if "/data/" in n and not n.endswith(".pkl")]


def _model_and_adam() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 3),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(5, 1, 6, 6)).sum().backward()
        opt.step()
    return model, opt


def test_a_packed_checkpoint_loads_back_the_same_training_state(tmp_path: Path) -> None:
    model, opt = _model_and_adam()
    state = {
        "components": {"model": model.state_dict(), "optimizer": opt.state_dict()},
        "rng": torch.get_rng_state(),
        "epoch": 3,
    }
    plain, packed = tmp_path / "plain.pt", tmp_path / "packed.pt"
    torch.save(state, plain)
    torch.save(pack(state), packed)
    # One record per dtype (float32 weights and moments, int64 BatchNorm count, uint8 RNG)
    # instead of one per tensor.
    assert len(_records(plain)) > 20 and len(_records(packed)) == 3
    a = torch.load(plain, weights_only=False)
    b = torch.load(packed, weights_only=False)
    assert b["epoch"] == 3 and torch.equal(a["rng"], b["rng"])
    assert b["components"]["model"]._metadata == a["components"]["model"]._metadata
    for name in a["components"]["model"]:
        x, y = a["components"]["model"][name], b["components"]["model"][name]
        assert torch.equal(x, y) and x.dtype == y.dtype and x.shape == y.shape
    # Restored into fresh objects, both go on training identically.
    runs = []
    for loaded in (a, b):
        m, o = _model_and_adam()
        m.load_state_dict(loaded["components"]["model"])
        o.load_state_dict(loaded["components"]["optimizer"])
        torch.set_rng_state(loaded["rng"])
        for _ in range(3):
            o.zero_grad()
            m(torch.randn(5, 1, 6, 6)).sum().backward()
            o.step()
        runs.append([p.detach().clone() for p in m.parameters()])
    assert all(torch.equal(x, y) for x, y in zip(*runs, strict=True))


def test_pack_keeps_structure_sharing_and_leaves_other_objects_alone() -> None:
    shared = torch.arange(6.0).reshape(2, 3)
    param = torch.nn.Parameter(torch.ones(2))
    sparse = torch.eye(3).to_sparse()
    state = OrderedDict(
        a=shared,
        b=shared,  # tied weights: one tensor under two names
        c=[torch.zeros(0), (shared.t(), 7)],  # an empty tensor; a non-contiguous one
        d={"param": param, "sparse": sparse, "text": "kept", "half": torch.ones(4).half()},
        e=defaultdict(list, {"x": torch.ones(2)}),
    )
    state.__dict__["note"] = "kept"
    packed = pack(state)
    assert type(packed) is OrderedDict and packed.__dict__["note"] == "kept"
    assert packed["a"] is packed["b"] and torch.equal(packed["a"], shared)
    assert (
        packed["a"].untyped_storage().data_ptr() == packed["c"][1][0].untyped_storage().data_ptr()
    )
    assert torch.equal(packed["c"][1][0], shared.t()) and packed["c"][1][1] == 7
    assert packed["c"][0].shape == (0,)
    assert packed["d"]["param"] is param and packed["d"]["sparse"] is sparse
    assert packed["d"]["half"].dtype == torch.float16 and packed["d"]["text"] == "kept"
    assert packed["e"].default_factory is list and torch.equal(packed["e"]["x"], torch.ones(2))
    packed["a"].add_(1)  # a copy: the input is untouched
    assert torch.equal(shared, torch.arange(6.0).reshape(2, 3))


def test_a_hop_checkpoint_skips_zip_crcs_and_leaves_the_setting_as_it_was(
    tmp_path: Path,
) -> None:
    from cerebro.worker import save_checkpoint
    from toy import make_task

    model, opt = _model_and_adam()
    task = make_task({"lr": 0.1})
    out = tmp_path / "step-00001.pt"
    for before in (True, False):
        torch.serialization.set_crc32_options(before)
        try:
            save_checkpoint({"model": model, "optimizer": opt}, str(out), task)
            assert torch.serialization.get_crc32_options() is before  # a hook's own saves
        finally:
            torch.serialization.set_crc32_options(True)
        with zipfile.ZipFile(out) as z:
            assert {i.CRC for i in z.infolist() if "/data/" in i.filename} == {0}
        loaded = torch.load(out, weights_only=False)
        fresh, _ = _model_and_adam()
        fresh.load_state_dict(loaded["components"]["model"])
        assert all(
            torch.equal(a, b)
            for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
        )
