"""A driver killed mid-fit (SIGKILL, real processes) resumes without losing or redoing hops."""

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
from typing import Any

import pandas as pd
import pytest
import torch

from cerebro import Experiment
from cerebro.errors import CerebroError
from toy import SlowSpec, ToyETL, ToySpec, computed, done_hops

GRID = {"lr": [0.05, 0.01], "batch_size": [32, 64]}

DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from cerebro import Experiment
from test_resume import GRID
from toy import SlowSpec
exp = Experiment({params!r}, workers=2, verbose=False)
exp.run_fit(SlowSpec(), GRID, num_epochs=2, seed=3)
"""


def test_killed_driver_resumes(toy_params: dict[str, str], tmp_path: Path) -> None:
    exp = Experiment(toy_params, workers=2, verbose=False)
    exp.run_etl(ToyETL(), seed=1)
    script = DRIVER.format(tests=str(Path(__file__).parent), params=toy_params)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 120
    while done_hops(exp.catalog_path) < 10 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the fit finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-hop
    proc.wait()
    before = done_hops(exp.catalog_path)
    assert 10 <= before < 32
    db = sqlite3.connect(exp.catalog_path)
    first_ids = {r[0] for r in db.execute("SELECT hop_id FROM hops WHERE status='done'")}
    db.close()

    result = exp.run_fit(SlowSpec(), GRID, num_epochs=2, seed=3)

    db = sqlite3.connect(exp.catalog_path)
    rows = db.execute("SELECT hop_id, model_id, kind, partition, epoch, status FROM hops")
    rows = rows.fetchall()
    db.close()
    done = [r for r in rows if r[5] == "done"]
    # the hops completed before the kill are still there, untouched, and none ran twice
    assert first_ids <= {r[0] for r in done}
    count = Counter((m, k, p, e) for _, m, k, p, e, _ in done)
    expected = {
        (f"m{i:03d}", k, p, e)
        for i in range(4)
        for k in ("train", "val")
        for p in (0, 1)
        for e in range(2)
    }
    assert set(count) == expected and set(count.values()) == {1}
    assert {r[5] for r in rows} <= {"done", "lost"}
    assert set(result.table["status"]) == {"done"} and set(result.table["epochs"]) == {2}

    # and the resumed fit trained the same models as an uninterrupted one (policy "fixed")
    clean = Experiment(
        dict(toy_params, output_dir=str(tmp_path / "clean"), etl_dir=str(exp.data_dir)),
        workers=2,
        verbose=False,
    )
    reference = clean.run_fit(SlowSpec(), GRID, num_epochs=2, seed=3)
    a = result.history.sort_values(["model_id", "epoch", "split", "metric"])
    b = reference.history.sort_values(["model_id", "epoch", "split", "metric"])
    assert a.reset_index(drop=True).equals(b.reset_index(drop=True))
    w1 = torch.load(result.best["checkpoint"], weights_only=False)["components"]["model"]
    w2 = torch.load(reference.best["checkpoint"], weights_only=False)["components"]["model"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


EXPERIMENT = """
import numpy as np, pandas as pd, time, torch
from pathlib import Path
from cerebro import ETLSpec, MinibatchSpec

root = Path(__file__).parent / "data"
root.mkdir(exist_ok=True)
rng = np.random.default_rng(0)
for split, n in (("train", 400), ("val", 100)):
    y = rng.integers(0, 2, n)
    df = pd.DataFrame({"id": np.arange(n), "a": rng.normal(size=n) + y, "label": y})
    df.to_csv(root / f"{split}.csv", index=False)

class ETL(ETLSpec):
    def row_prep(self, row, mode, object_dir):
        # While data/hold exists the val rows wait (after touching data/inside): a test
        # kills the run there, in the ETL, with the train partitions written.
        if mode == "val" and (root / "hold").exists():
            (root / "inside").touch()
            while (root / "hold").exists():
                time.sleep(0.01)
        return torch.tensor([row["a"]], dtype=torch.float32), torch.tensor(int(row["label"]))

class Spec(MinibatchSpec):
    def create_model_components(self, hyperparams):
        model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Dropout(0.2),
                                    torch.nn.Linear(8, 2))
        opt = torch.optim.Adam(model.parameters(), lr=hyperparams["lr"])
        return {"model": model, "optimizer": opt}
    def train(self, model_object, minibatch, hyperparams, device):
        time.sleep(0.01)
        x, y = minibatch
        model_object["optimizer"].zero_grad()
        loss = torch.nn.functional.cross_entropy(model_object["model"](x), y)
        loss.backward(); model_object["optimizer"].step()
        return {"loss": loss.item()}
    def valtest(self, model_object, minibatch, hyperparams, device):
        x, y = minibatch
        out = model_object["model"](x)
        return {"loss": torch.nn.functional.cross_entropy(out, y).item(),
                "acc": (out.argmax(1) == y).float().mean().item()}

etl_spec, minibatch_spec = ETL(), Spec()
params = {"train_main": str(root / "train.csv"), "val_main": str(root / "val.csv"),
          "output_dir": str(root.parent / "run")}
param_grid = {"lr": [0.05, 0.01, 0.002], "batch_size": [32]}
num_epochs = 3
workers = 2
"""
HOPS = 3 * 2 * 2 * 3  # models x (train, val) x partitions x epochs


def _cli_run(folder: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cerebro.cli", "run", str(folder / "exp.py"), "-q"],
        cwd=folder,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _outcome(run_dir: Path) -> tuple[dict[tuple[Any, ...], Any], list[tuple[Any, ...]]]:
    """What the run computed (``toy.computed``), in its one fit."""
    con = sqlite3.connect(run_dir / "catalog.sqlite")
    try:
        assert con.execute("SELECT COUNT(*) FROM fits").fetchone() == (1,)
    finally:
        con.close()
    return computed(run_dir / "catalog.sqlite")


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EXPERIMENT run once, uninterrupted: the reference the killed runs must match."""
    folder = tmp_path_factory.mktemp("clean")
    (folder / "exp.py").write_text(EXPERIMENT)
    proc = _cli_run(folder)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    hops, metrics = _outcome(folder / "run")
    assert len(hops) == HOPS and len(metrics) == 3 * 3 * 3  # train loss, val loss and acc
    return folder / "run"


def _session(run_dir: Path) -> bool:
    return (run_dir / "experiment.json").exists()


def _kill_when(proc: subprocess.Popen[bytes], moment: Any, what: str) -> None:
    """SIGKILL the run (driver, ETL processes, workers) as soon as ``moment()`` holds."""
    deadline = time.time() + 120
    while not moment():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()!r}"  # type: ignore[union-attr]
        assert time.time() < deadline, f"no {what} within 120 s"
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended at {what}, before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_driver_killed_at_random_moments_always_resumes(tmp_path: Path, clean_run: Path) -> None:
    import random

    # Kills at moments chosen by what the run has done, not by the clock, so that they
    # land where they should on a fast machine as on a slow one: as soon as the session
    # is recorded (the start, before or in the ETL; the next test kills inside the ETL),
    # then after a random number of completed hops in the catalog, each higher than the
    # last (a resumed run never loses done hops, so each target is reached) and at least
    # 10 below the end, so the run is still going when the kill follows its count (with
    # 4-7 left, a loaded machine sometimes let the run finish between the two).
    rng = random.Random(1234)
    targets = sorted(rng.sample(range(1, HOPS - 9), 3))
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    run_dir = tmp_path / "run"
    catalog = run_dir / "catalog.sqlite"

    proc = _cli_run(tmp_path)
    _kill_when(proc, lambda: _session(run_dir), "the session was recorded")
    assert done_hops(catalog) == 0
    for n in targets:
        proc = _cli_run(tmp_path)
        _kill_when(proc, lambda n=n: done_hops(catalog) >= n, f"{n} hops were done")
        assert n <= done_hops(catalog) < HOPS

    result = Experiment.resume(run_dir, verbose=False)  # the API, after the last kill
    con = sqlite3.connect(catalog)
    status = {s for (s,) in con.execute("SELECT status FROM hops")}
    con.close()
    assert status <= {"done", "lost"}
    assert set(result.table["status"]) == {"done"}
    # the very hops and epoch metrics of the run that was never interrupted
    hops, metrics = _outcome(run_dir)
    want_hops, want_metrics = _outcome(clean_run)
    assert hops == want_hops
    assert metrics == want_metrics


def test_run_killed_in_the_etl_resumes_with_cerebro_resume(
    tmp_path: Path, clean_run: Path
) -> None:
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    hold = tmp_path / "data" / "hold"
    hold.parent.mkdir()
    hold.touch()  # the ETL's val rows wait for it: the kill lands in the ETL every time
    proc = _cli_run(tmp_path)
    _kill_when(proc, (tmp_path / "data" / "inside").exists, "the ETL's val rows")
    assert not (tmp_path / "run" / "data" / "manifest.json").exists()
    assert done_hops(tmp_path / "run" / "catalog.sqlite") == 0
    status = subprocess.run(
        [sys.executable, "-m", "cerebro.cli", "status", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
    )  # a run directory, not "not a Cerebro run directory"
    assert status.returncode == 0, status.stderr
    assert "interrupted during its ETL" in status.stdout
    assert f"`cerebro resume {tmp_path / 'run'}` continues it" in status.stdout

    hold.unlink()
    r = subprocess.run(
        [sys.executable, "-m", "cerebro.cli", "resume", str(tmp_path / "run"), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    # the ETL and the whole fit ran: the same hops and epoch metrics as a run never killed
    assert (tmp_path / "run" / "data" / "manifest.json").is_file()
    assert _outcome(tmp_path / "run") == _outcome(clean_run)


def test_resume_where_only_the_etl_ran_says_how_to_go_on(
    toy_params: dict[str, str],
) -> None:
    exp = Experiment(toy_params, workers=2, verbose=False)
    exp.run_etl(ToyETL(), seed=1)
    exp.close()
    with pytest.raises(CerebroError, match="run_fit was never called there.*Experiment.run"):
        Experiment.resume(toy_params["output_dir"], verbose=False)


def test_run_on_an_existing_etl_dir_records_only_the_fit(
    toy_params: dict[str, str], tmp_path: Path
) -> None:
    with Experiment(toy_params, workers=2, verbose=False) as first:
        first.run_etl(ToyETL(), seed=1)
    params = dict(toy_params, output_dir=str(tmp_path / "reuse"), etl_dir=str(first.data_dir))
    with Experiment(params, workers=2, verbose=False) as exp:
        result = exp.run(ToyETL(), ToySpec(), {"lr": [0.05], "batch_size": [32]}, 1)
    assert set(result.table["status"]) == {"done"}
    session = json.loads((tmp_path / "reuse" / "experiment.json").read_text())
    assert "fit" in session and "etl" not in session  # the data is someone else's
    again = Experiment.resume(tmp_path / "reuse", verbose=False)  # finished: reads only
    assert again.table.equals(result.table)


def test_a_kill_between_the_last_epoch_and_the_model_status_resumes_to_done(
    toy_data: dict[str, str], tmp_path: Path
) -> None:
    """The last epoch's metrics are stored, then the model is marked done: a kill between
    the two writes must not leave the model 'running' after resume."""
    exp = Experiment(dict(toy_data, output_dir=str(tmp_path / "run")), workers=2, verbose=False)
    first = exp.run_fit(ToySpec(), {"lr": [0.05, 0.01], "batch_size": [32]}, num_epochs=1)
    db = sqlite3.connect(exp.catalog_path)
    with db:
        db.execute("UPDATE models SET status='running' WHERE model_id='m001'")
        db.execute("UPDATE fits SET status='running', finished=NULL")
    db.close()
    again = exp.run_fit(ToySpec(), {"lr": [0.05, 0.01], "batch_size": [32]}, num_epochs=1)
    assert set(again.table["status"]) == {"done"}
    pd.testing.assert_frame_equal(again.table, first.table)
    exp.close()
