"""What the benchmark scripts share, so that each piece has one home.

In a runner's own process:

* :func:`cerebro_fit`: Cerebro as a user's first run pays it (``Experiment``, ``run_etl``
  from the CSVs, which starts the workers as it reads, ``run_fit``), with what it trained
  and where its time went, read from the catalog;
* :func:`ray_session`: a Ray instance of our own for a Tune run, whose trials can import
  the bench modules and cerebro; :func:`ray_curves`, each trial's reported curve;
* :func:`journal_storage`, :func:`run_processes`: an Optuna study shared by processes
  through a journal file; :func:`study_curves`, each trial's reported curve;
* :data:`SPACE` and :func:`suggest`: the MNIST CNN's search space, for Cerebro and for an
  Optuna objective.

In the driver: :func:`run_child` (one runner in a fresh interpreter, with the load and the
CPU others used meanwhile), :func:`attempt` (wait for a quiet machine, run, run again when
disturbed), :func:`run_rounds` (every runner once per round), the options
(:func:`driver_parser`, :func:`driver_args`), :func:`start_check`, :func:`print_targets`,
:func:`begin` and :func:`write_json`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _quiet import ForeignCpu, busy_cores, loadavg, wait_quiet  # noqa: E402

__all__ = [
    "FOREIGN_LIMIT",
    "SPACE",
    "WORKERS",
    "attempt",
    "begin",
    "cerebro_fit",
    "cerebro_space",
    "driver_args",
    "driver_parser",
    "journal_storage",
    "machine",
    "machine_end",
    "print_targets",
    "ray_curves",
    "ray_session",
    "run_child",
    "run_processes",
    "run_rounds",
    "spawn_context",
    "start_check",
    "stop_ray",
    "study_curves",
    "suggest",
    "write_json",
]

WORKERS = 2
# A run during which other processes used more than this share of the machine's CPU
# (cores x its wall time) is run again (``--retries``).
FOREIGN_LIMIT = 0.03

# The MNIST CNN's search space (W3's and search_peers'): ``channels``, the hidden fc
# layer's width (``build_cnn``'s argument), lr and weight_decay log-uniform (Adam's, from
# ``make_optimizer``), batch_size.
SPACE: dict[str, Any] = {
    "channels": [32, 64, 128, 256],
    "lr": (1e-4, 1e-2),
    "batch_size": [32, 64, 128],
    "weight_decay": (1e-6, 1e-3),
}


def cerebro_space() -> dict[str, Any]:
    """:data:`SPACE` as ``run_fit`` takes it (``cerebro.search.choice`` / ``loguniform``)."""
    from cerebro.search import choice, loguniform

    return {k: choice(v) if isinstance(v, list) else loguniform(*v) for k, v in SPACE.items()}


def suggest(trial: Any) -> dict[str, Any]:
    """One config from :data:`SPACE`, asked of an Optuna trial as an Optuna user writes it
    (also Ray Tune's ``OptunaSearch`` define-by-run space)."""
    return {
        k: trial.suggest_categorical(k, v)
        if isinstance(v, list)
        else trial.suggest_float(k, *v, log=True)
        for k, v in SPACE.items()
    }


def spawn_context() -> Any:
    """``spawn``: a fresh interpreter per process, as Cerebro's workers are; ``fork`` after
    torch started its thread pools can deadlock."""
    return mp.get_context("spawn")


# --- Cerebro ----------------------------------------------------------------------------------


def cerebro_fit(
    params: dict[str, Any],
    example: types.ModuleType,
    space: Any,
    epochs: int,
    seed: int,
    **fit: Any,
) -> dict[str, Any]:
    """``Experiment(params, workers=2)``, ``run_etl`` from the CSVs, ``run_fit(space, ...,
    **fit)`` in a fresh run directory: a user's first run.

    ``wall_s`` counts all of it, from before ``Experiment()`` (the workers start with the
    ETL) to the return of ``run_fit``; ``etl_s`` and ``fit_s`` are its parts; ``close_s``
    (``Experiment.close``) is timed apart. ``models``: :func:`_hops.fit_models` (each
    model's hyperparameters and validation accuracy after each epoch); ``hops`` and
    ``profile``: :func:`_hops.hop_overhead` and :func:`_hops.profile`.
    """
    from _hops import fit_models, hop_overhead, profile

    from cerebro import Experiment

    run_dir = Path(tempfile.mkdtemp(prefix="cerebro-bench-"))
    try:
        t0 = time.perf_counter()
        exp = Experiment({**params, "output_dir": str(run_dir)}, workers=WORKERS, verbose=False)
        exp.run_etl(example.etl_spec, seed=seed)  # starts the workers as it reads the CSVs
        etl_s = time.perf_counter() - t0
        fit_start = time.time()
        t = time.perf_counter()
        result = exp.run_fit(example.minibatch_spec, space, num_epochs=epochs, seed=seed, **fit)
        fit_end = time.time()
        fit_s = time.perf_counter() - t
        wall = time.perf_counter() - t0
        t = time.perf_counter()
        exp.close()
        close_s = time.perf_counter() - t
        statuses = result.table["status"].value_counts().to_dict()
        catalog = exp.catalog_path
        return {
            "wall_s": wall,
            "etl_s": etl_s,
            "fit_s": fit_s,
            "close_s": close_s,
            "status": {str(k): int(v) for k, v in statuses.items()},
            "models": fit_models(catalog),
            "hops": hop_overhead(catalog, fit_start, fit_end),
            "profile": profile(catalog, fit_start, fit_end),
        }
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# --- Ray Tune ---------------------------------------------------------------------------------


@contextmanager
def ray_session(prefix: str, num_cpus: int = WORKERS) -> Iterator[dict[str, Any]]:
    """A new local Ray instance of our own (never someone else's cluster) and a Tune
    storage folder; yields ``{"storage": path, "init_s": seconds of ray.init}``. Ray stops
    at the end of the block unless :func:`stop_ray` stopped it (timed apart) before."""
    import ray

    # Trials run in Ray's worker processes: they must import the bench modules and cerebro.
    path = [str(BENCH), *(p for p in sys.path if p)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    storage = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        t = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            configure_logging=True,
        )
        yield {"storage": str(storage), "init_s": time.perf_counter() - t}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)


def stop_ray() -> float:
    """``ray.shutdown()``; returns its seconds."""
    import ray

    t = time.perf_counter()
    ray.shutdown()
    return time.perf_counter() - t


def ray_curves(
    grid: Any, metric: str = "val_acc"
) -> tuple[list[tuple[Any, list[float]]], list[str]]:
    """Each trial's config and the ``metric`` it reported after each epoch (in the order
    of ``training_iteration``), and the trials' errors."""
    curves, errors = [], []
    for r in grid:
        if r.error is not None:
            errors.append(str(r.error)[:500])
        df = r.metrics_dataframe
        curve: list[float] = []
        if df is not None and len(df):
            curve = [float(v) for v in df.sort_values("training_iteration")[metric]]
        curves.append((r.config, curve))
    return curves, errors


# --- Optuna -----------------------------------------------------------------------------------


def journal_storage(journal: str) -> Any:
    """A study storage in the journal file ``journal``, which processes can share."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(journal))


def run_processes(target: Callable[..., None], args: Sequence[tuple[Any, ...]]) -> None:
    """One fresh process (:func:`spawn_context`) per ``args`` running ``target(*a)``, all at
    once; returns when all have exited.

    Raises:
        RuntimeError: a process exited with an error.
    """
    ctx = spawn_context()
    procs = [ctx.Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"a process failed: exit codes {[p.exitcode for p in procs]}")


def study_curves(study: Any) -> tuple[list[tuple[dict[str, Any], list[float]]], dict[str, int]]:
    """Each trial's params and the values it reported (``trial.report``) by step, in trial
    order, and how many trials ended in each state."""
    curves: list[tuple[dict[str, Any], list[float]]] = []
    states: dict[str, int] = {}
    for t in sorted(study.trials, key=lambda t: t.number):
        states[t.state.name] = states.get(t.state.name, 0) + 1
        steps = sorted(t.intermediate_values)
        curves.append((dict(t.params), [float(t.intermediate_values[s]) for s in steps]))
    return curves, states


# --- the driver -------------------------------------------------------------------------------


def run_child(
    module: str, argv: Sequence[str], out: Path, log: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``module.child_main(argv)`` in a fresh interpreter, which writes its result to
    ``out`` as JSON: that result plus the process's wall time, the load average before
    and after, and the CPU other processes used meanwhile (``foreign_cpu_s``)."""
    code = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r}); import {module}; "
        f"{module}.child_main(sys.argv[1:])"
    )
    cmd = [sys.executable, "-c", code, *argv]
    load0 = loadavg()
    t0 = time.perf_counter()
    with ForeignCpu() as foreign, open(log, "w") as f:
        proc = subprocess.run(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
            env=None if env is None else dict(os.environ, **env),
        )
    process_s = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(
            f"{module} {' '.join(argv[:-1])} failed (exit {proc.returncode}):\n"
            f"{log.read_text()[-4000:]}"
        )
    result: dict[str, Any] = json.loads(out.read_text())
    result.update(
        process_s=process_s,
        loadavg_start=load0,
        loadavg_end=loadavg(),
        foreign_cpu_s=foreign.seconds,
        foreign_top=foreign.top_processes(),
    )
    return result


def attempt(
    run: Callable[[int], dict[str, Any]], args: argparse.Namespace, quiet: bool = True
) -> dict[str, Any]:
    """``run(i)`` for the i-th try, after waiting for no busy core (unless ``--no-wait``,
    ``--quick`` or not ``quiet``); tried again, up to ``args.retries`` times, while other
    processes used more than :data:`FOREIGN_LIMIT` of the machine's CPU during it. The
    result has ``quiet_before``, ``foreign_share`` and the ``discarded_attempts``."""
    cores = os.cpu_count() or 1
    discarded: list[dict[str, Any]] = []
    for i in range(args.retries + 1):
        waited = (
            {"skipped": True}
            if args.no_wait or args.quick or not quiet
            else wait_quiet(use_loadavg=False, max_wait=args.max_wait)
        )
        r = run(i)
        r["quiet_before"] = waited
        r["foreign_share"] = share = (r["foreign_cpu_s"] or 0.0) / (cores * r["process_s"])
        if share <= FOREIGN_LIMIT or i == args.retries:
            r["discarded_attempts"] = discarded
            return r
        print(
            f"(other processes used {share:.0%} of the CPU: {', '.join(r['foreign_top'])}; "
            "running it again)",
            end=" ",
            flush=True,
        )
        discarded.append({k: r.get(k) for k in ("wall_s", "foreign_cpu_s", "foreign_top")})
    raise AssertionError("unreachable")


def start_check(args: argparse.Namespace) -> dict[str, Any]:
    """Before the first runner: wait for a quiet machine (a smoke run, ``--quick``, only
    checks that nothing else is busy now); printed and returned."""
    quiet = (
        {"skipped": True}
        if args.no_wait
        else wait_quiet(
            use_loadavg=not args.quick, sample=1.0 if args.quick else 3.0, max_wait=args.max_wait
        )
    )
    print(f"load average at start {loadavg()}; quiet check: {quiet}", flush=True)
    return quiet


def machine(**more: Any) -> dict[str, Any]:
    """This machine's facts for a results file (cores, platform, Python, torch)."""
    import torch

    return {
        "cores": os.cpu_count() or 1,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **more,
    }


def machine_end() -> dict[str, Any]:
    """The load and busy cores at the end of a benchmark."""
    return {"loadavg_end": loadavg(), "busy_end": busy_cores(1.0)}


def write_json(out: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``out`` through a temp file and a rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"\nwrote {out}")


def driver_parser(doc: str | None, runners: Sequence[str], quick: str) -> argparse.ArgumentParser:
    """The options a driver of rounds of runners takes: ``--quick`` (what ``quick``
    says), ``--runners``, ``--retries``, ``--max-wait``, ``--no-wait`` and ``--out``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--runners", help=f"comma-separated, from: {','.join(runners)}")
    p.add_argument("--retries", type=int, help="re-runs of a disturbed run (default 1; quick 0)")
    p.add_argument("--max-wait", type=float, default=1200.0, help="seconds (default 1200)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    p.add_argument("--out", help="JSON (default bench/results/<script>[-quick].json)")
    return p


def driver_args(
    p: argparse.ArgumentParser, argv: list[str] | None, runners: Sequence[str], name: str
) -> tuple[argparse.Namespace, list[str], Path]:
    """Parse :func:`driver_parser`'s options: the arguments (``retries`` defaulted), the
    runners chosen (checked) and the JSON to write (``results/<name>[-quick].json``)."""
    args = p.parse_args(argv)
    if args.retries is None:
        args.retries = 0 if args.quick else 1
    chosen = args.runners.split(",") if args.runners else list(runners)
    unknown = [r for r in chosen if r not in runners]
    if unknown:
        p.error(f"unknown runner(s) {unknown}; choose from {', '.join(runners)}")
    out = Path(args.out or BENCH / "results" / f"{name}{'-quick' if args.quick else ''}.json")
    return args, chosen, out


def run_rounds(
    runners: Sequence[str],
    rounds: Sequence[Any],
    labels: dict[str, str],
    run: Callable[[str, Any], dict[str, Any]],
    brief: Callable[[dict[str, Any]], str],
) -> dict[str, list[dict[str, Any]]]:
    """Every runner once per round, one after another: ``run(runner, round)``, each result
    printed on its runner's line as ``brief(result)`` with its process time, load and the
    CPU others used. Returns each runner's results, in round order."""
    raw: dict[str, list[dict[str, Any]]] = {r: [] for r in runners}
    for i, rnd in enumerate(rounds):
        print(f"round {i + 1} of {len(rounds)}", flush=True)
        for runner in runners:
            print(f"  {labels[runner]:<30} ...", end=" ", flush=True)
            r = run(runner, rnd)
            raw[runner].append(r)
            print(
                f"{r['wall_s']:6.2f} s, {brief(r)}; process {r['process_s']:.1f} s, load "
                f"{r['loadavg_start'][0]:.2f}>{r['loadavg_end'][0]:.2f}, foreign "
                f"{r['foreign_cpu_s'] or 0:.1f} s",
                flush=True,
            )
    return raw


def print_targets(title: str, targets: list[dict[str, Any]], judged: bool = True) -> None:
    """``title`` and one line per target: PASS / MISS (pass / miss when not ``judged``)."""
    if not targets:
        return
    print(title)
    for t in targets:
        mark = ("PASS" if t["met"] else "MISS") if judged else ("pass" if t["met"] else "miss")
        print(f"  [{mark}] {t['target']}: {t['value']:.3f}")


def begin(
    name: str, args: argparse.Namespace, argv: list[str] | None, what: str
) -> dict[str, Any]:
    """A driver's start: prints ``what`` with this machine's facts, waits for a quiet
    machine (:func:`start_check`) and returns the results file's head: benchmark, quick,
    date, command and ``machine`` (:func:`machine`, with the quiet check)."""
    info = machine()
    print(f"{what}; {info['cores']} cores, torch {info['torch']}, Python {info['python']}")
    head = {
        "benchmark": name,
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python", f"bench/{name}.py", *(argv or sys.argv[1:])]),
    }
    info["quiet_start"] = start_check(args)
    return head | {"machine": info}
