"""The report, TensorBoard files and the `cerebro report` command, from a real run's catalog."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from cerebro import Experiment, FitResult
from cerebro.report import read_status, status_text, write_report, write_tensorboard
from cerebro.report._summary import active_segments, short_error
from cerebro.report._timeline import ActiveClock
from toy import ToySpec

ROOT = Path(__file__).resolve().parents[1]
# m000..m005: lr x act; lr=0.01 raises in train (failed), lr=0.5 returns NaN (diverged).
GRID: dict[str, list[Any]] = {"lr": [0.1, 0.01, 0.5], "act": ["relu", "tanh"], "batch_size": [32]}
EPOCHS = 2


class FlakySpec(ToySpec):
    """ToySpec whose train raises for lr=0.01 and turns NaN for lr=0.5."""

    def train(
        self,
        model_object: dict[str, Any],
        minibatch: Any,
        hyperparams: dict[str, Any],
        device: Any,
    ) -> dict[str, float]:
        if hyperparams["lr"] == 0.01:
            raise ValueError("boom: this spec cannot train with lr=0.01")
        out = super().train(model_object, minibatch, hyperparams, device)
        return {**out, "loss": float("nan")} if hyperparams["lr"] == 0.5 else out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, toy_data: dict[str, str]) -> Path:
    """One finished fit with failed and diverged models, shared by the module (read-only)."""
    root = tmp_path_factory.mktemp("report")
    exp = Experiment(dict(toy_data, output_dir=str(root / "run")), workers=2, verbose=False)
    exp.run_fit(FlakySpec(), GRID, num_epochs=EPOCHS)
    return exp.output_dir


@pytest.fixture(scope="module")
def report(run_dir: Path) -> Path:
    return write_report(run_dir)


def _db(run_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{run_dir / 'catalog.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


class _Page(HTMLParser):
    """Collects every URL-ish attribute and the cells of the models table."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.rows: list[list[str]] = []
        self.tags: list[str] = []
        self._in_models = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append(str(a[key]))
        if tag == "table" and a.get("id") == "models":
            self._in_models = True
        elif tag == "tr" and self._in_models:
            self.rows.append([])
        elif tag == "td" and self._in_models:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_models = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_is_offline_and_its_images_exist(run_dir: Path, report: Path) -> None:
    assert report == run_dir / "report.html"
    text = report.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text), "the page must not reference the network"
    assert "<link" not in text and "<script src" not in text
    page = _parse(report)
    imgs = [r for r in page.refs if r.endswith(".png")]
    assert len(imgs) >= 4  # curves (loss, acc), hyperparameters, timeline
    for ref in page.refs:
        assert not os.path.isabs(ref) and ":" not in ref, ref
        assert (run_dir / ref).is_file(), ref
    assert not list(run_dir.glob(".report.html.tmp-*"))
    assert not list((run_dir / "plots").glob(".*"))


def test_plots_are_real_pngs(run_dir: Path, report: Path) -> None:
    import matplotlib.image

    names = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert {"curves_loss.png", "curves_acc.png", "hyperparams.png", "timeline.png"} <= names
    for name in names:
        path = run_dir / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(path)
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert float(img[..., :3].std()) > 0.01, f"{name} is blank"


def test_the_table_names_train_seconds_and_best_values_as_fitresult(
    run_dir: Path, report: Path
) -> None:
    text = report.read_text()
    assert "hop time" not in text
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", text.split("id=models")[1])
    assert heads[:6] == ["model", "status", "epochs", "hops", "best val_loss", "best epoch"]
    assert "train_seconds" in heads
    table = FitResult(run_dir / "catalog.sqlite", 1).table.set_index("model_id")
    rows = {r[0].replace("★", "").strip(): r for r in _parse(report).rows if r}
    col = heads.index("train_seconds")
    for mid in ("m000", "m001"):
        assert float(rows[mid][col]) == pytest.approx(table.loc[mid, "train_seconds"], abs=2e-3)
        assert float(rows[mid][4]) == pytest.approx(table.loc[mid, "best_val_loss"], rel=1e-3)
        assert int(rows[mid][5]) == table.loc[mid, "best_epoch"]


def test_every_model_is_in_the_table_with_its_status(run_dir: Path, report: Path) -> None:
    rows = [r for r in _parse(report).rows if r]
    ids = [r[0].replace("★", "").strip() for r in rows]
    assert ids == [f"m{i:03d}" for i in range(6)]
    status = {r[0].replace("★", "").strip(): r[1] for r in rows}
    assert status == {
        "m000": "done",
        "m001": "done",
        "m002": "failed",
        "m003": "failed",
        "m004": "diverged",
        "m005": "diverged",
    }


def test_failed_models_show_their_error(run_dir: Path, report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert "Failed and diverged models (4)" in text
    assert "boom: this spec cannot train with lr=0.01" in text
    assert "FlakySpec.train failed for model m002" in text
    assert "diverged: metric &#x27;loss&#x27; became NaN" in text


def test_best_model_is_fitresults_best(run_dir: Path, report: Path) -> None:
    with _db(run_dir) as db:
        fit_id = db.execute("SELECT fit_id FROM fits").fetchone()[0]
    best = FitResult(run_dir / "catalog.sqlite", fit_id).best
    st = read_status(run_dir)
    assert st.best is not None and st.best["model_id"] == best["model_id"]
    assert st.best["value"] == pytest.approx(best["value"])
    assert f'{best["model_id"]} <span class="obj">val_loss' in report.read_text()
    by_acc = FitResult(run_dir / "catalog.sqlite", fit_id, "val_acc", "max").best
    st_acc = read_status(run_dir, objective="val_acc", mode="max")
    assert st_acc.best is not None and st_acc.best["model_id"] == by_acc["model_id"]


def test_rewriting_the_report_replaces_it(run_dir: Path, report: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("models", "data"))
    (copy / "plots" / "curves_gone_metric.png").write_bytes(b"stale")
    out = write_report(copy, objective="val_acc", mode="max")
    assert "best model by val_acc (max)" in out.read_text()
    assert not (copy / "plots" / "curves_gone_metric.png").exists()
    out.unlink()
    result = FitResult(copy / "catalog.sqlite", 1, "val_loss", "max")  # a ranking of its own
    assert result.report() == out  # the fit's report, ranked as this result ranks
    assert "best model by val_loss (max)" in out.read_text()
    assert f'{result.best["model_id"]} <span class="obj">val_loss' in out.read_text()


def _scalars(path: Path) -> dict[str, list[Any]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_tensorboard_round_trip(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("models", "data"))
    tb = write_tensorboard(copy)
    tb = write_tensorboard(copy)  # idempotent: the second write replaces the first
    assert tb == copy / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == [f"m{i:03d}" for i in range(6)]
    assert not list(copy.glob(".tensorboard*"))
    with _db(copy) as db:
        for mid in ("m000", "m001"):
            assert len(list((tb / mid).glob("events.out.tfevents.*"))) == 1
            sc = _scalars(tb / mid)
            hops = db.execute(
                "SELECT metrics FROM hops WHERE model_id=? AND kind='train' AND status='done' "
                "ORDER BY hop_id",
                (mid,),
            ).fetchall()
            losses = [v for h in hops for v in json.loads(h["metrics"])["values"]["loss"]]
            mb = sc["train_minibatch/loss"]
            assert [e.step for e in mb] == list(range(1, len(losses) + 1))
            assert [e.value for e in mb] == pytest.approx(losses, rel=1e-6)
            for split in ("train", "val"):
                for name in ("loss", "acc"):
                    rows = db.execute(
                        "SELECT epoch, value FROM metrics WHERE model_id=? AND split=? AND "
                        "name=? ORDER BY epoch",
                        (mid, split, name),
                    ).fetchall()
                    ev = sc[f"{split}/{name}"]
                    assert len(rows) == EPOCHS
                    assert [e.step for e in ev] == [r["epoch"] + 1 for r in rows]
                    assert [e.value for e in ev] == pytest.approx([r["value"] for r in rows])
    # a failed model has a run too, with no epoch metrics
    assert "val/loss" not in _scalars(tb / "m002")


def test_tensorboard_hparams(run_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("models", "data"))
    tb = write_tensorboard(copy)
    acc = EventAccumulator(str(tb / "m001"))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["lr"].number_value == pytest.approx(0.1)
    assert start.hparams["act"].string_value == "tanh"
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS
    exp = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    tags = {m.name.tag for m in exp.metric_infos}
    assert {"val/loss", "val/acc", "train/loss", "train/acc"} <= tags
    failed = EventAccumulator(str(tb / "m002"))
    failed.Reload()
    content = failed.PluginTagToContent(metadata.PLUGIN_NAME)
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_FAILURE


def _add_evaluations(run_dir: Path, values: dict[str, float]) -> None:
    """What run_test records: one row per model x test metric, whichever columns exist."""
    db = sqlite3.connect(run_dir / "catalog.sqlite")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS evaluations(model_id TEXT NOT NULL, tag TEXT NOT NULL,"
            " split TEXT NOT NULL, name TEXT NOT NULL, value REAL, checkpoint TEXT,"
            " created REAL NOT NULL)"
        )
        cols = {r[1] for r in db.execute("PRAGMA table_info(evaluations)")}
        for mid, v in values.items():
            for value, created in ((0.0, time.time() - 1), (v, time.time())):  # latest wins
                row = {
                    "fit_id": 1, "model_id": mid, "tag": mid, "split": "test", "name": "acc",
                    "value": value, "checkpoint": None, "created": created,
                }  # fmt: skip
                row = {k: x for k, x in row.items() if k in cols}
                db.execute(
                    f"INSERT INTO evaluations({','.join(row)}) "
                    f"VALUES ({','.join('?' * len(row))})",
                    tuple(row.values()),
                )
        db.commit()
    finally:
        db.close()


def test_test_set_results_are_shown_when_recorded(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("models", "data"))
    _add_evaluations(copy, {"m000": 0.875, "m001": 0.625})
    text = write_report(copy).read_text()
    assert "<th" in text and ">test_acc</th>" in text
    assert 'data-v="0.875"' in text
    status = status_text(copy)
    assert "test_acc" in status and "0.875" in status
    by_test = read_status(copy, objective="test_acc", mode="max")
    assert by_test.best is not None and by_test.best["model_id"] == "m000"
    sc = _scalars(write_tensorboard(copy) / "m001")
    assert [e.value for e in sc["test/acc"]] == pytest.approx([0.625])


def test_short_error_keeps_the_gist() -> None:
    where = 'Spec.train failed for model m004 {"lr": 0.02}, epoch 0, train partition 0: '
    assert short_error(where + "RuntimeError: out of memory\n\ntraceback") == (
        "RuntimeError: out of memory"
    )
    diverged = "model m006 {\"lr\": 0.5} diverged: metric 'loss' became NaN in epoch 0"
    assert short_error(diverged) == "diverged: metric 'loss' became NaN in epoch 0"
    assert short_error(None) == "" and short_error("worker lost") == "worker lost"


def test_active_clock_cuts_out_a_resume_gap() -> None:
    segs = active_segments([(0, 10), (12, 20), (1000, 1005)], gap=60)
    assert segs == [(0, 20), (1000, 1005)]
    clock = ActiveClock(segs)
    assert clock(0) == 0 and clock(15) == 15 and clock(20) == 20
    assert clock(500) == 20 and clock(1002) == 22 and clock(1005) == 25
    assert clock.gaps() == [(20, 980)]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "cerebro.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_report_and_status(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("models", "data"))
    proc = _cli("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == str(copy / "report.html")
    assert (copy / "report.html").is_file() and (copy / "tensorboard" / "m000").is_dir()
    proc = _cli("status", str(copy))
    assert proc.returncode == 0, proc.stderr
    assert "fit 1: done" in proc.stdout
    for i in range(6):
        assert f"m{i:03d}" in proc.stdout


@pytest.mark.parametrize("command", ["report", "status"])
def test_cli_without_a_catalog_is_one_line_exit_2(command: str, tmp_path: Path) -> None:
    proc = _cli(command, str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no catalog.sqlite" in proc.stderr
    assert proc.stdout == ""


def test_objective_values_in_the_table_are_exact(run_dir: Path, report: Path) -> None:
    text = report.read_text()
    with _db(run_dir) as db:
        v = db.execute(
            "SELECT value FROM metrics WHERE model_id='m000' AND split='val' AND name='loss' "
            "ORDER BY epoch DESC LIMIT 1"
        ).fetchone()[0]
    assert f'data-v="{float(v)!r}"' in text
    assert math.isfinite(v)
