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

from _common import (  # noqa: E402
    SPACE,
    WORKERS,
    cerebro_fit,
    journal_storage,
    ray_curves,
    ray_session,
    run_processes,
    stop_ray,
    study_curves,
    suggest,
)
from _workloads import Workload  # noqa: E402

__all__ = ["RUNNERS", "W3", "Run", "child_main", "w3"]

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
    """``n`` configs from W3's space (``_common.SPACE``), seeded (log-uniform draws kept to
    3 digits)."""
    rng = random.Random(seed)

    def logu(lo: float, hi: float) -> float:
        return min(hi, max(lo, _sig(10 ** rng.uniform(math.log10(lo), math.log10(hi)))))

    return [
        {k: rng.choice(v) if isinstance(v, list) else logu(*v) for k, v in SPACE.items()}
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
    grid = [{k: [v] for k, v in hp.items()} for hp in w.configs]  # one point each, in order
    r = cerebro_fit(
        w.data.params("unused"),  # the PNGs and CSVs exist (written before any clock)
        w.module,
        grid,
        w.max_epochs,
        seed,
        search="grid",
        objective="val_acc",
        mode="max",
        early_stopping=early_stopping,
    )
    curves: list[list[float]] = [[] for _ in w.configs]
    for i, m in enumerate(r.pop("models")):
        assert w.index(m["hyperparams"]) == i, f"{m['model_id']} is not config {i}"
        curves[i] = m["curve"]
    return {**r, **summarize(w, curves)}


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
    import torch
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    t0 = time.perf_counter()
    with ray_session("cerebro-es-ray-") as session:
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
            run_config=tune.RunConfig(storage_path=session["storage"], name="es", verbose=0),
        )
        grid = tuner.fit()
        best = grid.get_best_result(metric="val_acc", mode="max", scope="all")
        wall = time.perf_counter() - t0
        curves: list[list[float]] = [[] for _ in w.configs]
        trials, errors = ray_curves(grid)
        for config, curve in trials:
            if curve:
                curves[w.index(config["hp"])] = curve
        return {
            "wall_s": wall,
            "ray_init_s": session["init_s"],
            "shutdown_s": stop_ray(),
            "reuse_actors": reuse,
            "errors": errors,
            "ray_best_config": w.index(best.config["hp"]),
            **summarize(w, curves),
        }


def run_ray(w: W3, seed: int) -> dict[str, Any]:
    return _ray(w, seed, reuse=False)


def run_ray_reuse(w: W3, seed: int) -> dict[str, Any]:
    return _ray(w, seed, reuse=True)


# --- Optuna -----------------------------------------------------------------------------------


def _objective(w: W3, data: dict[str, Any], seed: int) -> Any:
    import optuna

    def objective(trial: Any) -> float:
        hp = suggest(trial)
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
    trials, states = study_curves(study)
    for params, curve in trials:
        if curve:
            curves[w.index(params)] = curve
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


def _optuna_worker(quick: bool, seed: int, journal: str) -> None:
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    w = w3(quick)
    data = dict(torch.load(w.data.tensors_file(), weights_only=True))  # a copy per process
    study = optuna.load_study(
        study_name="es",
        storage=journal_storage(journal),
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
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="cerebro-es-optuna-"))
    try:
        journal = str(tmp / "journal.log")
        t0 = time.perf_counter()
        study = optuna.create_study(
            study_name="es",
            storage=journal_storage(journal),
            direction="maximize",
            pruner=_pruner(w),
        )
        for hp in w.configs:
            study.enqueue_trial(hp)
        run_processes(_optuna_worker, [(quick, seed, journal)] * WORKERS)
        result = _study_result(
            w, optuna.load_study(study_name="es", storage=journal_storage(journal))
        )
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
