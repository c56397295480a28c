"""The fork server (NOTE [ the zygote ] in ``cerebro.engine._process``): children forked
from it run calls as ``Popen`` children do, with what the driver had when it started them,
and no process outlives the driver. Real processes throughout."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cerebro.engine import _fork_server, _zygote
from cerebro.engine._process import Child, ChildDied, Output

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's fork")


class Recorded(Output):
    """An :class:`Output` that keeps what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str, bool]] = []

    def write(self, prefix: str, text: str, *, stderr: bool = False) -> None:
        self.lines.append((prefix, text, stderr))


def _where(state: dict[str, Any]) -> dict[str, Any]:
    """What a child inherited from the driver that started it."""
    import resource

    limits = {r: resource.getrlimit(getattr(resource, r)) for r in ("RLIMIT_NOFILE",)}
    env = dict(os.environ)
    env.pop("CEREBRO_FORK_SERVER", None)
    path = list(dict.fromkeys(sys.path))  # a Popen child's repeats its working directory
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "cwd": os.getcwd(),
        "env": env,
        "path": path,
        "threads": torch.get_num_threads(),
        "limits": limits,
        "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    }


def _shout(state: dict[str, Any], word: str) -> int:
    print(f"out {word}")
    print(f"err {word}", file=sys.stderr)
    os.write(1, b"raw\n")  # below Python's sys.stdout, as C code writes
    return 42


def _draws(state: dict[str, Any]) -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def _import(state: dict[str, Any], name: str) -> Any:
    return __import__(name).VALUE


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _zygote_pid() -> int:
    server = _fork_server.server()
    assert server is not None, _fork_server.why_off()
    return server.pid


@pytest.fixture(autouse=True)
def _on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CEREBRO_FORK_SERVER", raising=False)


def test_a_forked_child_answers_and_its_prints_reach_the_output() -> None:
    out = Recorded()
    child = Child("forked", output=out)
    try:
        assert child.call(_shout, "hi", label="m001") == 42
        assert child.forked and _ppid(child.pid) == _zygote_pid()
    finally:
        child.close()
    assert ("[forked · m001]", "out hi\nraw\n", False) in out.lines
    assert ("[forked · m001]", "err hi\n", True) in out.lines


def test_the_zygote_has_a_single_thread() -> None:
    """NOTE [ why forking the zygote is safe ]: nothing but its main thread."""
    child = Child("any")
    try:
        child.call(_draws)  # the zygote is ready: it forked this one
        assert len(os.listdir(f"/proc/{_zygote_pid()}/task")) == 1
    finally:
        child.close()


def test_a_child_gets_the_environment_cwd_and_path_of_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    for name in ("one", "two"):
        here = tmp_path / name
        (here / "mods").mkdir(parents=True)
        # written now, after the zygote may have looked at sys.path's folders
        (here / "mods" / f"zygote_mod_{name}.py").write_text(f"VALUE = {name!r}\n")
        monkeypatch.chdir(here)
        monkeypatch.setenv("ZYGOTE_TEST", name)
        monkeypatch.syspath_prepend(str(here / "mods"))
        child = Child(name)
        try:
            seen.append(child.call(_where))
            assert child.call(_import, f"zygote_mod_{name}") == name
            assert child.forked
        finally:
            child.close()
    for name, where in zip(("one", "two"), seen, strict=True):
        assert where["cwd"] == str(tmp_path / name)
        assert where["env"]["ZYGOTE_TEST"] == name
        assert where["path"][0] == str(tmp_path / name)  # as `python -m` starts
        assert str(tmp_path / name / "mods") in where["path"]
    assert str(tmp_path / "two" / "mods") not in seen[0]["path"]


@pytest.mark.parametrize(
    "env",
    [
        {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        {"OMP_NUM_THREADS": "2"},
        {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"},
        {"OMP_NUM_THREADS": "64"},
        {},
    ],
)
def test_a_forked_child_is_what_a_popen_child_is(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same start, forked and with ``Popen``: the same environment, working directory,
    path, torch threads (following OMP_NUM_THREADS as torch reads it), limits, signals."""
    seen = []
    for fork in ("1", "0"):
        monkeypatch.setenv("CEREBRO_FORK_SERVER", fork)
        child = Child("probe", env)
        try:
            seen.append(child.call(_where))
            assert child.forked == (fork == "1")
        finally:
            child.close()
    forked, popen = seen
    assert forked["ppid"] != popen["ppid"] == os.getpid()
    for key in ("cwd", "env", "threads", "limits", "sigint"):
        assert forked[key] == popen[key], key
    # the folders imports search, in order (an editable install's path-hook entry, not a
    # folder, is made absolute in a Popen child's PYTHONPATH and left as is when forked)
    assert _folders(forked["path"]) == _folders(popen["path"])
    if "OMP_NUM_THREADS" in env and env["OMP_NUM_THREADS"] != "64":
        want = int(env.get("MKL_NUM_THREADS", env["OMP_NUM_THREADS"]))
        assert forked["threads"] == min(want, len(os.sched_getaffinity(0)))


def _folders(path: list[str]) -> list[str]:
    return [p for p in dict.fromkeys(path) if os.path.exists(p)]


def test_forked_children_draw_their_own_random_numbers() -> None:
    """Each child reseeds the global generators, as fresh interpreters differ; none
    repeats the zygote's (cerebro seeds what it computes: NOTE [ a forked child is a
    fresh child ])."""
    children = [Child(f"c{i}") for i in range(2)]
    try:
        first, second = (c.call(_draws) for c in children)
        assert all(c.forked for c in children)
    finally:
        for c in children:
            c.close()
    for a, b in zip(first, second, strict=True):
        assert a != b


def test_a_killed_child_reports_its_signal() -> None:
    child = Child("victim")
    try:
        child.call(_draws)
        assert child.forked
        child.submit(time.sleep, 30)
        os.kill(child.pid, signal.SIGKILL)
        with pytest.raises(ChildDied, match=r"victim \(exit status signal 9\)"):
            child.result()
        assert not child.alive()
    finally:
        child.kill()


def test_a_killed_zygote_is_started_again_and_its_children_go_on() -> None:
    old = Child("old")
    try:
        old.call(_draws)
        first = _fork_server.server()
        assert first is not None and old.forked
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait()
        new = Child("new")
        try:
            assert new.call(_shout, "again") == 42
            assert new.forked and _ppid(new.pid) == _zygote_pid() != first.pid
        finally:
            new.close()
        assert old.call(_shout, "still") == 42  # it never needed the zygote
        assert old.alive()
        old.submit(time.sleep, 30)
        os.kill(old.pid, signal.SIGKILL)
        with pytest.raises(ChildDied, match=r"old \(exit status None\)"):  # status lost
            old.result()
    finally:
        old.kill()


DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
from cerebro.engine import _fork_server
from cerebro.engine._process import Child
from test_zygote import _draws

child = Child("w")
if sys.argv[1] != "starting":
    child.call(_draws)
print(_fork_server.server().pid, child.pid if sys.argv[1] != "starting" else 0, flush=True)
if sys.argv[1] != "exit":
    time.sleep(600)
"""


@pytest.mark.parametrize("end", ["SIGKILL", "starting", "exit"])
def test_no_process_outlives_the_driver(end: str) -> None:
    """SIGKILL of the driver alone (not its group), also while the zygote still imports,
    or a plain exit: the zygote and the children it forked end too."""
    script = DRIVER.format(tests=str(Path(__file__).parent))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, end], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        zygote, child = (int(x) for x in proc.stdout.readline().split())
        assert _running(zygote)
        if end != "exit":
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.time() + 30
        left = [p for p in (zygote, child) if p]
        while time.time() < deadline and any(_running(p) for p in left):
            time.sleep(0.05)
        assert not [p for p in left if _running(p)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_cerebro_fork_server_0_starts_children_with_popen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CEREBRO_FORK_SERVER", "0")
    assert _fork_server.server() is None and _fork_server.why_off() == "CEREBRO_FORK_SERVER=0"
    child = Child("plain")
    try:
        where = child.call(_where)
        assert not child.forked and where["ppid"] == os.getpid()
        assert b"cerebro.engine._child" in Path(f"/proc/{child.pid}/cmdline").read_bytes()
    finally:
        child.close()


def test_the_zygote_refuses_to_fork_once_it_has_another_thread() -> None:
    """The check the zygote runs before each fork, on a real thread of this process."""
    if torch.cuda.is_initialized():
        pytest.skip("CUDA is initialized in this process")
    before = len(os.listdir("/proc/self/task"))
    assert _zygote.unsafe(before) is None
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        why = _zygote.unsafe(before)
        assert why is not None and f"{before + 1} threads" in why
    finally:
        stop.set()
        thread.join()
