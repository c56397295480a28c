"""W3 and its runners for ``early_stopping.py``: successive halving on the MNIST-5k CNN.

W3 is W2's data and model (``cerebro.examples.mnist``: the 4,000 / 1,000 MNIST-5k PNGs, the
CNN conv-pool-conv-pool-fc(800->C)-fc(C->10), Adam) with 32 configs drawn once, seeded:
``channels`` (C, the width of the hidden fc layer: ``build_cnn``'s argument) in
{32, 64, 128, 256}, ``lr`` log-uniform in [1e-4, 1e-2], ``batch_size`` in {32, 64, 128},
``weight_decay`` log-uniform in [1e-6, 1e-3] (``make_optimizer`` passes it to Adam).
Successive halving: grace 1 epoch, reduction factor 3, at most 9 epochs (rungs at epochs 1
and 3). Objective: validation accuracy after each epoch, mode max.

Each runner ``run_X(w3, seed) -> dict`` runs in a fresh Python process (``python
bench/_es_runners.py RUNNER QUICK SEED OUT.json``). Its clock starts after the imports and
counts everything else until the best config is known: data loading, process and worker
start, Cerebro's ETL from the CSVs and PNGs. Tear-down (``Experiment.close``,
``ray.shutdown``) is timed apart. Every runner except Cerebro trains with :class:`Run`,
which calls the example's ``create_model_components``, ``train_step`` and ``eval_step`` on
tensors made by the ETL spec's ``row_prep`` (``_workloads.Workload.tensors``); Cerebro's
workers call the same functions through ``MnistSpec``. Only who schedules differs.

Every result has ``wall_s``, ``curves`` (per config, in config order, the validation
accuracy after each epoch it trained; empty if it never trained), ``epochs`` (their total)
and ``best`` (the highest validation accuracy any config reached at any epoch, the config
and the epoch).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _workloads import Workload  # noqa: E402

__all__ = ["RUNNERS", "W3", "Run", "child_main", "w3"]

WORKERS = 2
CONFIG_SEED = 2026  # the draw of the 32 configs (fixed once)
EXAMPLE = "cerebro.examples.mnist"


@dataclass(frozen=True)
class W3:
    """The workload: data (as W2's), configs, and the successive-halving knobs."""

    data: Workload
    configs: list[dict[str, Any]]
    max_epochs: int = 9
    grace: int = 1
    reduction_factor: int = 3

    @property
    def module(self) -> types.ModuleType:
        return self.data.module

    def rungs(self) -> list[int]:
        """Epochs (1-based) where successive halving decides: grace * rf**k < max."""
        out, r = [], self.grace
        while r < self.max_epochs:
            out.append(r)
            r *= self.reduction_factor
        return out

    def index(self, hp: dict[str, Any]) -> int:
        want = {k: hp[k] for k in self.configs[0]}
        return self.configs.index(want)


def _sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def draw_configs(n: int, seed: int = CONFIG_SEED) -> list[dict[str, Any]]:
    """``n`` configs from W3's space, seeded (log-uniform draws kept to 3 digits)."""
    rng = random.Random(seed)

    def logu(lo: float, hi: float) -> float:
        return min(hi, max(lo, _sig(10 ** rng.uniform(math.log10(lo), math.log10(hi)))))

    return [
        {
            "channels": rng.choice([32, 64, 128, 256]),
            "lr": logu(1e-4, 1e-2),
            "batch_size": rng.choice([32, 64, 128]),
            "weight_decay": logu(1e-6, 1e-3),
        }
        for _ in range(n)
    ]


def w3(quick: bool = False) -> W3:
    """The full W3, or the smoke run's: 6 configs, 3 epochs, 800 / 200 images."""
    if quick:
        data = {"kind": "mnist", "n_train": 800, "n_val": 200}
        n, epochs = 6, 3
    else:
        data = {"kind": "mnist", "n_train": 4000, "n_val": 1000}
        n, epochs = 32, 9
    wl = Workload("W3", "MNIST-5k CNN, successive halving", EXAMPLE, {}, epochs, data=data)
    return W3(wl, draw_configs(n), max_epochs=epochs)


def summarize(w: W3, curves: list[list[float]]) -> dict[str, Any]:
    """``epochs`` trained in all and the ``best`` (value, config, epoch) over ``curves``."""
    best: dict[str, Any] | None = None
    for i, curve in enumerate(curves):
        for e, v in enumerate(curve):
            if v is not None and (best is None or v > best["val_acc"]):
                best = {"val_acc": v, "config": i, "hyperparams": w.configs[i], "epoch": e + 1}
    return {
        "epochs": sum(len(c) for c in curves),
        "best": best,
        "epochs_per_config": [len(c) for c in curves],
        "curves": curves,
    }


# --- the training code every runner but Cerebro's workers runs -------------------------------


class Run:
    """One config's model trained epoch by epoch, as ``_plain.train_config`` trains it: seeded
    init, a seeded shuffle per epoch, ``batch_size`` rows per step, validation after each
    epoch. ``epoch()`` trains one epoch and returns its validation accuracy."""

    def __init__(self, example: types.ModuleType, hp: dict[str, Any], data: Any, seed: int):
        import torch

        torch.manual_seed(seed)
        components = example.minibatch_spec.create_model_components(dict(hp))
        self.example = example
        self.model, self.optimizer = components["model"], components["optimizer"]
        self.bs = int(hp["batch_size"])
        self.train, self.val = data["train"], data["val"]
        self.gen = torch.Generator().manual_seed(seed)
        self.curve: list[float] = []

    def epoch(self) -> float:
        import torch

        (xt, yt), (xv, yv) = self.train, self.val
        order = torch.randperm(len(yt), generator=self.gen)
        for i in range(0, len(yt), self.bs):
            idx = order[i : i + self.bs]
            self.example.train_step(self.model, self.optimizer, xt[idx], yt[idx])
        correct = 0.0
        for i in range(0, len(yv), self.bs):
            _loss, acc = self.example.eval_step(
                self.model, xv[i : i + self.bs], yv[i : i + self.bs]
            )
            correct += acc * len(yv[i : i + self.bs])
        va = correct / len(yv)
        self.curve.append(va)
        return va


# --- Cerebro --------------------------------------------------------------------------------


def _cerebro(w: W3, seed: int, early_stopping: Any) -> dict[str, Any]:
    from _hops import hop_overhead

    from cerebro import Experiment

    ex = w.module
    params = w.data.params("unused")  # the PNGs and CSVs exist (written before any clock)
    grid = [{k: [v] for k, v in hp.items()} for hp in w.configs]  # one point each, in order
    run_dir = Path(tempfile.mkdtemp(prefix="cerebro-es-"))
    try:
        t0 = time.perf_counter()
        exp = Experiment({**params, "output_dir": str(run_dir)}, workers=WORKERS, verbose=False)
        exp.run_etl(ex.etl_spec, seed=seed)  # starts the workers as it reads the CSVs
        etl_s = time.perf_counter() - t0
        fit_start = time.time()
        t = time.perf_counter()
        result = exp.run_fit(
            ex.minibatch_spec,
            grid,
            num_epochs=w.max_epochs,
            seed=seed,
            search="grid",
            objective="val_acc",
            mode="max",
            early_stopping=early_stopping,
        )
        fit_end = time.time()
        fit_s = time.perf_counter() - t
        hist = result.history
        table = result.table
        wall = time.perf_counter() - t0
        t = time.perf_counter()
        exp.close()
        close_s = time.perf_counter() - t
        val = hist[(hist["split"] == "val") & (hist["metric"] == "acc")]
        curves: list[list[float]] = [[] for _ in w.configs]
        for row in table.itertuples():
            i = int(row.model_id.removeprefix("m"))
            hp = {k: getattr(row, k) for k in w.configs[0]}
            assert w.index(hp) == i, f"{row.model_id} is {hp}, not config {i}"
            mine = val[val["model_id"] == row.model_id].sort_values("epoch")
            curves[i] = [float(v) for v in mine["value"]]
        catalog = run_dir / "catalog.sqlite"
        return {
            "wall_s": wall,
            "etl_s": etl_s,
            "fit_s": fit_s,
            "close_s": close_s,
            "status": table["status"].value_counts().to_dict(),
            "hops": hop_overhead(catalog, fit_start, fit_end),
            "profile": profile(catalog, fit_start, fit_end),
            **summarize(w, curves),
        }
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def profile(catalog: Path, fit_start: float, fit_end: float) -> dict[str, Any]:
    """Where a fit's time went, per worker, from the catalog's ``hops`` table: the lead
    before its first hop, time in train / val hops, gaps between hops (with those over
    10 ms apart: idle, no runnable hop), and the tail after its last hop."""
    import sqlite3

    con = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT worker, kind, start, end FROM hops WHERE status = 'done' ORDER BY start"
        ).fetchall()
    finally:
        con.close()
    out: dict[str, Any] = {"fit_s": fit_end - fit_start, "workers": {}}
    for w in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == w]
        gaps = [max(0.0, b[2] - a[3]) for a, b in zip(mine, mine[1:], strict=False)]
        by_kind: dict[str, float] = {}
        for r in mine:
            by_kind[r[1]] = by_kind.get(r[1], 0.0) + r[3] - r[2]
        out["workers"][str(w)] = {
            "hops": len(mine),
            "lead_s": mine[0][2] - fit_start,
            "busy_s": by_kind,
            "gaps_s": sum(gaps),
            "idle_over_10ms_s": sum(g for g in gaps if g > 0.01),
            "tail_s": fit_end - mine[-1][3],
        }
    return out


def run_cerebro_asha(w: W3, seed: int) -> dict[str, Any]:
    return _cerebro(w, seed, "asha")


def run_cerebro_sha(w: W3, seed: int) -> dict[str, Any]:
    return _cerebro(w, seed, "sha")


def run_cerebro_grid(w: W3, seed: int) -> dict[str, Any]:
    return _cerebro(w, seed, None)


# --- the plain loop: synchronous successive halving by hand -----------------------------------


def run_plain_sha(w: W3, seed: int) -> dict[str, Any]:
    """Every config one after another to the next rung, in one process (torch's default
    threads); at each rung the best ``max(1, n // 3)`` by that epoch's accuracy go on."""
    import torch

    t0 = time.perf_counter()
    data = dict(torch.load(w.data.tensors_file(), weights_only=True))
    runs = {i: Run(w.module, hp, data, seed) for i, hp in enumerate(w.configs)}
    done: dict[int, list[float]] = {}
    alive = list(runs)
    trained = 0
    for rung in [*w.rungs(), w.max_epochs]:
        for i in alive:
            for _ in range(rung - trained):
                runs[i].epoch()
        trained = rung
        if rung == w.max_epochs:
            break
        ranked = sorted(alive, key=lambda i: (-runs[i].curve[-1], i))
        alive = ranked[: max(1, len(ranked) // w.reduction_factor)]
        for i in ranked[len(alive) :]:
            done[i] = runs.pop(i).curve  # stopped: free its model
    curves = [done[i] if i in done else runs[i].curve for i in range(len(w.configs))]
    out = summarize(w, curves)
    return {"wall_s": time.perf_counter() - t0, "threads": torch.get_num_threads(), **out}


# --- Ray Tune ---------------------------------------------------------------------------------


def _ray_trial(config: dict[str, Any], data: dict[str, Any], epochs: int, seed: int) -> None:
    import importlib

    import torch
    from ray import tune

    torch.set_num_threads(1)
    run = Run(importlib.import_module(EXAMPLE), config["hp"], data, seed)
    for epoch in range(epochs):
        tune.report({"epoch": epoch + 1, "val_acc": run.epoch()})


def _ray(w: W3, seed: int, reuse: bool) -> dict[str, Any]:
    import ray
    import torch
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # Trials run in Ray's worker processes: they must import this module and cerebro.
    path = [str(BENCH), *(p for p in sys.path if p)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    storage = Path(tempfile.mkdtemp(prefix="cerebro-es-ray-"))
    try:
        t0 = time.perf_counter()
        ray.init(
            address="local",  # a new instance of our own, never someone else's cluster
            num_cpus=WORKERS,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            configure_logging=True,
        )
        init_s = time.perf_counter() - t0
        data = dict(torch.load(w.data.tensors_file(), weights_only=True))
        trainable = tune.with_resources(
            tune.with_parameters(_ray_trial, data=data, epochs=w.max_epochs, seed=seed),
            {"cpu": 1},
        )
        scheduler = ASHAScheduler(
            max_t=w.max_epochs, grace_period=w.grace, reduction_factor=w.reduction_factor
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"hp": tune.grid_search(w.configs)},
            tune_config=tune.TuneConfig(
                metric="val_acc",
                mode="max",
                scheduler=scheduler,
                max_concurrent_trials=WORKERS,
                reuse_actors=reuse,
            ),
            run_config=tune.RunConfig(storage_path=str(storage), name="es", verbose=0),
        )
        grid = tuner.fit()
        best = grid.get_best_result(metric="val_acc", mode="max", scope="all")
        wall = time.perf_counter() - t0
        curves: list[list[float]] = [[] for _ in w.configs]
        errors = []
        for r in grid:
            if r.error is not None:
                errors.append(str(r.error)[:500])
            df = r.metrics_dataframe
            if df is not None and len(df):
                df = df.sort_values("training_iteration")
                curves[w.index(r.config["hp"])] = [float(v) for v in df["val_acc"]]
        t = time.perf_counter()
        ray.shutdown()
        out = summarize(w, curves)
        return {
            "wall_s": wall,
            "ray_init_s": init_s,
            "shutdown_s": time.perf_counter() - t,
            "reuse_actors": reuse,
            "errors": errors,
            "ray_best_config": w.index(best.config["hp"]),
            **out,
        }
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)


def run_ray(w: W3, seed: int) -> dict[str, Any]:
    return _ray(w, seed, reuse=False)


def run_ray_reuse(w: W3, seed: int) -> dict[str, Any]:
    return _ray(w, seed, reuse=True)


# --- Optuna -----------------------------------------------------------------------------------


def _objective(w: W3, data: dict[str, Any], seed: int) -> Any:
    import optuna

    def objective(trial: Any) -> float:
        hp = {
            "channels": trial.suggest_categorical("channels", [32, 64, 128, 256]),
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True),
        }
        if hp not in w.configs:  # the queue ran dry (the other process took the last one)
            trial.study.stop()
            raise optuna.TrialPruned()
        run = Run(w.module, hp, data, seed)
        for epoch in range(1, w.max_epochs + 1):
            trial.report(run.epoch(), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return run.curve[-1]

    return objective


def _pruner(w: W3) -> Any:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=w.grace, reduction_factor=w.reduction_factor
    )


def _study_result(w: W3, study: Any) -> dict[str, Any]:
    curves: list[list[float]] = [[] for _ in w.configs]
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            curves[w.index(t.params)] = [float(t.intermediate_values[s]) for s in steps]
    return {"trials": len(study.trials), "states": states, **summarize(w, curves)}


def run_optuna1(w: W3, seed: int) -> dict[str, Any]:
    """One process, torch's default threads, in-memory study, ``optimize(n_trials=N)``."""
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    t0 = time.perf_counter()
    data = dict(torch.load(w.data.tensors_file(), weights_only=True))
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=_pruner(w),
    )
    for hp in w.configs:
        study.enqueue_trial(hp)
    study.optimize(_objective(w, data, seed), n_trials=len(w.configs))
    result = _study_result(w, study)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "threads": torch.get_num_threads(), **result}


def _storage(journal: str) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(journal))


def _optuna_worker(quick: bool, seed: int, journal: str) -> None:
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    w = w3(quick)
    data = dict(torch.load(w.data.tensors_file(), weights_only=True))  # a copy per process
    study = optuna.load_study(
        study_name="es",
        storage=_storage(journal),
        sampler=optuna.samplers.RandomSampler(seed=seed + os.getpid()),
        pruner=_pruner(w),
    )

    def dry(study: Any, _trial: Any) -> None:
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if not waiting:
            study.stop()

    study.optimize(_objective(w, data, seed), callbacks=[dry])


def run_optuna2(w: W3, seed: int, quick: bool = False) -> dict[str, Any]:
    """Two processes (1 torch thread each) sharing a journal-file study with the configs
    enqueued; each runs trials until the queue is empty."""
    import multiprocessing as mp

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="cerebro-es-optuna-"))
    try:
        journal = str(tmp / "journal.log")
        t0 = time.perf_counter()
        study = optuna.create_study(
            study_name="es", storage=_storage(journal), direction="maximize", pruner=_pruner(w)
        )
        for hp in w.configs:
            study.enqueue_trial(hp)
        ctx = mp.get_context("spawn")  # fresh interpreters; fork after torch can deadlock
        procs = [
            ctx.Process(target=_optuna_worker, args=(quick, seed, journal)) for _ in range(WORKERS)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"an Optuna process failed: {[p.exitcode for p in procs]}")
        result = _study_result(w, optuna.load_study(study_name="es", storage=_storage(journal)))
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "processes": WORKERS, **result}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


RUNNERS: dict[str, Any] = {
    "cerebro_asha": run_cerebro_asha,
    "cerebro_sha": run_cerebro_sha,
    "ray": run_ray,
    "ray_reuse": run_ray_reuse,
    "optuna1": run_optuna1,
    "optuna2": run_optuna2,
    "plain_sha": run_plain_sha,
    "cerebro_grid": run_cerebro_grid,
}


def child_main(argv: list[str]) -> None:
    """``RUNNER QUICK(0|1) SEED OUT.json``: run one runner, write its result as JSON."""
    runner, quick, seed, out = argv[0], argv[1] == "1", int(argv[2]), argv[3]
    w = w3(quick)
    w.data.tensors_file()  # the PNGs, CSVs and tensor cache exist before any clock starts
    # the imports every runner's clock leaves out
    import torch  # noqa: F401

    import cerebro  # noqa: F401
    import cerebro.examples.mnist  # noqa: F401

    if runner.startswith("ray"):
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
        from ray.tune.schedulers import ASHAScheduler  # noqa: F401
    if runner.startswith("optuna"):
        import optuna  # noqa: F401
        import optuna.storages.journal  # noqa: F401
    fn = RUNNERS[runner]
    result = fn(w, seed, quick=quick) if runner == "optuna2" else fn(w, seed)
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    child_main(sys.argv[1:])
