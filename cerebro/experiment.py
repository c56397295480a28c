"""``Experiment``: the one object a user drives — ETL, then a MOP fit over a grid.

A facade: it holds the run directory and the workers, and each step's work is in its module
(``_etl_step``, ``_fit_step``, ``_eval_step``), as Optuna's ``Study.optimize`` calls ``_optimize``.

Over ~400 lines on purpose: about 250 of them are the public signatures and docstrings users
read (``run_fit``'s alone is ~80); every method body is a few lines handing off to a module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from cerebro._engine_choice import (
    check_batch_sizes,
    check_devices,
    check_engine,
    copy_misc,
    make_engine,
    release_ray_actors,
)
from cerebro._etl_step import etl_settings, existing_etl, run_etl_step
from cerebro._eval_step import check_eval, eval_data, find_model, record_test_metrics, run_eval
from cerebro._evaluate import EvalKind, ModelRef, aggregate, write_predictions
from cerebro._fit_step import run_fit_step
from cerebro._holding import Holding
from cerebro._preflight import check_etl_spec, check_fit_spec, check_steps
from cerebro._saved import make_output_dir, remember_steps, saved_args, saved_spec, saved_steps
from cerebro._settings import FitSettings, positive_int
from cerebro.engine import Engine
from cerebro.engine._pool import WorkerPool
from cerebro.engine.messages import HopOutcome
from cerebro.params import Params, validate_params
from cerebro.result import FitResult
from cerebro.spec import ETLSpec, MinibatchSpec

__all__ = ["Experiment"]


class Experiment:
    """One run directory: its data, its fits and everything they record.

    Args:
        params: file locations (see DESIGN.md §2): ``train_main`` ... ``predict_main``,
            ``*_dir``, ``misc``, ``etl_dir`` (where ``run_etl`` writes the preprocessed
            data, or with no ``*_main`` where it is read from), ``models_dir`` (starting
            points, and the root of relative ``model_tag`` paths), ``output_dir``.
        workers: worker processes; each holds one share of the data. Default: the cores.
        engine: ``"local"`` (worker processes on this machine) or ``"ray"`` (Ray actors
            pinned to the nodes that hold their data).
        address: the Ray cluster to join (``"HOST:6379"``, ``"auto"``); None starts a local
            Ray instance. Only with ``engine="ray"``.
        resources_per_worker: Ray resources per actor, e.g. ``{"GPU": 1}``.
        devices_per_worker: devices (processes) of each worker, an int or one per worker
            (local engine). A worker of several runs each hop data-parallel (DDP, gloo on
            CPUs): ``batch_size`` stays the global minibatch, split across its devices,
            and the checkpoint is the usual one, so models hop between workers of any size.
        verbose: show progress bars; False prints nothing but errors.

    With the local engine the worker processes start with the first ``run_etl``,
    ``run_fit``, ``run_test``, ``run_predict`` or :meth:`start`, and serve every later call
    warm (starting one costs seconds: the interpreter and ``import torch``) until
    :meth:`close`, the end of a ``with Experiment(...) as exp:`` block, or the program;
    :meth:`reset` stops them until the next call.

    Example:
        >>> exp = Experiment(params, workers=2)                     # doctest: +SKIP
        >>> exp.run_etl(DigitsETL(), fraction=1.0, seed=1)          # doctest: +SKIP
        >>> result = exp.run_fit(DigitsSpec(), {"lr": [1e-3], "batch_size": [32]},
        ...                      num_epochs=5)                      # doctest: +SKIP
        >>> result.table                                            # doctest: +SKIP
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        workers: int | None = None,
        *,
        engine: str = "local",
        address: str | None = None,
        resources_per_worker: Mapping[str, float] | None = None,
        devices_per_worker: int | Sequence[int] = 1,
        verbose: bool = True,
    ):
        self.params: Params = validate_params(params)
        self.workers = positive_int(
            "workers", workers if workers is not None else (os.cpu_count() or 1)
        )
        check_engine(engine, address, resources_per_worker)
        self.ranks = check_devices(devices_per_worker, self.workers, engine)
        self.devices_per_worker = devices_per_worker
        self.engine = engine
        self.address = address
        self.resources_per_worker = dict(resources_per_worker or {})
        self.verbose = verbose
        self.output_dir = make_output_dir(self.params.output_dir)
        self._hold = Holding(self.output_dir, self.params.etl_dir)

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _worker_pool(self) -> WorkerPool | None:
        """The local engine's worker processes (None with Ray), launched on first use."""
        self._hold.check_open()
        if self.engine != "local":
            return None
        return self._hold.pool(self.workers, quiet=not self.verbose)

    def start(self) -> None:
        """Start the worker processes now and wait until they are ready.

        Optional: the first call that needs workers starts them. Use it to pay the start-up
        (process start, ``import torch``: seconds) before something you time, or while the
        machine is otherwise idle. Does nothing with ``engine="ray"``.
        """
        pool = self._worker_pool()
        if pool is not None:
            pool.start(self.workers)
            pool.wait_ready()

    def reset(self) -> None:
        """Stop the workers and free everything they hold; keep the run and this object.

        The original Cerebro's notebooks restarted the kernel between steps to get the
        workers' memory back (loaded partitions, models kept between hops, a GPU's cached
        blocks). ``reset()`` does that without losing the notebook's state: the worker
        processes exit (with ``engine="ray"``, the actors an ETL left waiting for a fit), and
        everything on disk stays (data, catalog, checkpoints, predictions). The experiment
        stays usable: the next ``run_etl``, ``run_fit``, ``run_test``, ``run_predict`` or
        :meth:`start` launches fresh workers. Unlike :meth:`close`, after which every call
        raises.
        """
        self._hold.reset()
        if self.engine == "ray":
            release_ray_actors()

    def close(self) -> None:
        """Stop the worker processes; a later call on this experiment raises."""
        self._hold.close()

    @classmethod
    def from_dir(cls, run_dir: str | Path, *, verbose: bool = True) -> Experiment:
        """The experiment saved in ``run_dir`` by an earlier ``run_etl``/``run_fit``.

        Raises:
            CerebroError: ``run_dir`` holds no saved experiment.
        """
        return cls(**saved_args(run_dir), verbose=verbose)

    def saved_spec(self, section: str) -> Any:
        """The spec an earlier ``run_etl`` (``"etl"``) or ``run_fit`` (``"fit"``) used."""
        return saved_spec(self.output_dir, section)

    @classmethod
    def resume(
        cls, run_dir: str | Path, *, verbose: bool = True, allow_changed_code: bool = False
    ) -> FitResult:
        """Continue the interrupted run in ``run_dir`` (ETL, then the fit) from its catalog.

        No completed hop runs again; the specs and settings come from ``run_dir``.

        Args:
            allow_changed_code: go on even when the Minibatch spec's code now differs from
                the code the fit trained with (a spec pickled by reference, whose module
                was edited): the fit then mixes the two versions.

        Raises:
            CerebroError: ``run_dir`` holds no saved fit, or its spec's code changed.
        """
        exp = cls.from_dir(run_dir, verbose=verbose)
        etl_step, spec, settings = saved_steps(exp, run_dir)
        return exp._run_steps(etl_step, spec, settings, False, allow_changed_code)

    def _locked(self) -> AbstractContextManager[None]:
        """Hold the run directory, and turn catalog write failures into a clear error."""
        return self._hold.locked(self.catalog_path)

    def _engine(self, spec: MinibatchSpec, owned: list[dict[str, list[int]]]) -> Engine:
        """Start the workers, each holding the partitions ``owned`` lists for it."""
        return make_engine(self, spec, owned, self._worker_pool)

    @property
    def data_dir(self) -> Path:
        return self.params.etl_dir or self.output_dir / "data"

    @property
    def catalog_path(self) -> Path:
        return self.output_dir / "catalog.sqlite"

    def _misc_dir(self) -> Path:
        """Copy the ``misc`` files into one folder that every worker's ``read_misc`` gets."""
        return copy_misc(self.output_dir, self.params.misc)

    def run_etl(
        self,
        etl_spec: ETLSpec,
        fraction: float = 1.0,
        seed: int = 1,
        *,
        partitions: int | None = None,
    ) -> dict[str, Any]:
        """Preprocess every split into partitions (by default one per 10,000 train rows, up
        to 64, and at least one per worker: see :func:`cerebro.etl.default_partitions`).

        The output goes to ``etl_dir`` when params has it (created if missing), else to
        ``DIR/data``. It is reused when the inputs (CSV contents, spec code, fraction, seed,
        partition count) are unchanged, and replaced when one changed. With ``etl_dir`` but
        no ``*_main`` CSVs in params, the data already there is read and nothing runs.

        Returns:
            The ETL manifest: rows and partition sizes per split.

        Raises:
            ParamsError: ``etl_dir`` holds something that is not Cerebro's output (see
                NOTE [ whose etl_dir ] in ``params.py``), or (without CSVs) no finished ETL.
        """
        check_etl_spec(etl_spec)
        if self.params.etl_dir is not None and not self.params.mains:
            return existing_etl(self.params.etl_dir)
        settings = etl_settings(self.params, self.workers, fraction, seed, partitions)
        with self._locked():
            return run_etl_step(self, etl_spec, settings, self._hold.etl_lock, self._worker_pool)

    def run(
        self,
        etl_spec: ETLSpec,
        spec: MinibatchSpec,
        param_grid: Any,
        num_epochs: int,
        seed: int = 1,
        *,
        fraction: float = 1.0,
        partitions: int | None = None,
        policy: str = "fixed",
        on_error: str = "continue",
        objective: str | None = None,
        mode: str = "min",
        search: Any = "grid",
        num_models: int | None = None,
        max_live_models: int | None = None,
        deterministic: bool = False,
        early_stopping: Any = None,
        threads_per_hop: int | None = None,
        parallelism: str = "ddp",
        overwrite: bool = False,
        allow_changed_code: bool = False,
    ) -> FitResult:
        """ETL, then the fit: :meth:`run_etl` and :meth:`run_fit` with one seed.

        Both steps are recorded in the run directory before either starts, so that
        :meth:`resume` (or ``cerebro resume DIR``) continues a run killed at any moment,
        in the ETL included; and both are checked before anything is recorded, so a
        refused call leaves the run directory as it was. The arguments are those of the
        two steps.
        """
        check_etl_spec(etl_spec)
        etl_step = (etl_spec, etl_settings(self.params, self.workers, fraction, seed, partitions))
        settings = FitSettings.check(
            param_grid,
            num_epochs,
            seed,
            policy=policy,
            on_error=on_error,
            objective=objective,
            mode=mode,
            search=search,
            num_models=num_models,
            max_live_models=max_live_models,
            deterministic=deterministic,
            early_stopping=early_stopping,
            threads_per_hop=threads_per_hop,
            parallelism=parallelism,
        )
        return self._run_steps(etl_step, spec, settings, overwrite, allow_changed_code)

    def _run_steps(
        self,
        etl_step: tuple[ETLSpec, dict[str, Any]] | None,
        spec: MinibatchSpec,
        settings: FitSettings,
        overwrite: bool,
        allow_changed_code: bool,
    ) -> FitResult:
        """:meth:`run` and :meth:`resume`: check both steps, record them, run the ETL (when
        ``etl_step`` gives its spec and settings) and the fit."""
        check_fit_spec(spec)
        with self._locked(), self._hold.etl_lock.held():
            check_steps(self, etl_step, spec, settings, overwrite, allow_changed_code)
            # NOTE: every refusal is above this line; nothing was written before it.
            if etl_step is not None:
                etl_spec, how = etl_step
                remember_steps(self, etl_step, spec, settings)
                self.run_etl(etl_spec, how["fraction"], how["seed"], partitions=how["partitions"])
            return self._fit(spec, settings, overwrite, allow_changed_code)

    def run_fit(
        self,
        spec: MinibatchSpec,
        param_grid: Any,
        num_epochs: int,
        seed: int = 1,
        *,
        policy: str = "fixed",
        on_error: str = "continue",
        objective: str | None = None,
        mode: str = "min",
        search: Any = "grid",
        num_models: int | None = None,
        max_live_models: int | None = None,
        deterministic: bool = False,
        early_stopping: Any = None,
        threads_per_hop: int | None = None,
        parallelism: str = "ddp",
        overwrite: bool = False,
        allow_changed_code: bool = False,
    ) -> FitResult:
        """Train the models of ``param_grid`` (a grid, or a space a search draws from)
        for ``num_epochs`` each with MOP.

        Calling it again with the same arguments on the same data resumes an interrupted
        fit (or returns the finished one) without redoing any completed hop. Every check
        runs before anything is written: a refused call leaves the run directory as it was.

        Args:
            spec: the user's Minibatch spec instance.
            param_grid: ``{name: [values]}`` (a grid axis), or with a sampler also
                distributions (``cerebro.search.loguniform(1e-4, 1e-1)``, ``randint``,
                ``uniform``, ``choice``); or a list of such dicts, their union. Needs
                ``batch_size``.
            num_epochs: passes over the train data per model.
            seed: fixes model initialisation, the row order inside every hop and the
                sampler's draws. A model's seeds depend on the seed and its id only.
            policy: hop order, one of ``"fixed"`` (bit-identical runs), ``"lrf"`` (most
                remaining work first) or ``"random"`` (the original's randomized greedy).
            on_error: ``"continue"`` marks a failing model failed and goes on; ``"stop"``
                stops the fit at the first failure.
            objective, mode: how :attr:`FitResult.best` ranks models, and what a search
                optimizes (each model's best value at any epoch).
            search: ``"grid"`` (every point, the default), ``"random"``, ``"tpe"``, or
                any ``optuna.samplers.BaseSampler`` instance; models are asked from it
                while the fit runs, through Optuna's ask-and-tell, and the study is kept
                in ``DIR/search/`` (``FitResult.study``).
            num_models: how many models a search tries (not for the grid).
            max_live_models: models training at once (default: every grid point; twice
                the workers for a search). A new model is asked whenever one ends.
            deterministic: the same models, bit for bit, for the same seed on any number
                of workers (up to the data's partitions), local or on Ray: every hop runs
                with ``threads_per_hop`` torch threads and torch's deterministic algorithms,
                with ``policy="fixed"``; an adaptive sampler (TPE) asks in generations of
                ``max_live_models``, each told only the results of earlier ones (workers
                wait for each generation's slowest model). Costs speed: see the README.
            threads_per_hop: torch intra-op threads of each hop (default: the worker's
                share of the cores; 1 with ``deterministic``).
            parallelism: how a worker of several devices (``devices_per_worker``) trains
                a model: ``"ddp"`` (data-parallel, each device a share of every
                minibatch), ``"fsdp"`` (the same, with parameters, gradients and optimizer
                state sharded across the devices), ``"auto"`` (each model's first train
                hop on such a worker times rank 0 alone, DDP and FSDP on a few minibatches
                and the model keeps the fastest: ``FitResult.table``'s ``trial_*``
                columns; out of memory counts as not feasible), or a function of a
                model's hyperparameters that returns one of those, per model
                (``lambda hp: "fsdp" if hp["width"] > 4096 else "ddp"``).
            early_stopping: stop models early at epoch boundaries: ``"sha"``
                (synchronous successive halving: same seed, same survivors), ``"asha"``
                (asynchronous, never waits), ``"hyperband"`` (synchronous brackets),
                ``"median"``, a rule with its knobs (``cerebro.stopping.ASHA(
                grace_period=2, reduction_factor=3)``...) or any ``optuna.pruners``
                pruner. A stopped model keeps its metrics and checkpoints (status
                ``stopped``); ``FitResult.best`` is never a stopped model.
                ``num_epochs`` is the most a model trains.
            overwrite: discard an earlier fit in this run directory that this call cannot
                continue: a different one, or this one trained with other spec code. (A fit
                that trained nothing, e.g. one whose spec the probe rejected, is replaced
                without it.)
            allow_changed_code: continue this fit although ``spec``'s code (its methods or
                simple attributes) differs from the code it trained with so far.

        Raises:
            ParamsError: the run directory holds a different fit that trained something,
                or this fit trained with other code (see ``overwrite`` and
                ``allow_changed_code``), or the data has fewer partitions than workers.
        """
        check_fit_spec(spec)
        settings = FitSettings.check(
            param_grid,
            num_epochs,
            seed,
            policy=policy,
            on_error=on_error,
            objective=objective,
            mode=mode,
            search=search,
            num_models=num_models,
            max_live_models=max_live_models,
            deterministic=deterministic,
            early_stopping=early_stopping,
            threads_per_hop=threads_per_hop,
            parallelism=parallelism,
        )
        return self._fit(spec, settings, overwrite, allow_changed_code)

    def _fit(
        self, spec: MinibatchSpec, settings: FitSettings, overwrite: bool, allow_changed_code: bool
    ) -> FitResult:
        check_batch_sizes(settings.space, self.ranks)
        with self._locked():
            fit_id = run_fit_step(
                self, spec, settings, overwrite, allow_changed_code, self._engine
            )
        result = FitResult(self.catalog_path, fit_id, settings.objective, settings.mode)
        result.spec = spec
        return result

    def _eval(
        self, spec: MinibatchSpec, model_tag: str, kind: EvalKind, batch_size: int | None
    ) -> tuple[ModelRef, list[HopOutcome]]:
        check_eval(spec, kind, batch_size)
        data = eval_data(self.data_dir, kind, self.workers)
        with self._locked():
            ref = find_model(self.catalog_path, model_tag, self.params.models_dir)
            return ref, run_eval(ref, spec, data, batch_size, self._engine)

    def run_test(
        self, spec: MinibatchSpec, model_tag: str = "best", batch_size: int | None = None
    ) -> dict[str, float]:
        """Evaluate a trained model on every test partition, in parallel on the workers.

        Args:
            spec: the Minibatch spec (its ``valtest`` and ``metrics_agg`` are used).
            model_tag: ``"best"``, a model id such as ``"m003"``, or a model file's path
                (absolute, or relative to the working directory or to ``models_dir``): a
                Cerebro checkpoint, ``{component: state_dict}``, or the original's
                ``torch.save`` of the whole ``create_model_components`` dict, whose objects
                are used as they are.
            batch_size: overrides the model's ``batch_size``; needed for a file that
                records no hyperparameters (all but Cerebro's checkpoints).

        Returns:
            ``{"test_<metric>": value}``, also stored in the catalog.
        """
        ref, outcomes = self._eval(spec, model_tag, "test", batch_size)
        metrics = aggregate(spec, ref, outcomes, quiet=not self.verbose)
        with self._locked():
            record_test_metrics(self.catalog_path, ref, metrics)
        return metrics

    def run_predict(
        self, spec: MinibatchSpec, model_tag: str = "best", batch_size: int | None = None
    ) -> Path:
        """Score the predict split; writes ``DIR/predictions/<tag>.csv`` and returns its path.

        The file has one row per predict row, ordered by row id, with the columns
        ``row_id, output_class, confidence``. ``model_tag`` and ``batch_size`` are those of
        :meth:`run_test`.
        """
        ref, outcomes = self._eval(spec, model_tag, "predict", batch_size)
        return write_predictions(self.output_dir / "predictions" / f"{ref.tag}.csv", outcomes)
