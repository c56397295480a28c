"""The engine contract (NOTE [ engine contract ], the docstrings of ``cerebro.engine.Engine``),
tested once for every engine: the local engine, the Ray engine (skipped without Ray) and
:class:`cerebro.testing.FakeEngine` (cf. optuna's ``testing/pytest_storages.py``).

The tests use only the protocol and the testing hook ``kill_worker`` (NOTE [ killing a
worker in a test ]). Files decide when things happen, never sleeps: the spec
(:class:`toy.LoggedSpec`; for the fake, ``run`` and ``setup`` functions reading the same
files) holds a hop inside ``train`` while ``hold`` exists (touching ``inside``), holds a
replacement's set-up while ``gate`` exists, fails it while ``fail`` exists, and logs each
set-up to ``setups``. One engine per kind serves the module (each test leaves it idle);
a test that breaks its engine starts its own.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from cerebro import UserCodeError
from cerebro._controller import run_loop
from cerebro.engine import EngineEvent, HopDone, WorkerLost
from cerebro.engine.messages import HopTask
from cerebro.params import ModelConfig, expand_grid
from cerebro.testing import FakeEngine, HopResult, KillableEngine, done
from toy import LoggedSpec, controller_fit, hop_task, poll_until, wait_for

KINDS = ["local", "ray", "fake"]
OWNED = [{"train": [0], "val": [0]}, {"train": [1], "val": [1]}]


@dataclass
class Case:
    """One engine under test and the folder of files that steer its spec."""

    kind: str
    engine: KillableEngine
    folder: Path

    def lines(self, name: str) -> list[str]:
        path = self.folder / name
        return path.read_text().split() if path.exists() else []

    def setups(self) -> int:
        """Worker set-ups done so far (each slot's first, and each replacement's)."""
        return len(self.lines("setups"))

    def start_held(self, worker: int, task: HopTask) -> None:
        """Submit ``task`` (a ``hold`` hop) to ``worker`` and return once it runs, held.

        A real engine's hop runs once its worker has touched ``inside``; the fake's runs
        from submit on (it runs hops only when polled), so there is nothing to wait for.
        """
        (self.folder / "inside").unlink(missing_ok=True)
        (self.folder / "hold").touch()
        self.engine.submit(worker, task)
        if self.kind != "fake":
            wait_for(self.folder / "inside")

    def touch(self, *names: str) -> None:
        for name in names:
            (self.folder / name).touch()

    def remove(self, *names: str) -> None:
        for name in names:
            (self.folder / name).unlink(missing_ok=True)


def _fake(folder: Path) -> FakeEngine:
    """A fake engine that reads the files as :class:`toy.LoggedSpec` does."""

    def run(worker: int, task: HopTask) -> HopResult:
        if task.kind == "train" and task.hyperparams.get("hold") and (folder / "hold").exists():
            (folder / "inside").touch()
            return None  # still running
        return done(task)

    def setup(worker: int) -> bool:
        if (folder / "gate").exists():
            return False
        if (folder / "fail").exists():
            (folder / "failed").touch()
            raise UserCodeError(
                "RuntimeError: no licence server",
                function="LoggedSpec.initialize_worker",
                where=f"worker {worker} set-up",
            )
        with open(folder / "setups", "a") as f:
            f.write(f"fake-{worker}\n")
        return True

    return FakeEngine(len(OWNED), run, setup=setup, max_restarts=50)


def _engine(kind: str, folder: Path, data_dir: str) -> KillableEngine:
    if kind == "fake":
        return _fake(folder)
    if kind == "local":
        from cerebro.engine.local import LocalEngine

        return LocalEngine(
            LoggedSpec(folder),
            data_dir,
            OWNED,
            "",
            threads=1,
            devices=["cpu"] * len(OWNED),
            max_restarts=50,
        )
    from cerebro.engine.ray import RayEngine

    # half a CPU each: the module's engine and a test's own fit in a 2-CPU Ray together
    return RayEngine(
        LoggedSpec(folder),
        data_dir,
        OWNED,
        str(folder),
        resources_per_worker={"CPU": 0.5},
        max_restarts=50,
    )


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance for the module's Ray engines (stopped after, so a later
    module can start its own cluster)."""
    ray = pytest.importorskip("ray", reason="the Ray engine is optional")
    from cerebro.engine.ray import connect

    ours = not ray.is_initialized()
    connect(None, num_cpus=2)
    yield
    if ours:
        ray.shutdown()


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("local_ray")
    return str(request.param)


@pytest.fixture(scope="module")
def shared(
    kind: str, tmp_path_factory: pytest.TempPathFactory, toy_data: dict[str, str]
) -> Iterator[Case]:
    folder = tmp_path_factory.mktemp(f"contract-{kind}")
    case = Case(kind, _engine(kind, folder, toy_data["etl_dir"]), folder)
    yield case
    case.engine.shutdown()


@pytest.fixture
def case(shared: Case) -> Iterator[Case]:
    """The module's engine of this kind, idle; the steering files are removed after."""
    yield shared
    shared.remove("gate", "hold", "fail", "inside")


def _renamed(task: HopTask, model_id: str) -> HopTask:
    return replace(task, model_id=model_id)


def test_every_hop_is_reported_once_each_slots_in_the_order_submitted(case: Case) -> None:
    engine, before = case.engine, case.setups()
    sent = {w: [_renamed(hop_task(w), f"m{w}-{k}") for k in range(3)] for w in (0, 1)}
    for k in range(3):
        for w in (0, 1):
            engine.submit(w, sent[w][k])
    events = poll_until(engine, 6)
    assert all(isinstance(e, HopDone) for e in events)
    reported = Counter(e.task.model_id for e in events)
    assert reported == Counter(t.model_id for ts in sent.values() for t in ts)
    for w in (0, 1):
        mine: list[Any] = [e for e in events if e.worker == w]
        assert [e.task for e in mine] == sent[w]
        assert all(a.outcome.end <= b.outcome.start for a, b in itertools.pairwise(mine))
    assert engine.poll(timeout=0.05) == []  # nothing reported twice
    assert case.setups() == before  # the set-up hooks run per worker, not per hop


def test_a_queued_hop_starts_when_the_one_ahead_ends(case: Case) -> None:
    engine = case.engine
    first, second = hop_task(0, hold=True), _renamed(hop_task(0), "q")
    case.start_held(0, first)
    engine.submit(0, second)
    engine.submit(1, hop_task(1))
    [other] = poll_until(engine, 1)  # the other slot is not held up...
    assert isinstance(other, HopDone) and other.worker == 1
    assert engine.poll(timeout=0.05) == []  # ...and the queued hop does not overtake
    case.remove("hold")
    a, b = poll_until(engine, 2)
    assert isinstance(a, HopDone) and isinstance(b, HopDone)
    assert (a.task, b.task) == (first, second) and a.outcome.end <= b.outcome.start


def test_a_killed_worker_loses_no_hop_and_is_replaced_in_the_background(case: Case) -> None:
    engine, before = case.engine, case.setups()
    first, second = hop_task(0, hold=True), _renamed(hop_task(0), "q")
    case.touch("gate")  # the replacement's set-up waits
    case.start_held(0, first)
    engine.submit(0, second)
    engine.kill_worker(0)
    # the running hop and the one queued behind it, each lost once, in order, reported
    # while the replacement is still setting up
    events: list[Any] = poll_until(engine, 2)
    assert all(isinstance(e, WorkerLost) and e.worker == 0 for e in events)
    assert [(e.task, e.started) for e in events] == [(first, True), (second, False)]
    case.remove("hold")
    engine.submit(0, first)  # the slot takes them back at once; they wait for the set-up
    engine.submit(0, second)
    engine.submit(1, hop_task(1))
    [other] = poll_until(engine, 1)  # the other slot's hops go on meanwhile
    assert isinstance(other, HopDone) and other.worker == 1
    assert case.setups() == before
    case.remove("gate")
    events = poll_until(engine, 2)
    assert all(isinstance(e, HopDone) and e.worker == 0 for e in events)
    assert [e.task for e in events] == [first, second]
    assert engine.poll(timeout=0.05) == []  # never also reported as done by the dead one
    assert case.setups() == before + 1  # one replacement, set up once


class _KillWhenHeld:
    """An engine that passes every call to ``case.engine``, and once ``after`` hops are
    done holds the next train hop of a ``hold`` model (the ``hold`` file), kills that
    hop's worker once it runs, and lets the holds go."""

    def __init__(self, case: Case, after: int) -> None:
        self.case, self.after, self.done = case, after, 0
        self.workers = case.engine.workers
        self.in_flight: dict[int, list[HopTask]] = {w: [] for w in range(self.workers)}
        self.killed: HopTask | None = None
        self.holding = False

    def submit(self, worker: int, task: HopTask) -> None:
        self.in_flight[worker].append(task)
        self.case.engine.submit(worker, task)

    def poll(self, timeout: float | None = None) -> list[EngineEvent]:
        events = self.case.engine.poll(timeout)
        for e in events:
            self.in_flight[e.worker].remove(e.task)
            self.done += isinstance(e, HopDone)
        folder = self.case.folder
        if self.killed is None and self.done >= self.after and not self.holding:
            # hold, then forget who was inside: a hop that touches ``inside`` from now on
            # finds ``hold`` there and waits
            folder.joinpath("hold").touch()
            folder.joinpath("inside").unlink(missing_ok=True)
            self.holding = True
        if self.holding and self.killed is None and folder.joinpath("inside").exists():
            w, task = next(
                (w, t)
                for w, tasks in self.in_flight.items()
                for t in tasks
                if t.kind == "train" and t.hyperparams.get("hold")
            )
            self.case.engine.kill_worker(w)
            self.killed = task
            folder.joinpath("hold").unlink()
        return events

    def shutdown(self) -> None:
        pass  # the module's engine outlives the fit


def test_a_fit_with_a_killed_worker_records_every_hop_once(case: Case, tmp_path: Path) -> None:
    """The controller on this engine: a worker killed mid-fit loses no hop."""
    before = case.setups()
    epochs = 2
    configs = [
        ModelConfig(c.model_id, {**c.hyperparams, "hold": c.model_id == "m000"})
        for c in expand_grid({"lr": [0.05, 0.01], "batch_size": [16, 32]})
    ]
    catalog, state, sched = controller_fit(tmp_path, configs, epochs)
    fit_id = state.fit_id
    engine = _KillWhenHeld(case, after=5)

    class NoBar:
        disable = True

    run_loop(catalog, state, sched, engine, NoBar())
    hops = catalog.hops(fit_id)
    models = {r["model_id"]: r["status"] for r in catalog.models(fit_id)}
    catalog.close()
    assert engine.killed is not None and engine.killed.model_id == "m000"
    key = ("model_id", "kind", "partition", "epoch")
    finished = Counter(tuple(h[k] for k in key) for h in hops if h["status"] == "done")
    assert len(finished) == 4 * 2 * 2 * epochs and set(finished.values()) == {1}
    lost = [h for h in hops if h["status"] == "lost"]
    ran = [h for h in lost if "queued behind" not in h["error"]]
    assert [tuple(h[k] for k in key) for h in ran] == [
        (engine.killed.model_id, "train", engine.killed.partition, engine.killed.epoch)
    ]
    assert len(lost) <= 2 and {h["worker"] for h in lost} == {ran[0]["worker"]}
    assert set(models.values()) == {"done"}
    assert case.setups() == before + 1


@pytest.fixture
def own(kind: str, tmp_path: Path, toy_data: dict[str, str]) -> Iterator[Case]:
    """An engine of this kind for one test, shut down after it (again, if it did)."""
    case = Case(kind, _engine(kind, tmp_path, toy_data["etl_dir"]), tmp_path)
    yield case
    case.remove("gate", "hold", "fail", "inside")
    case.engine.shutdown()


def _running(pid: str) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_failed_replacement_set_up_is_raised_and_shutdown_ends_every_worker(
    own: Case,
) -> None:
    """The failure is raised by a poll, after the hop another slot finished meanwhile has
    been reported (Engine.poll: a finished hop is never lost to another slot's error)."""
    engine = own.engine
    assert own.setups() == engine.workers  # every slot set up once, before the first hop
    own.start_held(1, hop_task(1, hold=True))
    own.touch("gate", "fail")  # the replacement waits, then its initialize_worker raises
    engine.kill_worker(1)
    [lost] = poll_until(engine, 1)
    assert isinstance(lost, WorkerLost) and lost.worker == 1
    finished = hop_task(0)
    engine.submit(0, finished)
    # once the next hop holds slot 0, ``finished`` has been answered (a worker answers
    # each hop before it starts the next)
    own.start_held(0, replace(hop_task(0, hold=True), model_id="m9"))
    own.remove("gate")
    if own.kind != "fake":  # (the fake runs set-ups and hops only when polled)
        wait_for(own.folder / "failed")  # both answers are in, or within a millisecond
    events: list[EngineEvent] = []
    with pytest.raises(UserCodeError, match="no licence server") as info:
        while True:
            events += engine.poll(timeout=1.0)
    assert [(type(e), e.task) for e in events] == [(HopDone, finished)]
    assert "LoggedSpec.initialize_worker" in str(info.value)
    assert "worker 1 set-up" in str(info.value)
    engine.shutdown()  # the held hop, in flight: abandoned
    if own.kind != "fake":  # every process that started a worker's set-up has ended
        pids = own.lines("started")
        assert len(pids) == engine.workers + 1
        for pid in pids:
            _wait_for_exit(pid)


def _wait_for_exit(pid: str, within: float = 30) -> None:
    """Wait until process ``pid`` has ended (Ray's exit a moment after they are killed)."""
    deadline = time.monotonic() + within
    while _running(pid):
        assert time.monotonic() < deadline, f"worker process {pid} still runs after shutdown"
        time.sleep(0.05)
