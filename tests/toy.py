"""A tiny, fast data set and specs shared by the tests (real CSVs, real processes)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from cerebro import ETLSpec, MinibatchSpec
from cerebro.engine.messages import HopTask, TaskKind

if TYPE_CHECKING:
    from cerebro._fit_state import FitState
    from cerebro.catalog import Catalog
    from cerebro.params import ModelConfig
    from cerebro.scheduler import Scheduler

FEATURES = 6


def write_toy_csvs(
    root: Path, n_train: int = 240, n_val: int = 60, n_test: int = 60, seed: int = 0
) -> dict[str, str]:
    """Two Gaussian blobs in FEATURES dims; returns params paths for every split."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, FEATURES)) + (y[:, None] * 2 - 1) * 1.0
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(FEATURES)])
    df["label"] = y
    df.insert(0, "id", np.arange(1000, 1000 + n))
    root.mkdir(parents=True, exist_ok=True)
    parts = {
        "train": df[:n_train],
        "val": df[n_train : n_train + n_val],
        "test": df[n_train + n_val :],
    }
    out = {}
    for split, d in parts.items():
        d.to_csv(root / f"{split}.csv", index=False)
        out[f"{split}_main"] = str(root / f"{split}.csv")
    parts["test"].drop(columns=["label"]).to_csv(root / "predict.csv", index=False)
    out["predict_main"] = str(root / "predict.csv")
    return out


class ToyETL(ETLSpec):
    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        x = torch.tensor([row[f"f{i}"] for i in range(FEATURES)], dtype=torch.float32)
        return x, (None if mode == "predict" else torch.tensor(int(row["label"])))


class ToySpec(MinibatchSpec):
    def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
        model = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, hyperparams.get("hidden", 8)),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(hyperparams.get("hidden", 8), 2),
        )
        opt = torch.optim.SGD(model.parameters(), lr=hyperparams["lr"], momentum=0.9)
        return {"model": model, "optimizer": opt}

    def _step(self, mo: dict[str, Any], minibatch: Any) -> tuple[torch.Tensor, float]:
        x, y = minibatch
        out = mo["model"](x)
        loss = torch.nn.functional.cross_entropy(out, y)
        return loss, (out.argmax(1) == y).float().mean().item()

    def train(
        self,
        model_object: dict[str, Any],
        minibatch: Any,
        hyperparams: dict[str, Any],
        device: Any,
    ) -> dict[str, float]:
        opt = model_object["optimizer"]
        opt.zero_grad()
        loss, acc = self._step(model_object, minibatch)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "acc": acc}

    def valtest(
        self,
        model_object: dict[str, Any],
        minibatch: Any,
        hyperparams: dict[str, Any],
        device: Any,
    ) -> dict[str, float]:
        loss, acc = self._step(model_object, minibatch)
        return {"loss": loss.item(), "acc": acc}

    def predict(
        self,
        model_object: dict[str, Any],
        minibatch: Any,
        hyperparams: dict[str, Any],
        device: Any,
    ) -> Any:
        x, _ = minibatch
        p = torch.softmax(model_object["model"](x), 1)
        conf, cls = p.max(1)
        return cls.tolist(), conf.tolist()


class WideSpec(ToySpec):
    """The toy model with an L2 penalty over a wide layer: summing 10^5 squares is split
    across torch's intra-op threads and rounds differently with another thread count (on a
    machine of 2 cores or more, 1 worker gets 2 threads and 2 workers 1 each)."""

    def _step(self, mo: dict[str, Any], minibatch: Any) -> tuple[torch.Tensor, float]:
        loss, acc = super()._step(mo, minibatch)
        l2 = sum(p.pow(2).sum() for p in mo["model"].parameters())
        return loss + 1e-6 * l2, acc


class SlowSpec(ToySpec):
    """Hops long enough to be killed, read or interrupted mid-way: each train minibatch
    sleeps ``delay`` seconds first."""

    delay = 0.01

    def __init__(self, delay: float | None = None) -> None:
        if delay is not None:
            self.delay = delay

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        time.sleep(self.delay)
        return super().train(model_object, minibatch, hyperparams, device)


def done_hops(catalog: Path) -> int:
    """Completed hops in a run's catalog; 0 while it (or its tables) does not exist yet."""
    if not Path(catalog).exists():
        return 0
    db = sqlite3.connect(catalog)
    try:
        return int(db.execute("SELECT COUNT(*) FROM hops WHERE status='done'").fetchone()[0])
    except sqlite3.OperationalError:  # no tables yet
        return 0
    finally:
        db.close()


def hop_rows(catalog: Path, status: str | None = None) -> list[sqlite3.Row]:
    """The catalog's hops in the order they were recorded (only those with ``status`` when
    given); none while it or its tables do not exist yet (read-only: the fit may be
    running, and a catalog file is created before its schema)."""
    try:
        db = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    db.row_factory = sqlite3.Row
    try:
        where, args = ("WHERE status=?", (status,)) if status is not None else ("", ())
        return db.execute(f"SELECT * FROM hops {where} ORDER BY hop_id", args).fetchall()
    except sqlite3.OperationalError:  # no tables yet
        return []
    finally:
        db.close()


def computed(catalog: Path) -> tuple[dict[tuple[Any, ...], Any], list[tuple[Any, ...]]]:
    """What a run's fit computed, from its catalog: each completed hop's per-minibatch
    metrics by (model, kind, partition, epoch) (a hop done twice is an error) and every
    epoch metric (model, epoch, split, name, value). Two runs computed the same when these
    are equal."""
    db = sqlite3.connect(catalog)
    try:
        hops = db.execute(
            "SELECT model_id, kind, partition, epoch, metrics FROM hops WHERE status='done'"
        ).fetchall()
        metrics = db.execute(
            "SELECT model_id, epoch, split, name, value FROM metrics "
            "ORDER BY model_id, epoch, split, name"
        ).fetchall()
    finally:
        db.close()
    count = Counter(h[:4] for h in hops)
    assert set(count.values()) == {1}, [key for key, n in count.items() if n > 1]
    return {h[:4]: json.loads(h[4])["values"] for h in hops}, metrics


class GatedSpec(ToySpec):
    """Worker set-up waits while the file ``gate`` exists, then fails if ``fail`` exists
    (touching ``failed`` first); a model with ``hold`` in its hyperparameters waits in
    ``train`` while ``hold`` exists (after touching ``inside``).
    Files, not timing, decide the order of events in the worker-restart tests."""

    def __init__(self, folder: Path) -> None:
        self.gate, self.hold, self.inside = (str(folder / n) for n in ("gate", "hold", "inside"))
        self.fail = str(folder / "fail")

    def initialize_worker(self) -> None:
        while os.path.exists(self.gate):
            time.sleep(0.01)
        if os.path.exists(self.fail):
            Path(self.fail + "ed").touch()  # "failed": the answer is on its way
            raise RuntimeError("no licence server")

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        if hyperparams.get("hold"):
            Path(self.inside).touch()
            while os.path.exists(self.hold):
                time.sleep(0.01)
        return super().train(model_object, minibatch, hyperparams, device)


def make_task(hyperparams: dict[str, Any], kind: TaskKind = "train", **fields: Any) -> HopTask:
    """A HopTask with a test's defaults (model ``m0``, partition 0, epoch 0, no checkpoint
    in or out, seeds 1 and 2): a test names only the fields it is about."""
    defaults: dict[str, Any] = dict(
        model_id="m0", partition=0, epoch=0, in_ckpt=None, out_ckpt=None, init_seed=1,
        shuffle_seed=2,
    )  # fmt: skip
    return HopTask(hyperparams=hyperparams, kind=kind, **(defaults | fields))


def hop_task(partition: int, **extra: Any) -> HopTask:
    """A train hop of a fresh model ``m<partition>`` on that partition, saving nothing."""
    hp = {"lr": 0.05, "batch_size": 16, **extra}
    return make_task(hp, model_id=f"m{partition}", partition=partition)


def poll_until(engine: Any, want: int, within: float = 60) -> list[Any]:
    """Poll an engine until ``want`` events came; returns them.

    Raises:
        TimeoutError: fewer than ``want`` events came within ``within`` seconds (the
            message lists those that did), rather than handing a short list on.
    """
    events: list[Any] = []
    deadline = time.time() + within
    while len(events) < want:
        if time.time() >= deadline:
            raise TimeoutError(
                f"poll_until: {len(events)} of {want} engine events within {within:g} s: "
                f"{events!r}"
            )
        events += engine.poll(timeout=1.0)
    return events


def wait_for(path: Path, within: float = 60) -> None:
    """Wait until ``path`` exists, e.g. a held hop's ``GatedSpec.inside`` file.

    Raises:
        TimeoutError: ``path`` did not appear within ``within`` seconds.
    """
    deadline = time.time() + within
    while not path.exists():
        if time.time() >= deadline:
            raise TimeoutError(f"wait_for: {path} did not appear within {within:g} s")
        time.sleep(0.01)


def worker_pids(parent: int | None = None) -> list[int]:
    """PIDs of the live worker children of ``parent`` (default: this process): those it
    started (``cerebro.engine._child``) and those its fork server forked for it (the
    zygote's children: NOTE [ the zygote ] in ``cerebro.engine._process``)."""
    parent = os.getpid() if parent is None else parent
    procs = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            procs.append((int(d.name), int(fields[1]), cmd))
    zygotes = {p for p, ppid, cmd in procs if ppid == parent and b"engine._zygote" in cmd}
    return [
        p
        for p, ppid, cmd in procs
        if (ppid == parent and b"cerebro.engine._child" in cmd) or ppid in zygotes
    ]


def kill_driver_after(script: str, run_dir: Path, hops: int, within: float = 120) -> None:
    """Run ``script`` as a driver in its own process group and SIGKILL the group (driver
    and workers) once ``run_dir``'s catalog has ``hops`` done hops; fails if the fit ends
    first."""
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    catalog = run_dir / "catalog.sqlite"
    deadline = time.time() + within
    while done_hops(catalog) < hops and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the fit finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class LoggedSpec(GatedSpec):
    """:class:`GatedSpec` whose worker set-up writes its pid to ``started`` when it begins and
    to ``setups`` once it is done (past the ``gate`` and the ``fail`` check): one line per
    worker process that started, and per worker set up, for the engine contract suite."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.started, self.setups = str(folder / "started"), str(folder / "setups")

    def initialize_worker(self) -> None:
        with open(self.started, "a") as f:
            f.write(f"{os.getpid()}\n")
        super().initialize_worker()
        with open(self.setups, "a") as f:
            f.write(f"{os.getpid()}\n")


def controller_fit(
    tmp_path: Path, configs: list[ModelConfig], epochs: int, on_error: str = "stop"
) -> tuple[Catalog, FitState, Scheduler]:
    """A catalog, ``FitState`` and 2-worker "fixed" ``Scheduler`` for ``configs`` (one
    partition per worker), ready for ``run_loop``: the controller without an Experiment."""
    from cerebro._fit_state import FitState
    from cerebro.catalog import Catalog
    from cerebro.scheduler import Scheduler

    catalog = Catalog(tmp_path / "catalog.sqlite")
    fit_id = catalog.create_fit(
        "sig",
        {"models": len(configs), "workers": 2},
        [(c.model_id, c.hyperparams) for c in configs],
    )
    sched = Scheduler(
        [c.model_id for c in configs],
        num_epochs=epochs,
        train_owner={0: 0, 1: 1},
        val_owner={0: 0, 1: 1},
        policy="fixed",
    )
    models = {c.model_id: c for c in configs}
    state = FitState(fit_id, ToySpec(), models, tmp_path / "models", 1, epochs, on_error)
    state.checkpoint = dict.fromkeys(state.configs)
    state.train_hops = dict.fromkeys(state.configs, 0)
    return catalog, state, sched
