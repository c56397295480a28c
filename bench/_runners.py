"""The suite's runners on this machine: Cerebro MOP, the plain loop, the ideals, task
parallelism. (Ray Tune and Optuna are in ``_peers.py``.)

Each runner is a function ``run_X(workload, seed) -> dict`` with at least ``wall_s``,
``val_acc`` (last-epoch validation accuracy per config, in grid order, ``None`` for a
config that did not finish), ``workers`` and ``data_bytes_per_worker``. The suite calls
each one in a fresh Python process (``python bench/_runners.py RUNNER WORKLOAD``), so no
runner inherits another's imports, thread pools or Ray instance.

What each wall time includes:

* cerebro: ``wall_s`` is the ``run_fit`` call (each worker's set-up, the probe minibatch,
  every hop) on worker processes that ``Experiment.start()`` started before it; that start
  (interpreter, ``import torch``, optimizer warm-up) is ``start_s`` and ``cold_wall_s`` =
  ``start_s + wall_s`` is the fit from a cold machine. The ETL is timed apart (a one-off
  that later fits reuse), and so is ``close()``.
* plain: the training loop on tensors loaded before the clock starts (one untimed warm-up).
* task: starting 2 processes, each loading the full data set, until the last config ends.
* corun: no wall of its own; each config's single-thread time measured while a second,
  identical process trains beside it (the co-run ideal).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _common import WORKERS, spawn_context  # noqa: E402
from _plain import run_plain, train_config, warm_up  # noqa: E402
from _workloads import Workload, workloads  # noqa: E402

__all__ = ["RUNNERS", "child_main", "nbytes", "runner_env"]

# Cerebro's workers raise glibc's mmap and trim thresholds (cerebro/allocator.py), which
# takes the page faults out of every minibatch's allocations. A "_tuned" peer runs with the
# same thresholds (glibc reads these variables at start-up), so the allocator's share of
# Cerebro's lead can be told apart from MOP's; "cerebro_untuned" turns the tuning off.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30)}
VARIANTS = {
    "plain1_tuned": ("plain1", MALLOC_ENV),
    "plain2_tuned": ("plain2", MALLOC_ENV),
    "corun_tuned": ("corun", MALLOC_ENV),
    "cerebro_untuned": ("cerebro", {"CEREBRO_KEEP_FREED_MB": "0"}),
}


def runner_env(runner: str) -> tuple[str, dict[str, str]]:
    """The runner function's name and the environment variables its process starts with."""
    return VARIANTS.get(runner, (runner, {}))


def nbytes(data: dict[str, Any]) -> int:
    """Bytes of the tensors in ``{"train": (x, y), "val": (x, y)}``."""
    return sum(t.numel() * t.element_size() for split in data.values() for t in split)


# --- Cerebro ----------------------------------------------------------------------------------


def run_cerebro_lrf(wl: Workload, seed: int) -> dict[str, Any]:
    """Cerebro with ``policy="lrf"``: any train order per epoch, so fewer stalls, but runs
    are no longer bit-identical (the order of partitions a model sees follows timing)."""
    return run_cerebro(wl, seed, policy="lrf")


def run_cerebro(
    wl: Workload, seed: int, policy: str = "fixed", workers: int = WORKERS
) -> dict[str, Any]:
    from _hops import hop_overhead, hop_trace

    from cerebro import Experiment
    from cerebro.etl import owner
    from cerebro.partitions import Partition, partition_path

    ex = wl.module
    run_dir = Path(tempfile.mkdtemp(prefix=f"cerebro-suite-{wl.name}-"))
    try:
        exp = Experiment(wl.params(str(run_dir)), workers=workers, verbose=False)
        t = time.perf_counter()
        exp.start()  # the worker processes: interpreter, import torch, optimizer warm-up
        start_s = time.perf_counter() - t
        t = time.perf_counter()
        exp.run_etl(ex.etl_spec, fraction=1.0, seed=seed)
        etl_s = time.perf_counter() - t
        fit_start = time.time()
        t0 = time.perf_counter()
        result = exp.run_fit(
            ex.minibatch_spec, param_grid=wl.grid, num_epochs=wl.epochs, seed=seed, policy=policy
        )
        wall = time.perf_counter() - t0
        fit_end = time.time()
        t = time.perf_counter()
        exp.close()
        close_s = time.perf_counter() - t
        hist = result.history
        last = hist[(hist["split"] == "val") & (hist["metric"] == "acc")]
        last = last[last["epoch"] == wl.epochs].set_index("model_id")["value"]  # from 1
        acc = [
            float(last[c.model_id]) if c.model_id in last.index else None
            for c in wl.model_configs()
        ]
        held = [0] * workers
        data_dir = run_dir / "data"
        for split in ("train", "val"):
            p = 0
            while partition_path(data_dir, split, p).is_dir():
                held[owner(p, workers)] += Partition(partition_path(data_dir, split, p)).nbytes()
                p += 1
        return {
            "wall_s": wall,
            "start_s": start_s,
            "cold_wall_s": start_s + wall,
            "close_s": close_s,
            "etl_s": etl_s,
            "val_acc": acc,
            "workers": workers,
            "fit_window": [fit_start, fit_end],
            "data_bytes_per_worker": max(held),
            "data_bytes_each": held,
            "hops": hop_overhead(run_dir / "catalog.sqlite", fit_start, fit_end),
            "trace": hop_trace(run_dir / "catalog.sqlite"),
        }
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# --- the plain loop ---------------------------------------------------------------------------


def _plain(wl: Workload, seed: int, threads: int) -> dict[str, Any]:
    data = wl.tensors()
    wall, results = run_plain(
        wl.module, wl.configs(), data["train"], data["val"], wl.epochs, threads, seed
    )
    return {
        "wall_s": wall,
        "val_acc": [r.val_acc for r in results],
        "config_s": [r.wall_s for r in results],
        "workers": 1,
        "threads": threads,
        "data_bytes_per_worker": nbytes(data),
    }


def run_plain2(wl: Workload, seed: int) -> dict[str, Any]:
    return _plain(wl, seed, WORKERS)


def run_plain1(wl: Workload, seed: int) -> dict[str, Any]:
    return _plain(wl, seed, 1)


# --- the co-run ideal -------------------------------------------------------------------------


def _corun_worker(name: str, quick: bool, seed: int, barrier: Any, out: Any, stop: Any) -> None:
    import torch

    torch.set_num_threads(1)
    wl = workloads(quick)[name]
    data, configs = wl.tensors(), wl.configs()
    warm_up(wl.module, configs[0], data["train"])
    barrier.wait()
    results = [
        train_config(wl.module, hp, data["train"], data["val"], wl.epochs, seed) for hp in configs
    ]
    out.put((os.getpid(), [r.wall_s for r in results], [r.val_acc for r in results]))
    i = 0
    while not stop.is_set():  # keep the neighbour company until it has finished its pass
        train_config(wl.module, configs[i % len(configs)], data["train"], data["val"], 1, seed)
        i += 1


def run_corun(wl: Workload, seed: int, quick: bool = False) -> dict[str, Any]:
    ctx = spawn_context()
    barrier, out, stop = ctx.Barrier(WORKERS), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_corun_worker, args=(wl.name, quick, seed, barrier, out, stop))
        for _ in range(WORKERS)
    ]
    for p in procs:
        p.start()
    try:
        got = [out.get(timeout=3600) for _ in procs]
    finally:
        stop.set()
        for p in procs:
            p.terminate()  # mid-config is fine: nothing after the first pass is measured
            p.join()
    per_proc = [times for _, times, _ in got]
    config_s = [sum(ts) / len(ts) for ts in zip(*per_proc, strict=True)]
    return {
        "wall_s": None,
        "config_s": config_s,
        "config_s_each": per_proc,
        "val_acc": got[0][2],
        "workers": WORKERS,
    }


# --- task parallelism -------------------------------------------------------------------------


def _task_worker(name: str, quick: bool, seed: int, tasks: Any, out: Any) -> None:
    import torch

    torch.set_num_threads(1)
    wl = workloads(quick)[name]
    data, configs = wl.tensors(), wl.configs()  # a full copy of the data in every process
    out.put(("bytes", os.getpid(), nbytes(data)))
    while (i := tasks.get()) is not None:
        r = train_config(wl.module, configs[i], data["train"], data["val"], wl.epochs, seed)
        out.put(("done", i, r.val_acc, r.wall_s, os.getpid()))


def run_task(wl: Workload, seed: int, quick: bool = False) -> dict[str, Any]:
    ctx = spawn_context()
    n = len(wl.configs())
    t0 = time.perf_counter()
    tasks, out = ctx.Queue(), ctx.Queue()
    for i in range(n):
        tasks.put(i)
    for _ in range(WORKERS):
        tasks.put(None)
    procs = [
        ctx.Process(target=_task_worker, args=(wl.name, quick, seed, tasks, out))
        for _ in range(WORKERS)
    ]
    for p in procs:
        p.start()
    acc: list[float | None] = [None] * n
    config_s: list[float | None] = [None] * n
    held: dict[int, int] = {}
    done = 0
    while done < n:
        msg = out.get(timeout=3600)
        if msg[0] == "bytes":
            held[msg[1]] = msg[2]
        else:
            _, i, a, s, _pid = msg
            acc[i], config_s[i] = a, s
            done += 1
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "val_acc": acc,
        "config_s": config_s,
        "workers": WORKERS,
        "data_bytes_per_worker": max(held.values()),
        "data_bytes_each": sorted(held.values()),
    }


def _runners() -> dict[str, Any]:
    from _peers import run_optuna, run_optuna_threads, run_ray, run_ray_reuse

    return {
        "cerebro": run_cerebro,
        "cerebro_lrf": run_cerebro_lrf,
        "plain2": run_plain2,
        "plain1": run_plain1,
        "corun": run_corun,
        "task": run_task,
        "ray": run_ray,
        "ray_reuse": run_ray_reuse,
        "optuna": run_optuna,
        "optuna_threads": run_optuna_threads,
    }


RUNNERS = (
    "cerebro",
    "cerebro_lrf",
    "plain2",
    "plain1",
    "corun",
    "task",
    "ray",
    "ray_reuse",
    "optuna",
    "optuna_threads",
    *VARIANTS,
)


def child_main(argv: list[str]) -> None:
    """``RUNNER WORKLOAD QUICK(0|1) SEED OUT.json``: run one runner, write its result."""
    runner, name, quick, seed, out = argv[0], argv[1], argv[2] == "1", int(argv[3]), argv[4]
    wl = workloads(quick)[name]
    wl.tensors_file()  # make the data (once) before any clock starts
    base = runner_env(runner)[0]
    fn = _runners()[base]
    kwargs = {"quick": quick} if base in ("corun", "task", "optuna", "optuna_threads") else {}
    result = fn(wl, seed, **kwargs)
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    child_main(sys.argv[1:])
