"""The `cerebro` command, run as a real subprocess."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cerebro.errors import CerebroError

EXPERIMENT = """
import numpy as np, pandas as pd, torch
from pathlib import Path
from cerebro import ETLSpec, MinibatchSpec

root = Path(__file__).parent / "data"
root.mkdir(exist_ok=True)
rng = np.random.default_rng(0)
for split, n in (("train", 200), ("val", 50), ("test", 50)):
    y = rng.integers(0, 2, n)
    df = pd.DataFrame({"id": np.arange(n), "a": rng.normal(size=n) + y, "label": y})
    df.to_csv(root / f"{split}.csv", index=False)
df.drop(columns=["label"]).to_csv(root / "predict.csv", index=False)

# Specs defined right here (not importable by workers): they travel by value.
class ETL(ETLSpec):
    def row_prep(self, row, mode, object_dir):
        label = None if mode == "predict" else torch.tensor(int(row["label"]))
        return torch.tensor([row["a"]], dtype=torch.float32), label

class Spec(MinibatchSpec):
    def create_model_components(self, hyperparams):
        model = torch.nn.Linear(1, 2)
        opt = torch.optim.SGD(model.parameters(), lr=hyperparams["lr"])
        return {"model": model, "optimizer": opt}
    def train(self, model_object, minibatch, hyperparams, device):
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
    def predict(self, model_object, minibatch, hyperparams, device):
        x, _ = minibatch
        conf, cls = torch.softmax(model_object["model"](x), 1).max(1)
        return cls, conf

etl_spec, minibatch_spec = ETL(), Spec()
params = {"train_main": str(root / "train.csv"), "val_main": str(root / "val.csv"),
          "test_main": str(root / "test.csv"), "predict_main": str(root / "predict.csv"),
          "output_dir": str(root.parent / "run")}
param_grid = {"lr": [0.1, 0.01], "batch_size": [32]}
num_epochs = 2
"""


def _cerebro(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "cerebro.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _recorded(run_dir: Path) -> dict[str, Any]:
    """Everything a fit records: its catalog rows (hops with their pids and timestamps,
    metrics, models, checkpoints, the fit and when it finished) and its checkpoint files'
    sizes and mtimes."""
    con = sqlite3.connect(run_dir / "catalog.sqlite")
    try:
        rows = {
            table: con.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
            for table in ("models", "hops", "metrics", "checkpoints")
        }
        rows["fits"] = con.execute(
            "SELECT fit_id, signature, config, status, created, finished FROM fits ORDER BY fit_id"
        ).fetchall()
    finally:
        con.close()
    files = sorted((run_dir / "models").rglob("*"))
    rows["files"] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return rows


def test_run_experiment_file(tmp_path: Path) -> None:
    f = tmp_path / "exp.py"
    f.write_text(EXPERIMENT)
    out = tmp_path / "elsewhere"
    r = _cerebro("run", str(f), "--workers", "2", "--output", str(out), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == [
        "model_id",
        "trial",
        "lr",
        "batch_size",
        "epochs",
        "train_loss",
        "val_acc",
        "val_loss",
        "best_val_loss",
        "best_epoch",
        "train_seconds",
        "status",
    ]
    assert lines[1].split()[0] == "m000" and lines[1].split()[-1] == "done"
    assert "best by val_loss (min): m0" in r.stdout
    assert (out / "catalog.sqlite").is_file()
    finished = _recorded(out)
    assert len(finished["hops"]) == 2 * 2 * 2 * 2  # models x (train, val) x partitions x epochs
    # the same command again finds the finished fit and recomputes nothing: no hop runs
    # again, no row of the catalog and no checkpoint changes
    again = _cerebro("run", str(f), "--workers", "2", "--output", str(out), "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _recorded(out) == finished
    assert again.stdout.splitlines()[:3] == lines[:3]
    # and the saved run answers resume, test and predict on its own
    resumed = _cerebro("resume", str(out), "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _recorded(out) == finished
    assert resumed.stdout.splitlines()[:3] == lines[:3]
    tested = _cerebro("test", str(out), "-q", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert sorted(ln.split("\t")[0] for ln in tested.stdout.splitlines()) == [
        "test_acc",
        "test_loss",
    ]
    pred = _cerebro("predict", str(out), "--model", "m001", "-q", cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr
    csv = Path(pred.stdout.strip())
    assert csv == out / "predictions" / "m001.csv"
    assert len(csv.read_text().splitlines()) == 51


def test_bundled_example(tmp_path: Path) -> None:
    env_dir = tmp_path / "data"
    os.environ["CEREBRO_EXAMPLE_DATA"] = str(env_dir)
    args = ("example", "digits", "--workers", "2", "--epochs", "1")
    args += ("--output", str(tmp_path / "run"), "-q")
    try:
        r = _cerebro(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert len([ln for ln in r.stdout.splitlines() if ln.strip().startswith("m0")]) == 8
        assert "best by " in r.stdout
        # the same command again shows the finished run's results and says so
        again = _cerebro(*args[:-1], cwd=tmp_path)
    finally:
        del os.environ["CEREBRO_EXAMPLE_DATA"]
    assert again.returncode == 0, again.stderr
    assert f"the fit in {tmp_path / 'run'} was already finished; showing its results" in (
        again.stderr
    )
    assert again.stdout == r.stdout


def test_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "partial.py"
    f.write_text("params = {}\nnum_epochs = 1\n")
    r = _cerebro("run", str(f), cwd=tmp_path)
    assert r.returncode == 2
    assert "must define etl_spec, minibatch_spec, param_grid at module level" in r.stderr
    # an error in the experiment file itself: its file, line and error, not cli.main's
    # traceback with exit 1
    for source, line, error in (
        ("import os\nx = 1\ny = torchh.zeros(1)\n", 3, "NameError: name 'torchh' is not"),
        ("import os\ndef f(:\n    pass\n", 2, "SyntaxError: "),
    ):
        f.write_text(source)
        r = _cerebro("run", str(f), cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(
            f"cerebro: error: error in experiment file {f} line {line}: {error}"
        ), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    # 0 (or fewer) workers or epochs is an error, not "not given"
    for flag, value in (("--workers", "0"), ("--workers", "-2"), ("--epochs", "0")):
        r = _cerebro("run", str(f), flag, value, cwd=tmp_path)
        assert r.returncode == 2 and f"argument {flag}: must be at least 1, got {value}" in (
            r.stderr
        ), r.stderr
    r = _cerebro("run", str(tmp_path / "missing.py"), cwd=tmp_path)
    assert r.returncode == 2 and "no experiment file" in r.stderr
    r = _cerebro("resume", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert r.returncode == 2 and "holds no Cerebro experiment" in r.stderr
    r = _cerebro("example", "cifar", cwd=tmp_path)
    assert r.returncode == 2 and "choose one of: digits, mnist" in r.stderr


def _files(run_dir: Path) -> dict[str, str]:
    """Every file under ``run_dir`` by its sha256 (the lock file only as being there)."""
    return {
        str(p.relative_to(run_dir)): (
            "lock" if p.name == ".lock" else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def test_broken_then_fixed_then_refused_then_overwritten(tmp_path: Path) -> None:
    f = tmp_path / "exp.py"
    good = 'return {"loss": loss.item()}'
    broken = 'return {"loss": loss.item() / 0}'
    f.write_text(EXPERIMENT.replace(good, broken))
    line = EXPERIMENT.splitlines().index(f"        {good}") + 1
    run = ("run", str(f), "--workers", "2", "-q")
    # a failing train: the traceback points at the experiment file's line
    r = _cerebro(*run, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("cerebro: error: Spec.train failed for model m000"), r.stderr
    assert "checked on one minibatch" in r.stderr and "<dynamic-code>" not in r.stderr
    assert f'File "{f}", line {line}, in train\n    {broken}' in r.stderr, r.stderr
    # the fixed file runs in the same folder: the refused fit trained nothing
    f.write_text(EXPERIMENT)
    r = _cerebro(*run, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run"
    before = _files(out)
    assert "catalog.sqlite" in before  # and nothing of SQLite's log is left beside it
    assert not [n for n in before if n.endswith(("-wal", "-shm"))]
    # another fit on top of it is refused and changes nothing ...
    r = _cerebro(*run, "--epochs", "3", cwd=tmp_path)
    assert r.returncode == 2 and "already holds a different fit" in r.stderr, r.stderr
    assert "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert _files(out) == before
    # ... unless --overwrite
    r = _cerebro(*run, "--epochs", "3", "--overwrite", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()[:3]
    epochs = header.split().index("epochs")
    assert [ln.split()[epochs] for ln in rows] == ["3", "3"]


def test_an_experiment_file_may_define_a_space_and_a_search(tmp_path: Path) -> None:
    """``space`` fills the slot of ``param_grid``; a file with neither names both."""
    from cerebro.cli import load_experiment_file

    f = tmp_path / "search_exp.py"
    f.write_text(
        "from cerebro.search import loguniform\n"
        "etl_spec = minibatch_spec = params = None\n"
        "space = {'lr': loguniform(1e-4, 1e-1), 'batch_size': [32]}\n"
        "search, num_models, num_epochs = 'tpe', 12, 3\n"
    )
    module = load_experiment_file(f)
    assert module.param_grid is module.space and module.search == "tpe"
    f.write_text("etl_spec = minibatch_spec = params = None\nnum_epochs = 1\n")
    with pytest.raises(CerebroError, match=r"param_grid .*\(or space instead of param_grid\)"):
        load_experiment_file(f)


def test_cerebro_run_of_a_search_file_then_its_report_and_tensorboard(tmp_path: Path) -> None:
    """An experiment file with a space, ``search`` and ``num_models``: ``cerebro run`` asks
    that many models from Optuna, the study is in the run folder, and ``cerebro report``
    writes a TensorBoard hparams session per searched model with the value it was asked."""
    import optuna
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    f = tmp_path / "search_exp.py"
    f.write_text(
        EXPERIMENT.replace(
            'param_grid = {"lr": [0.1, 0.01], "batch_size": [32]}\nnum_epochs = 2\n',
            "from cerebro.search import loguniform\n"
            "space = {'lr': loguniform(1e-3, 0.5), 'batch_size': [16, 32]}\n"
            "search, num_models, num_epochs, seed = 'random', 3, 1, 7\n",
        )
    )
    r = _cerebro("run", str(f), "--workers", "2", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()[:4]
    cols = header.split()
    table = [dict(zip(cols, ln.split(), strict=True)) for ln in rows]
    assert [t["model_id"] for t in table] == ["m000", "m001", "m002"]
    assert [t["trial"] for t in table] == ["0", "1", "2"]
    assert all(t["status"] == "done" for t in table)
    out = tmp_path / "run"
    study = optuna.load_study(
        study_name=None, storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(out / "search" / "study.log"))
        ),
    )  # fmt: skip
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    lrs = {t.number: t.params["lr"] for t in trials}
    assert all(1e-3 <= lr <= 0.5 for lr in lrs.values()) and len(set(lrs.values())) == 3
    rep = _cerebro("report", str(out), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    for n, lr in lrs.items():
        acc = EventAccumulator(str(out / "tensorboard" / f"m{n:03d}"))
        acc.Reload()
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        start = metadata.parse_session_start_info_plugin_data(
            content[metadata.SESSION_START_INFO_TAG]
        )
        assert start.hparams["lr"].number_value == pytest.approx(lr)
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end.status == api_pb2.STATUS_SUCCESS
