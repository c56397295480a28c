"""The peers: Ray Tune and Optuna, each training the grid as its users would.

* Ray Tune: a function trainable, 1 CPU per trial, 2 trials at a time, the data handed over
  with ``tune.with_parameters`` (put once in Ray's object store, fetched by every trial),
  validation accuracy reported each epoch with ``tune.report``. Timed from before
  ``ray.init`` to the end of ``Tuner.fit`` (``ray.shutdown`` is timed apart). Run with the
  default ``reuse_actors=False`` (a fresh actor process per trial) and with ``True``.
  ``RunConfig(verbose=0)`` only silences the progress table.
* Optuna: a ``GridSampler`` over the same grid, one study shared by 2 processes through a
  journal file (``JournalStorage``), each process running trials until the grid is used
  up; the objective reports each epoch's validation accuracy with ``trial.report``. Timed
  from creating the study until both processes have exited. Processes, not
  ``n_jobs=2``: ``n_jobs`` runs trials in threads of one process, where the Python-level
  work of every step (module calls, autograd bookkeeping, Adam's loop over parameters)
  holds the GIL, so two small-model trials mostly take turns; ``optuna_threads`` measures
  that variant for comparison.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _common import WORKERS, journal_storage, ray_session, run_processes, stop_ray  # noqa: E402
from _plain import train_config  # noqa: E402
from _runners import nbytes  # noqa: E402
from _workloads import Workload, workloads  # noqa: E402

__all__ = ["run_optuna", "run_optuna_threads", "run_ray", "run_ray_reuse"]


def _config_index(wl: Workload, hp: dict[str, Any]) -> int:
    configs = wl.configs()
    want = {k: hp[k] for k in wl.grid}
    return configs.index(want)


# --- Ray Tune ---------------------------------------------------------------------------------


def _ray_trial(
    config: dict[str, Any], data: dict[str, Any], example: str, epochs: int, seed: int
) -> None:
    import torch
    from ray import tune

    torch.set_num_threads(1)
    hp = dict(config)

    def report(epoch: int, val_loss: float, val_acc: float) -> None:
        tune.report({"epoch": epoch, "val_loss": val_loss, "val_acc": val_acc})

    train_config(
        importlib.import_module(example),
        hp,
        data["train"],
        data["val"],
        epochs,
        seed,
        on_epoch=report,
    )


def _ray(wl: Workload, seed: int, reuse: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    import ray  # noqa: F401 - inside the clock
    from ray import tune

    with ray_session("cerebro-suite-ray-") as session:
        init_s = time.perf_counter() - t0
        data = wl.tensors()
        trainable = tune.with_resources(
            tune.with_parameters(
                _ray_trial, data=data, example=wl.example, epochs=wl.epochs, seed=seed
            ),
            {"cpu": 1},
        )
        tuner = tune.Tuner(
            trainable,
            param_space={k: tune.grid_search(v) for k, v in wl.grid.items()},
            tune_config=tune.TuneConfig(
                metric="val_acc", mode="max", max_concurrent_trials=WORKERS, reuse_actors=reuse
            ),
            run_config=tune.RunConfig(storage_path=session["storage"], name="suite", verbose=0),
        )
        grid = tuner.fit()
        wall = time.perf_counter() - t0
        acc: list[float | None] = [None] * len(wl.configs())
        errors = []
        for r in grid:
            if r.error is not None:
                errors.append(str(r.error)[:500])
                continue
            acc[_config_index(wl, r.config)] = float(r.metrics["val_acc"])
        return {
            "wall_s": wall,
            "ray_init_s": init_s,
            "shutdown_s": stop_ray(),
            "val_acc": acc,
            "errors": errors,
            "workers": WORKERS,
            "reuse_actors": reuse,
            "data_bytes_per_worker": nbytes(data),
        }


def run_ray(wl: Workload, seed: int) -> dict[str, Any]:
    return _ray(wl, seed, reuse=False)


def run_ray_reuse(wl: Workload, seed: int) -> dict[str, Any]:
    return _ray(wl, seed, reuse=True)


# --- Optuna -----------------------------------------------------------------------------------


def _objective(wl: Workload, data: dict[str, Any], seed: int) -> Any:
    def objective(trial: Any) -> float:
        hp = {k: trial.suggest_categorical(k, v) for k, v in wl.grid.items()}
        r = train_config(
            wl.module,
            hp,
            data["train"],
            data["val"],
            wl.epochs,
            seed,
            on_epoch=lambda epoch, _vl, va: trial.report(va, epoch),
        )
        trial.set_user_attr("seconds", r.wall_s)
        return r.val_acc

    return objective


def _optuna_worker(name: str, quick: bool, seed: int, journal: str) -> None:
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    wl = workloads(quick)[name]
    data = wl.tensors()  # a full copy per process
    study = optuna.load_study(
        study_name="suite",
        storage=journal_storage(journal),
        sampler=optuna.samplers.GridSampler(wl.grid, seed=seed),
    )
    study.optimize(_objective(wl, data, seed))  # GridSampler stops when the grid is done


def _trials(wl: Workload, study: Any) -> dict[str, Any]:
    """Per-config accuracy (first completed trial of each config) and duplicates."""
    acc: list[float | None] = [None] * len(wl.configs())
    dup, dup_s = 0, 0.0
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    for t in sorted(done, key=lambda t: t.number):
        i = _config_index(wl, t.params)
        if acc[i] is None:
            acc[i] = float(t.value)
        else:  # GridSampler re-ran a config another process was still running
            dup += 1
            dup_s += float(t.user_attrs.get("seconds", 0.0))
    return {"val_acc": acc, "trials": len(study.trials), "duplicates": dup, "duplicate_s": dup_s}


def run_optuna(wl: Workload, seed: int, quick: bool = False) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="cerebro-suite-optuna-"))
    try:
        journal = str(tmp / "journal.log")
        t0 = time.perf_counter()
        study = optuna.create_study(
            study_name="suite",
            storage=journal_storage(journal),
            sampler=optuna.samplers.GridSampler(wl.grid, seed=seed),
            direction="maximize",
        )
        run_processes(_optuna_worker, [(wl.name, quick, seed, journal)] * WORKERS)
        wall = time.perf_counter() - t0
        study = optuna.load_study(study_name="suite", storage=journal_storage(journal))
        return {
            "wall_s": wall,
            **_trials(wl, study),
            "workers": WORKERS,
            "mode": "2 processes, JournalStorage",
            "data_bytes_per_worker": nbytes(wl.tensors()),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_optuna_threads(wl: Workload, seed: int, quick: bool = False) -> dict[str, Any]:
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)
    data = wl.tensors()
    t0 = time.perf_counter()
    study = optuna.create_study(
        sampler=optuna.samplers.GridSampler(wl.grid, seed=seed), direction="maximize"
    )
    study.optimize(_objective(wl, data, seed), n_jobs=WORKERS)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        **_trials(wl, study),
        "workers": 1,
        "mode": "n_jobs=2 (threads), in-memory storage",
        "data_bytes_per_worker": nbytes(data),
    }
