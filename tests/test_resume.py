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

import pytest
import torch

from cerebro import Experiment
from cerebro.errors import CerebroError
from toy import ToyETL, ToySpec

GRID = {"lr": [0.05, 0.01], "batch_size": [32, 64]}

DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from cerebro import Experiment
from test_resume import SlowSpec, GRID
exp = Experiment({params!r}, workers=2, verbose=False)
exp.run_fit(SlowSpec(), GRID, num_epochs=2, seed=3)
"""


class SlowSpec(ToySpec):
    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        time.sleep(0.01)
        return super().train(model_object, minibatch, hyperparams, device)


def _done(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    db = sqlite3.connect(db_path)
    try:
        return db.execute("SELECT COUNT(*) FROM hops WHERE status='done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def test_killed_driver_resumes(toy_params: dict[str, str], tmp_path: Path) -> None:
    exp = Experiment(toy_params, workers=2, verbose=False)
    exp.run_etl(ToyETL(), seed=1)
    script = DRIVER.format(tests=str(Path(__file__).parent), params=toy_params)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 120
    while _done(exp.catalog_path) < 10 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the fit finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-hop
    proc.wait()
    before = _done(exp.catalog_path)
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
        time.sleep(0.002)
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


def _cli_run(folder: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cerebro.cli", "run", str(folder / "exp.py"), "-q"],
        cwd=folder,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_driver_killed_at_random_moments_always_resumes(tmp_path: Path) -> None:
    import random

    # An uninterrupted run first: the reference result, and how long a whole run takes
    # here, so the kills land at random moments of a run (start, ETL, fit) on a fast
    # machine as on a slow one.
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    (clean_dir / "exp.py").write_text(EXPERIMENT)
    t0 = time.perf_counter()
    proc = _cli_run(clean_dir)
    _, err = proc.communicate(timeout=300)
    whole = time.perf_counter() - t0
    assert proc.returncode == 0, err.decode()

    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    (killed_dir / "exp.py").write_text(EXPERIMENT)
    rng = random.Random(1234)
    kills = 0
    started = time.time()
    while kills < 6 and time.time() - started < 150:
        proc = _cli_run(killed_dir)
        try:
            # At most half a run: the first two runs are always killed, whatever the
            # machine's speed (each restart pays its start-up again).
            proc.wait(timeout=rng.uniform(0.05, 0.5) * whole)
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
            break
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # driver, ETL processes and workers
            proc.wait()
            kills += 1
    assert kills >= 2, f"only {kills} kills in a run that takes {whole:.1f} s uninterrupted"
    run_dir = killed_dir / "run"
    result = Experiment.resume(run_dir, verbose=False)  # the API, after the last kill
    con = sqlite3.connect(run_dir / "catalog.sqlite")
    rows = con.execute("SELECT model_id, kind, partition, epoch, status FROM hops").fetchall()
    con.close()
    count = Counter((m, k, p, e) for m, k, p, e, s in rows if s == "done")
    assert len(count) == 3 * 2 * 2 * 3 and set(count.values()) == {1}
    assert {r[4] for r in rows} <= {"done", "lost"}
    assert set(result.table["status"]) == {"done"}

    # the same as the run that was never interrupted
    clean = Experiment.resume(clean_dir / "run", verbose=False)  # finished: reads, no work
    key = ["model_id", "epoch", "split", "metric"]
    a = result.history.sort_values(key).reset_index(drop=True)
    b = clean.history.sort_values(key).reset_index(drop=True)
    assert a.equals(b)


def test_run_killed_in_the_etl_resumes_with_cerebro_resume(tmp_path: Path) -> None:
    # the ETL waits for a gate file, so the kill lands in it every time
    gated = EXPERIMENT.replace(
        "        time.sleep(0.002)\n",
        "        while not (root / 'gate').exists():\n            time.sleep(0.01)\n",
    )
    assert gated != EXPERIMENT
    (tmp_path / "exp.py").write_text(gated)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cerebro.cli", "run", str(tmp_path / "exp.py"), "-q"],
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    session = tmp_path / "run" / "experiment.json"
    deadline = time.time() + 60
    while not (session.exists() and "etl" in session.read_text()) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before its ETL could be killed"
        time.sleep(0.05)
    time.sleep(0.5)  # inside the ETL, blocked on the gate
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "data" / "manifest.json").exists()

    (tmp_path / "data" / "gate").touch()
    r = subprocess.run(
        [sys.executable, "-m", "cerebro.cli", "resume", str(tmp_path / "run"), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(" done") == 3  # the results table: three models, all done


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
