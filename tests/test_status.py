"""`cerebro status` and the report read a live fit without disturbing it, and after a resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cerebro.catalog import Catalog
from cerebro.report import NoFitError, RunStatus, read_status, status_text, write_report
from cerebro.report._data import load_run
from cerebro.report._summary import driver_restarts
from toy import ToyETL, ToySpec, write_toy_csvs

TESTS = Path(__file__).resolve().parent
MODELS, EPOCHS = 4, 3
TOTAL = MODELS * EPOCHS * (2 + 2)  # every epoch: 2 train + 2 val partitions per model

# The driver of the live fit: its own process, killed once and then resumed by the test.
DRIVER = """
import sys, time
from cerebro import Experiment
from toy import SlowSpec

exp = Experiment({params!r}, workers=2, verbose=False)
exp.run_fit(SlowSpec(0.015), {{"lr": [0.1, 0.05], "hidden": [4, 8], "batch_size": [16]}},
            num_epochs={epochs}, seed=2)
"""


def _start(params: dict[str, str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    script = DRIVER.format(params=params, epochs=EPOCHS)
    return subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)


def _poll(run_dir: Path, until: Any, proc: subprocess.Popen[bytes]) -> list[RunStatus]:
    """Read the status every 0.1 s while the driver runs, until ``until(status)``."""
    seen: list[RunStatus] = []
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            st = read_status(run_dir)
        except (FileNotFoundError, NoFitError):  # the run is still starting
            st = None
        if st is not None:
            seen.append(st)
            if until(st):
                break
        time.sleep(0.1)
    return seen


def _assert_grows(seen: list[RunStatus]) -> None:
    for a, b in zip(seen, seen[1:], strict=False):
        assert b.hops_done >= a.hops_done
        for ma, mb in zip(a.models, b.models, strict=True):
            assert mb.hops_done >= ma.hops_done and mb.epochs_done >= ma.epochs_done
        assert b.hops_total == a.hops_total == TOTAL


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A fit read while it runs, killed (SIGKILL) mid-way, read again, and resumed to the end."""
    from cerebro import Experiment

    root = tmp_path_factory.mktemp("live")
    params = write_toy_csvs(root / "csv")
    params["output_dir"] = str(root / "run")
    exp = Experiment(params, workers=2, verbose=False)
    exp.run_etl(ToyETL(), seed=1)
    run_dir = exp.output_dir

    proc = _start(params)
    first = _poll(run_dir, lambda st: st.hops_done >= TOTAL // 3, proc)
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-hop
    proc.wait()
    killed = read_status(run_dir)
    killed_text = status_text(run_dir)
    killed_report = write_report(run_dir).read_text()

    proc = _start(params)  # the same fit again: resumes from the catalog
    second = _poll(run_dir, lambda st: False, proc)
    assert proc.wait(timeout=120) == 0
    return {
        "run_dir": run_dir,
        "first": first,
        "alive": alive,
        "killed": killed,
        "killed_text": killed_text,
        "killed_report": killed_report,
        "second": second,
        "final": read_status(run_dir),
    }


def test_status_reads_a_live_fit_and_numbers_only_grow(live: dict[str, Any]) -> None:
    first, second = live["first"], live["second"]
    assert live["alive"], "the fit ended before the test could read it mid-way"
    assert len(first) >= 3 and len(second) >= 2
    mid = [st for st in first + second if 0 < st.hops_done < TOTAL]
    assert mid, "no read saw the fit in progress"
    assert all(st.fit_status == "running" for st in mid)
    assert any(st.eta is not None and st.eta > 0 for st in mid)
    _assert_grows(first + [live["killed"]] + second + [live["final"]])


def test_status_after_a_kill_says_interrupted_with_hops_left(live: dict[str, Any]) -> None:
    st = live["killed"]
    assert st.fit_status == "running" and TOTAL // 3 <= st.hops_done < TOTAL  # the catalog
    assert st.driver_alive is False and st.state == "interrupted"
    assert "fit 1: interrupted" in live["killed_text"]
    assert "is not running on this machine" in live["killed_text"]
    assert "cerebro resume" in live["killed_text"]
    assert "The fit was interrupted" in live["killed_report"]
    # nothing runs once the driver is dead: no model and no hop is called running
    assert st.hops_running == 0
    assert {m.status for m in st.models} <= {"interrupted", "done"}
    assert "running" not in live["killed_text"].replace("is not running on this", "")
    assert 'class="st st-running"' not in live["killed_report"]
    assert all(
        s.driver_alive for s in live["first"] if s.driver_pid == live["first"][-1].driver_pid
    )


def test_status_after_resume_is_complete(live: dict[str, Any]) -> None:
    st = live["final"]
    assert st.fit_status == "done"
    assert (st.hops_done, st.hops_total, st.hops_running) == (TOTAL, TOTAL, 0)
    assert all(m.status == "done" and m.epochs_done == EPOCHS for m in st.models)
    assert st.best is not None and st.eta == 0
    assert st.busy is not None and 0.2 < st.busy <= 1.0
    text = status_text(live["run_dir"])
    assert f"hops {TOTAL}/{TOTAL} (100%)" in text
    for i in range(MODELS):
        assert f"m{i:03d}" in text
    assert f"best by val_loss (min): {st.best['model_id']} val_loss=" in text
    assert f"epoch {st.best['epoch']} of {EPOCHS}" in text


def test_report_after_resume_cuts_out_the_downtime(live: dict[str, Any]) -> None:
    run = load_run(live["run_dir"])
    restarts = driver_restarts(run)
    assert len(restarts) == 1  # one resumed driver, found from its workers' new pids
    first_session_end = max(h["end"] for h in run.hops if h["end"] and h["end"] < restarts[0])
    st = live["final"]
    wall = max(h["end"] for h in run.hops if h["end"]) - min(h["start"] for h in run.hops)
    downtime = restarts[0] - first_session_end
    assert downtime > 0  # the resumed driver's first hop came after the killed one's last
    # Each session's hops follow one another closely (no idle stretch of a minute), so the
    # active time is exactly the wall time less the time no driver ran.
    assert st.active_seconds == pytest.approx(wall - downtime, rel=1e-9)
    page = write_report(live["run_dir"]).read_text()
    assert "fit is still running" not in page and "fit was interrupted" not in page
    assert 'st-interrupted"' not in page  # no model badge says so either
    assert (live["run_dir"] / "plots" / "timeline.png").is_file()


def test_no_fit_yet(tmp_path: Path) -> None:
    Catalog(tmp_path / "catalog.sqlite").close()  # a run that has only created its catalog
    assert "no fit yet" in status_text(tmp_path)
    with pytest.raises(NoFitError, match="no fit yet"):
        write_report(tmp_path)


def test_no_catalog_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a Cerebro run directory"):
        status_text(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run directory"):
        status_text(tmp_path / "missing")


class StopSpec(ToySpec):
    """ToySpec whose train raises for lr=0.01: with on_error="stop" the fit stops."""

    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> dict[str, float]:
        if hyperparams["lr"] == 0.01:
            raise ValueError("boom")
        return super().train(model_object, minibatch, hyperparams, device)


def test_a_stopped_fit_has_no_running_models(toy_data: dict[str, str], tmp_path: Path) -> None:
    from cerebro import Experiment, UserCodeError

    run_dir = tmp_path / "run"
    with Experiment(dict(toy_data, output_dir=str(run_dir)), workers=2, verbose=False) as exp:
        with pytest.raises(UserCodeError, match="boom"):
            grid = {"lr": [0.05, 0.01, 0.02, 0.03], "batch_size": [32]}
            exp.run_fit(StopSpec(), grid, num_epochs=2, on_error="stop")
    st = read_status(run_dir)
    status = {m.model_id: m.status for m in st.models}
    assert status.pop("m001") == "failed"
    # the catalog still says running / pending; not "stopped", which early stopping means
    assert set(status.values()) == {"interrupted"}
    assert st.fit_status == st.state == "stopped" and st.hops_running == 0
    text = status_text(run_dir)
    assert f"`cerebro resume {run_dir}`" in text
    text = text.replace(str(run_dir), "DIR")
    assert "fit 1: stopped" in text and "running" not in text and "pending" not in text
    page = write_report(run_dir).read_text()
    assert 'class="st st-running"' not in page and "3 interrupted" in page


def test_a_run_killed_in_its_etl_is_a_run_directory(tmp_path: Path) -> None:
    """What `Experiment.run` leaves when killed in the ETL: experiment.json, no catalog (the
    kill itself is tests/test_resume.py's; this is the state it leaves, from the real API)."""
    from cerebro._rundir import save_experiment

    save_experiment(tmp_path, {"etl": {"seed": 1}, "fit": {"num_epochs": 1}}, "etl", ToyETL())
    text = status_text(tmp_path)
    assert "interrupted during its ETL" in text and f"`cerebro resume {tmp_path}`" in text
    assert "not a Cerebro run directory" not in text
    with pytest.raises(FileNotFoundError, match="interrupted during its ETL.*cerebro resume"):
        write_report(tmp_path)
    Catalog(tmp_path / "catalog.sqlite").close()  # a catalog, still no fit
    assert "interrupted during its ETL" in status_text(tmp_path)
    with pytest.raises(NoFitError, match="interrupted during its ETL"):
        read_status(tmp_path)
