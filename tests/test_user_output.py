"""What the user's code prints reaches the user: prefixed with the worker and the model,
once per print, around the progress bar, and not at all when quiet.

The first tests run a driver script in a subprocess and read its stdout and stderr, as a
user's terminal shows them; the others drive a :class:`LocalEngine` in this process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cerebro import Experiment
from cerebro.engine import HopDone, WorkerLost, _process
from cerebro.engine._pool import WorkerPool
from cerebro.engine.local import LocalEngine
from toy import GatedSpec, ToyETL, ToySpec, hop_task, poll_until, wait_for, write_toy_csvs

TESTS = Path(__file__).resolve().parent

DRIVER = """
import json, os, subprocess, sys
from pathlib import Path

from cerebro import Experiment
from toy import ToyETL, ToySpec, write_toy_csvs


class PrintingETL(ToyETL):
    def row_prep(self, row, mode, object_dir):
        if row["id"] % 50 == 0:
            print(f"prep {row['id']} {mode}")
        return super().row_prep(row, mode, object_dir)


class PrintingSpec(ToySpec):
    def __init__(self, truth):
        self.truth = truth
        self.n = 0

    def initialize_worker(self):
        subprocess.run(["echo", "from a subprocess"], check=True)

    def create_model_components(self, hyperparams):
        os.write(1, b"raw fd write\\n")  # as C code would: below sys.stdout
        return super().create_model_components(hyperparams)

    def train(self, model_object, minibatch, hyperparams, device):
        out = super().train(model_object, minibatch, hyperparams, device)
        self.n += 1
        token = f"{os.getpid()}-{self.n}"
        with open(self.truth, "a") as f:
            f.write(token + "\\n")
        print(f"Loss: {out['loss']:.4f} lr={hyperparams['lr']} tok={token}")
        return out

    def metrics_agg(self, mode, hyperparams, metrics):
        print(f"agg {mode} lr={hyperparams['lr']}")
        return super().metrics_agg(mode, hyperparams, metrics)


if __name__ == "__main__":
    root, verbose = Path(sys.argv[1]), sys.argv[2] == "verbose"
    params = write_toy_csvs(root / "csv")
    params["output_dir"] = str(root / "run")
    with Experiment(params, workers=2, verbose=verbose) as exp:
        exp.run_etl(PrintingETL(), seed=1)
        result = exp.run_fit(
            PrintingSpec(str(root / "truth.txt")),
            {"lr": [0.05, 0.01], "batch_size": [32]},
            num_epochs=2,
        )
    lrs = {r["model_id"]: r["lr"] for r in result.table.to_dict("records")}
    print("RESULT " + json.dumps(lrs))
"""

EPOCHS = 2


def _drive(root: Path, verbose: bool) -> str:
    """Run the driver script; its stdout and stderr as one stream, as a terminal shows."""
    script = root / "driver.py"
    root.mkdir(parents=True, exist_ok=True)
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    r = subprocess.run(
        [sys.executable, str(script), str(root), "verbose" if verbose else "quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        timeout=300,
    )
    out = r.stdout.decode()
    assert r.returncode == 0, out[-3000:]
    return out


def _shown_lines(out: str) -> list[str]:
    """The lines a terminal shows: a progress bar's redraws (carriage returns) overwrite
    one line, so each line ends up as the text after its last carriage return. A print
    written into the bar's line (not through tqdm.write) would share it with the bar."""
    return [line.rsplit("\r", 1)[-1] for line in out.split("\n")]


def test_prints_of_every_hook_reach_the_driver_once_each_prefixed_and_clear_of_the_bar(
    tmp_path: Path,
) -> None:
    out = _drive(tmp_path, verbose=True)
    lines = _shown_lines(out)
    lrs = json.loads(next(ln for ln in lines if ln.startswith("RESULT "))[7:])
    assert "MOP hops" in out and "ETL rows" in out  # the bars were on

    # train: every print shown exactly once, with its worker and its model
    truth = (tmp_path / "truth.txt").read_text().split()
    hop_line = re.compile(r"\[worker ([01]) · (m\d{3})( probe)?\] Loss: \S+ lr=(\S+) tok=(\S+)")
    shown = [m for ln in lines if (m := hop_line.fullmatch(ln))]
    assert Counter(m[5] for m in shown) == Counter(set(truth)) and len(truth) == len(set(truth))
    assert sum("Loss:" in ln for ln in lines) == len(truth)  # none other, none in the bar
    for m in shown:
        assert lrs[m[2]] == float(m[4])  # the model id is that of the hop that printed
    worker_of_pid = {m[5].split("-")[0]: m[1] for m in shown}
    assert sorted(worker_of_pid.values()) == ["0", "1"]
    assert all(worker_of_pid[m[5].split("-")[0]] == m[1] for m in shown)
    assert sum(bool(m[3]) for m in shown) == 1  # the probe minibatch, labelled as such

    # metrics_agg runs on the driver: each call's print once, with the model id
    agg = Counter(ln for ln in lines if " agg " in ln)
    assert agg == Counter(
        {
            f"[driver · {m}] agg {mode} lr={lr}": EPOCHS
            for m, lr in lrs.items()
            for mode in ("train", "val")
        }
    )

    # row_prep in the ETL processes: each print once (test and predict share row ids)
    want = Counter()
    for split in ("train", "val", "test", "predict"):
        ids = pd.read_csv(tmp_path / "csv" / f"{split}.csv")["id"]
        want.update(f"prep {i} {split}" for i in ids if i % 50 == 0)
    prep = re.compile(r"\[ETL process [01] · (\w+)\] (prep \d+ (\w+))")
    matched = [m for ln in lines if (m := prep.fullmatch(ln))]
    assert Counter(m[2] for m in matched) == want
    assert all(m[1] == m[3] for m in matched)  # labelled with the split of the row
    assert sum("prep " in ln for ln in lines) == sum(want.values())

    # below Python: a write to file descriptor 1, and a subprocess's output
    assert sum(ln == f"[worker {w} · set-up] from a subprocess" for ln in lines for w in "01") == 2
    raw = [ln for ln in lines if "raw fd write" in ln]
    assert raw and all(
        re.fullmatch(r"\[worker [01] · m\d{3}( probe)?\] raw fd write", ln) for ln in raw
    )


def test_quiet_experiment_shows_nothing_the_user_code_prints(tmp_path: Path) -> None:
    out = _drive(tmp_path, verbose=False)
    assert (tmp_path / "truth.txt").read_text()  # train did print
    for text in ("Loss:", " agg ", "prep ", "from a subprocess", "raw fd write", "[worker", "MOP"):
        assert text not in out, out[-3000:]


# --- one child process, or one engine, in this process -------------------------------------


def _say(state: dict[str, Any], text: str) -> None:
    print(text)


def test_each_queued_call_gets_its_own_output_and_idle_files_are_emptied(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_process, "_TRUNCATE_AT", 10)
    child = _process.Child("child")
    try:
        child.call(_say, "warm")
        child.submit(_say, "first", label="A")
        child.submit(_say, "second\n\nthird", label="B")
        time.sleep(1)  # both have run and printed before the first answer is read
        assert child.result() is None and child.result() is None
        assert child._streams[0].size() == 0  # read, idle, over the limit: emptied
        child.call(_say, "again", label="C")
    finally:
        child.close()
    assert capsys.readouterr().out.splitlines() == [
        "[child] warm",
        "[child · A] first",
        "[child · B] second",
        "[child · B]",
        "[child · B] third",
        "[child · C] again",
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("output")
    params = write_toy_csvs(root / "csv", n_train=64, n_val=16, n_test=16)
    params["output_dir"] = str(root / "etl")
    with Experiment(params, workers=1, verbose=False) as e:
        e.run_etl(ToyETL(), seed=1, partitions=1)
    return e.data_dir


def _engine(data: Path, spec: Any, **kw: Any) -> LocalEngine:
    misc = data.parent / "misc"
    misc.mkdir(exist_ok=True)
    return LocalEngine(
        spec, str(data), [{"train": [0]}], str(misc), threads=1, devices=["cpu"], **kw
    )


class StreamsSpec(ToySpec):
    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> Any:
        if not getattr(self, "started", False):
            self.started = True
            sys.stdout.write("no newline")
            print("on stderr", file=sys.stderr)
        return super().train(model_object, minibatch, hyperparams, device)


def test_stderr_goes_to_stderr_and_a_last_partial_line_is_shown(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = _engine(data, StreamsSpec())
    try:
        engine.submit(0, hop_task(0))
        (event,) = poll_until(engine, 1)
        assert isinstance(event, HopDone)
    finally:
        engine.shutdown()
    cap = capsys.readouterr()
    assert cap.out == "[worker 0 · m0] no newline\n"
    assert cap.err == "[worker 0 · m0] on stderr\n"


class CrashSpec(ToySpec):
    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> Any:
        print("about to crash")
        if hyperparams.get("segv"):
            import faulthandler

            faulthandler._sigsegv()
        os._exit(3)


@pytest.mark.parametrize("segv", [False, True])
def test_what_a_worker_printed_before_it_died_is_shown(
    data: Path, capsys: pytest.CaptureFixture[str], segv: bool
) -> None:
    engine = _engine(data, CrashSpec(), max_restarts=5)
    try:
        engine.submit(0, hop_task(0, segv=segv))
        (event,) = poll_until(engine, 1)
        assert isinstance(event, WorkerLost)
    finally:
        engine.shutdown()
    cap = capsys.readouterr()
    assert cap.out == "[worker 0 · m0] about to crash\n"
    if segv:  # native crash: faulthandler's report, prefixed, with the user's frame
        assert "[worker 0 · m0] Fatal Python error: Segmentation fault" in cap.err
        assert re.search(r"\[worker 0 · m0\] .*line \d+ in train", cap.err)


class ChattySpec(ToySpec):
    def train(
        self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
    ) -> Any:
        for i in range(100):
            print(f"line {i:04d}")
        return super().train(model_object, minibatch, hyperparams, device)


def test_a_call_that_prints_a_lot_shows_up_to_the_limit_and_counts_the_rest(
    data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_process, "_CALL_OUTPUT_LIMIT", 100)  # read on the driver side
    engine = _engine(data, ChattySpec())
    try:
        for _ in range(2):  # the limit is per call: the second hop shows as much again
            engine.submit(0, hop_task(0))
            (event,) = poll_until(engine, 1)
            assert isinstance(event, HopDone)
    finally:
        engine.shutdown()
    lines = capsys.readouterr().out.splitlines()
    rows = event.outcome.batch_sizes
    per_hop = 100 * len(rows) * len("line 0000\n")
    hop = [f"[worker 0 · m0] line {i:04d}" for i in range(10)] + [
        f"[worker 0 · m0] ... {per_hop - 100} more bytes of output not shown "
        "(a call shows at most 100 per stream)"
    ]
    assert lines == hop + hop


def test_lines_of_a_running_hop_show_before_it_ends(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Held(GatedSpec):
        def train(
            self, model_object: Any, minibatch: Any, hyperparams: dict[str, Any], device: Any
        ) -> Any:
            print("started")
            return super().train(model_object, minibatch, hyperparams, device)

    engine = _engine(data, Held(tmp_path))
    hold = tmp_path / "hold"
    try:
        hold.touch()
        engine.submit(0, hop_task(0, hold=True))
        wait_for(tmp_path / "inside")
        deadline = time.time() + 30
        out = ""
        while "started" not in out and time.time() < deadline:
            assert engine.poll(timeout=0.1) == []
            out += capsys.readouterr().out
        assert out == "[worker 0 · m0] started\n"  # the hop is still held in train
        hold.unlink()
        (event,) = poll_until(engine, 1)
        assert isinstance(event, HopDone)
    finally:
        hold.unlink(missing_ok=True)
        engine.shutdown()
    rest = capsys.readouterr().out.splitlines()
    assert rest == ["[worker 0 · m0] started"] * (len(event.outcome.batch_sizes) - 1)


def test_quiet_engine_and_quiet_pool_show_nothing(
    data: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    engine = _engine(data, StreamsSpec(), quiet=True)
    try:
        engine.submit(0, hop_task(0))
        assert isinstance(poll_until(engine, 1)[0], HopDone)
    finally:
        engine.shutdown()
    pool = WorkerPool(1, quiet=True)
    try:
        engine = _engine(data, StreamsSpec(), pool=pool)
        engine.submit(0, hop_task(0))
        assert isinstance(poll_until(engine, 1)[0], HopDone)
        engine.shutdown()
        pool.output.quiet = False  # the switch is shared by the pool's processes
        engine = _engine(data, StreamsSpec(), pool=pool)
        engine.submit(0, hop_task(0))
        assert isinstance(poll_until(engine, 1)[0], HopDone)
        engine.shutdown()
    finally:
        pool.close()
    cap = capfd.readouterr()
    assert (cap.out, cap.err) == ("[worker 0 · m0] no newline\n", "[worker 0 · m0] on stderr\n")
