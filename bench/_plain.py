"""The baseline Cerebro is measured against: a plain PyTorch loop, one config after another.

Everything model-related comes from the example module (``cerebro.examples.mnist`` or
``.digits``): the model and optimizer from its spec's ``create_model_components``, one step
from its ``train_step`` / ``eval_step``, the tensors from its ETL spec's ``row_prep``. So
the only difference from a Cerebro fit is who schedules the work.

Each config is trained on tensors loaded once, with a seeded shuffle per epoch, and
validated after every epoch (as a Cerebro fit does), with ``batch_size`` rows per minibatch.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch

__all__ = [
    "PlainResult",
    "load_split",
    "run_plain",
    "single_thread_times",
    "train_config",
    "warm_up",
]


@dataclass
class PlainResult:
    """One config trained by the plain loop."""

    hyperparams: dict[str, Any]
    wall_s: float  # training + per-epoch validation
    train_s: float
    val_s: float
    train_loss: float  # last epoch, mean over rows
    train_acc: float
    val_loss: float
    val_acc: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_split(
    etl_spec: Any, csv_path: str, object_dir: str | None, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a split's CSV and turn every row into tensors with the ETL spec's ``row_prep``.

    Returns:
        ``(inputs [N, ...], labels [N])``, rows in CSV order.
    """
    df = pd.read_csv(csv_path)
    xs, ys = [], []
    for row in df.to_dict(orient="records"):
        x, y = etl_spec.row_prep(row, mode, object_dir)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys).long()


def _mover(dev: torch.device, data: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """What brings a minibatch to ``dev``: nothing when the data is there already."""
    if data.device.type == dev.type:
        return lambda t: t
    return lambda t: t.to(dev)


def _batches(n: int, bs: int, order: torch.Tensor | None = None) -> list[Any]:
    if order is None:
        return [slice(i, min(i + bs, n)) for i in range(0, n, bs)]
    return [order[i : i + bs] for i in range(0, n, bs)]


def train_config(
    example: types.ModuleType,
    hyperparams: dict[str, Any],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_epochs: int,
    seed: int = 1,
    on_epoch: Callable[[int, float, float], None] | None = None,
    device: str = "cpu",
) -> PlainResult:
    """Train one config for ``num_epochs`` (validating after each) with ``example``'s code.

    ``on_epoch(epoch, val_loss, val_acc)``, when given, is called after each epoch's
    validation (where a tuner reports to its scheduler); its time counts as validation.
    On another ``device`` the model moves there and each minibatch is copied there as it is
    used (as a Cerebro worker does), unless the tensors already live there.
    """
    torch.manual_seed(seed)
    components = example.minibatch_spec.create_model_components(dict(hyperparams))
    model, optimizer = components["model"], components["optimizer"]
    dev = torch.device(device)
    model.to(dev)  # the same Parameter objects, so the optimizer follows (no-op on the CPU)
    bs = int(hyperparams["batch_size"])
    (xt, yt), (xv, yv) = train, val
    on = _mover(dev, xt)
    gen = torch.Generator().manual_seed(seed)
    train_s = val_s = 0.0
    tl = ta = vl = va = float("nan")
    for epoch in range(num_epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(yt), generator=gen).to(yt.device)
        tot_l = tot_a = 0.0
        for idx in _batches(len(yt), bs, order):
            loss, acc = example.train_step(model, optimizer, on(xt[idx]), on(yt[idx]))
            tot_l += loss * len(idx)
            tot_a += acc * len(idx)
        tl, ta = tot_l / len(yt), tot_a / len(yt)
        t1 = time.perf_counter()
        tot_l = tot_a = 0.0
        for sl in _batches(len(yv), bs):
            loss, acc = example.eval_step(model, on(xv[sl]), on(yv[sl]))
            n = sl.stop - sl.start
            tot_l += loss * n
            tot_a += acc * n
        vl, va = tot_l / max(1, len(yv)), tot_a / max(1, len(yv))
        if on_epoch is not None:
            on_epoch(epoch, vl, va)
        t2 = time.perf_counter()
        train_s += t1 - t0
        val_s += t2 - t1
    return PlainResult(dict(hyperparams), train_s + val_s, train_s, val_s, tl, ta, vl, va)


def warm_up(
    example: types.ModuleType,
    hyperparams: dict[str, Any],
    train: tuple[torch.Tensor, torch.Tensor],
    steps: int = 3,
    device: str = "cpu",
) -> None:
    """A few untimed steps, so one-time costs (lazy imports in ``torch.optim``, kernel and
    thread-pool set-up, a GPU's context and kernel loading) are not charged to the first
    config of the timed loop."""
    components = example.minibatch_spec.create_model_components(dict(hyperparams))
    model, optimizer = components["model"], components["optimizer"]
    model.to(device)
    bs = int(hyperparams["batch_size"])
    x, y = train[0][:bs].to(device), train[1][:bs].to(device)
    for _ in range(steps):
        example.train_step(model, optimizer, x, y)
    example.eval_step(model, x, y)


def run_plain(
    example: types.ModuleType,
    configs: Sequence[dict[str, Any]],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_epochs: int,
    threads: int,
    seed: int = 1,
    device: str = "cpu",
    resident: bool = False,
) -> tuple[float, list[PlainResult]]:
    """Train ``configs`` one after another in this process on ``threads`` torch threads.

    Args:
        device: where the models train; minibatches are copied there one at a time.
        resident: copy the whole data set to ``device`` once, before the clock starts.

    Returns:
        ``(total wall seconds, one result per config)``; one-time warm-up excluded.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    if resident:
        train = (train[0].to(device), train[1].to(device))
        val = (val[0].to(device), val[1].to(device))
    try:
        if configs:
            warm_up(example, configs[0], train, device=device)
        t0 = time.perf_counter()
        results = [
            train_config(example, hp, train, val, num_epochs, seed, device=device)
            for hp in configs
        ]
        return time.perf_counter() - t0, results
    finally:
        torch.set_num_threads(before)


def single_thread_times(
    example: types.ModuleType,
    configs: Sequence[dict[str, Any]],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_epochs: int,
    seed: int = 1,
) -> list[PlainResult]:
    """Each config's time on one thread: the work one MOP worker (one thread) must do.

    ``sum(r.wall_s) / workers`` is the ideal MOP fit time (perfect packing, no overhead).
    """
    return run_plain(example, configs, train, val, num_epochs, threads=1, seed=seed)[1]
