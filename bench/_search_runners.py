"""The runners of ``search_peers.py``: a hyperparameter search on the MNIST-5k CNN.

W2's data and model (``cerebro.examples.mnist``: the 4,000 / 1,000 MNIST-5k PNGs, the CNN
conv-pool-conv-pool-fc(800->C)-fc(C->10), Adam) searched over ``_common.SPACE``
(``channels`` = C in {32, 64, 128, 256}, ``lr`` log-uniform in [1e-4, 1e-2],
``batch_size`` in {32, 64, 128}, ``weight_decay`` log-uniform in [1e-6, 1e-3]): 24
models of 3 epochs each, validation accuracy after every epoch, a model's value its best
epoch's (mode max).

Each ``run_X(budget, seed) -> dict`` runs in a fresh Python process (``child_main``),
after the imports of torch and of the example's model code, which every runner shares.
Its clock counts the rest until the search has ended: its framework's own imports
(``cerebro.Experiment``, ``optuna``, ``ray``), data loading, process and worker start,
``ray.init``, and for Cerebro the ETL from the CSVs and PNGs. Tear-down
(``Experiment.close``, ``ray.shutdown``) is timed apart. The peers train with
``_es_runners.Run`` (the example's ``create_model_components``, ``train_step``,
``eval_step`` on the tensors ``row_prep`` makes); Cerebro's workers run the same
functions through ``MnistSpec``.

Every result has ``wall_s``, ``trials`` (per model asked, in order: its hyperparameters and
the validation accuracy after each epoch it trained), ``models``, ``epochs`` and ``best``
(the highest validation accuracy any model reached at any epoch, its hyperparameters and
epoch).
"""

from __future__ import annotations

import importlib
import json
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

import _common as common  # noqa: E402
from _es_runners import Run  # noqa: E402
from _workloads import Workload, workloads  # noqa: E402

__all__ = ["RUNNERS", "Budget", "budget", "child_main", "summarize"]

EXAMPLE = "cerebro.examples.mnist"


@dataclass(frozen=True)
class Budget:
    """What every runner gets: W2's data, ``models`` models of ``epochs`` epochs."""

    data: Workload
    models: int
    epochs: int
    quick: bool = False

    @property
    def module(self) -> types.ModuleType:
        return importlib.import_module(EXAMPLE)


def budget(quick: bool = False) -> Budget:
    """24 models x 3 epochs on 4,000 / 1,000 images; ``quick``: 6 x 1 on 800 / 200."""
    data = workloads(quick)["W2"]
    return Budget(data, 6, 1, True) if quick else Budget(data, 24, 3)


def summarize(trials: list[tuple[dict[str, Any], list[float]]]) -> dict[str, Any]:
    """``trials`` (hyperparameters, curve), the ``models`` and ``epochs`` trained and the
    ``best`` (value, hyperparameters, trial, epoch from 1) over every curve."""
    best: dict[str, Any] | None = None
    for i, (hp, curve) in enumerate(trials):
        for e, v in enumerate(curve):
            if best is None or v > best["val_acc"]:
                best = {"val_acc": v, "hyperparams": hp, "trial": i, "epoch": e + 1}
    return {
        "models": sum(1 for _, c in trials if c),
        "epochs": sum(len(c) for _, c in trials),
        "best": best,
        "trials": [{"hyperparams": hp, "curve": c} for hp, c in trials],
    }


# --- Cerebro --------------------------------------------------------------------------------


def _cerebro(b: Budget, seed: int, search: str) -> dict[str, Any]:
    params = b.data.params("unused")  # the PNGs and CSVs exist (written before any clock)
    t0 = time.perf_counter()
    import cerebro.experiment  # noqa: F401 - inside the clock: what Experiment imports

    import_s = time.perf_counter() - t0
    r = common.cerebro_fit(
        params,
        b.module,
        common.cerebro_space(),
        b.epochs,
        seed,
        search=search,
        num_models=b.models,
        objective="val_acc",
        mode="max",
    )
    trials = [(m["hyperparams"], m["curve"]) for m in r.pop("models")]
    return {**r, "wall_s": import_s + r["wall_s"], "import_s": import_s, **summarize(trials)}


def run_cerebro_random(b: Budget, seed: int) -> dict[str, Any]:
    return _cerebro(b, seed, "random")


def run_cerebro_tpe(b: Budget, seed: int) -> dict[str, Any]:
    return _cerebro(b, seed, "tpe")


# --- Optuna -----------------------------------------------------------------------------------


def _objective(b: Budget, data: dict[str, Any], seed: int) -> Any:
    import optuna

    def objective(trial: Any) -> float:
        if trial.number >= b.models:  # the budget is spent (the other process asked last)
            trial.study.stop()
            raise optuna.TrialPruned()
        run = Run(b.module, common.suggest(trial), data, seed)
        for epoch in range(1, b.epochs + 1):
            trial.report(run.epoch(), epoch)
        return max(run.curve)  # a model's value: its best epoch's, as Cerebro's search

    return objective


def _study_result(study: Any) -> dict[str, Any]:
    trials, states = common.study_curves(study)
    return {"states": states, **summarize([t for t in trials if t[1]])}


def run_optuna1(b: Budget, seed: int) -> dict[str, Any]:
    """TPE, one process (torch's default threads), in-memory study, ``n_jobs=1``."""
    import torch

    t0 = time.perf_counter()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    data = dict(torch.load(b.data.tensors_file(), weights_only=True))
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)
    )
    study.optimize(_objective(b, data, seed), n_trials=b.models, n_jobs=1)
    result = _study_result(study)
    return {"wall_s": time.perf_counter() - t0, "threads": torch.get_num_threads(), **result}


def _optuna_worker(quick: bool, seed: int, k: int, journal: str) -> None:
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    b = budget(quick)
    data = dict(torch.load(b.data.tensors_file(), weights_only=True))  # a copy per process
    study = optuna.load_study(
        study_name="search",
        storage=common.journal_storage(journal),
        sampler=optuna.samplers.TPESampler(seed=1000 * seed + k),  # each its own draws
    )
    study.optimize(_objective(b, data, seed))  # until a process asks past the budget


def run_optuna2(b: Budget, seed: int) -> dict[str, Any]:
    """TPE in two processes (1 torch thread each) sharing a journal-file study."""
    t0 = time.perf_counter()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="cerebro-search-optuna-"))
    try:
        journal = str(tmp / "journal.log")
        optuna.create_study(
            study_name="search", storage=common.journal_storage(journal), direction="maximize"
        )
        common.run_processes(
            _optuna_worker, [(b.quick, seed, k, journal) for k in range(common.WORKERS)]
        )
        study = optuna.load_study(study_name="search", storage=common.journal_storage(journal))
        result = _study_result(study)
        return {"wall_s": time.perf_counter() - t0, "processes": common.WORKERS, **result}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- Ray Tune ---------------------------------------------------------------------------------


def _define(trial: Any) -> None:
    """OptunaSearch's define-by-run space: the same questions as Optuna's runners ask."""
    common.suggest(trial)


def _ray_trial(config: dict[str, Any], data: dict[str, Any], epochs: int, seed: int) -> None:
    import torch
    from ray import tune

    torch.set_num_threads(1)
    run = Run(importlib.import_module(EXAMPLE), {k: config[k] for k in common.SPACE}, data, seed)
    for epoch in range(1, epochs + 1):
        va = run.epoch()
        tune.report({"epoch": epoch, "val_acc": va, "best_val_acc": max(run.curve)})


def run_ray(b: Budget, seed: int) -> dict[str, Any]:
    """Ray Tune, ``OptunaSearch`` (TPE), 2 concurrent 1-CPU trials, ``reuse_actors``."""
    import torch

    t0 = time.perf_counter()
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    with common.ray_session("cerebro-search-ray-") as session:
        data = dict(torch.load(b.data.tensors_file(), weights_only=True))
        trainable = tune.with_resources(
            tune.with_parameters(_ray_trial, data=data, epochs=b.epochs, seed=seed),
            {"cpu": 1},
        )
        searcher = OptunaSearch(
            space=_define,
            metric="best_val_acc",  # a model's value: its best epoch's, as the others'
            mode="max",
            sampler=optuna.samplers.TPESampler(seed=seed),
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=b.models,
                max_concurrent_trials=common.WORKERS,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(storage_path=session["storage"], name="search", verbose=0),
        )
        grid = tuner.fit()
        wall = time.perf_counter() - t0
        curves, errors = common.ray_curves(grid)
        trials = [({k: c[k] for k in common.SPACE}, v) for c, v in curves if v]
        return {
            "wall_s": wall,
            "ray_init_s": session["init_s"],
            "shutdown_s": common.stop_ray(),
            "errors": errors,
            **summarize(trials),
        }


RUNNERS: dict[str, Any] = {
    "cerebro_tpe": run_cerebro_tpe,
    "cerebro_random": run_cerebro_random,
    "optuna1": run_optuna1,
    "optuna2": run_optuna2,
    "ray": run_ray,
}


def child_main(argv: list[str]) -> None:
    """``RUNNER QUICK(0|1) SEED OUT.json``: run one runner, write its result as JSON."""
    runner, quick, seed, out = argv[0], argv[1] == "1", int(argv[2]), argv[3]
    b = budget(quick)
    b.data.tensors_file()  # the PNGs, CSVs and tensor cache exist before any clock starts
    # What every runner shares, imported before any clock: torch and the model code.
    import torch  # noqa: F401

    importlib.import_module(EXAMPLE)
    Path(out).write_text(json.dumps(RUNNERS[runner](b, seed)))


if __name__ == "__main__":
    child_main(sys.argv[1:])
