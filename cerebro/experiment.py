"""``Experiment``: the one object a user drives — ETL, then a MOP fit over a grid."""

from __future__ import annotations

import os
import shutil
import sqlite3
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle

from cerebro import etl
from cerebro._atomic import replacing
from cerebro._evaluate import (
    aggregate,
    check_batch_size,
    check_predict,
    evaluate,
    need_batch_size,
    record_test,
    resolve_model,
    with_components,
    write_predictions,
)
from cerebro._fit import run_fit_loop
from cerebro._rundir import (
    SEARCH_DIR,
    RunLock,
    load_experiment,
    load_spec,
    open_fit,
    plan_fit,
    reading,
    save_experiment,
)
from cerebro._settings import FitSettings, positive_int
from cerebro.catalog import Catalog
from cerebro.engine import Engine
from cerebro.engine._pool import WorkerPool
from cerebro.engine.local import LocalEngine, default_devices, threads_per_worker
from cerebro.errors import CerebroError, ParamsError, SpecError
from cerebro.etl import count_lines, default_partitions, owner
from cerebro.etl._run import _fingerprint as etl_fingerprint
from cerebro.params import (
    ETL_MARK,
    Params,
    check_etl_dir,
    is_etl_output,
    validate_params,
)
from cerebro.result import FitResult
from cerebro.spec import ETLSpec, MinibatchSpec, check_spec, code_fingerprint

__all__ = ["Experiment"]

_ENGINES = ("local", "ray")


def _picklable(spec: object) -> None:
    try:
        cloudpickle.dumps(spec)
    except Exception as e:
        raise SpecError(
            f"{type(spec).__name__} cannot be sent to the worker processes: {type(e).__name__}: "
            f"{e}. Keep only picklable attributes on the spec (open files, locks, sockets and "
            "loaded data sets belong in initialize_worker or read_misc)."
        ) from e


def _check_fit_spec(spec: MinibatchSpec) -> None:
    check_spec(spec, MinibatchSpec)
    _picklable(spec)


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
        verbose: bool = True,
    ):
        self.params: Params = validate_params(params)
        self.workers = positive_int(
            "workers", workers if workers is not None else (os.cpu_count() or 1)
        )
        if engine not in _ENGINES:
            raise ParamsError(f"engine must be one of {_ENGINES}, got {engine!r}.")
        if engine == "local" and (address is not None or resources_per_worker):
            raise ParamsError(
                "address and resources_per_worker are for engine='ray'; "
                "pass engine='ray' to run on a Ray cluster."
            )
        self.engine = engine
        self.address = address
        self.resources_per_worker = dict(resources_per_worker or {})
        self.verbose = verbose
        self.output_dir = self.params.output_dir
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ParamsError(f"cannot create output_dir {self.output_dir}: {e}") from e
        if not os.access(self.output_dir, os.W_OK):
            raise ParamsError(f"output_dir {self.output_dir} is not writable; choose another.")
        self._lock = RunLock(self.output_dir)
        self._etl_lock: RunLock | None = None
        self._pool: WorkerPool | None = None
        self._stop_pool: Callable[[], Any] | None = None  # the pool's close, run at most once
        self._closed = False

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _worker_pool(self) -> WorkerPool | None:
        """The local engine's worker processes (None with Ray), launched on first use."""
        self._check_open()
        if self.engine != "local":
            return None
        if self._pool is None:
            self._pool = WorkerPool(threads_per_worker(self.workers), quiet=not self.verbose)
            # Stops the processes when this object is collected or the program ends.
            self._stop_pool = weakref.finalize(self, self._pool.close)
        return self._pool

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
        self._check_open()
        if self._stop_pool is not None:
            self._stop_pool()  # a finalizer: the pool's close(), once; the next step makes one
            self._pool = self._stop_pool = None
        if self.engine == "ray":
            import sys

            ray = sys.modules.get("ray")
            if ray is not None and ray.is_initialized():
                from cerebro.engine._ray_nodes import release_idle

                release_idle(ray)

    def close(self) -> None:
        """Stop the worker processes; a later call on this experiment raises."""
        self._closed = True
        if self._pool is not None:
            self._pool.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CerebroError(
                "this Experiment was closed (close() or the end of its with-block); create "
                f"a new one: Experiment.from_dir({str(self.output_dir)!r}) picks up its run."
            )

    @classmethod
    def from_dir(cls, run_dir: str | Path, *, verbose: bool = True) -> Experiment:
        """The experiment saved in ``run_dir`` by an earlier ``run_etl``/``run_fit``.

        Raises:
            CerebroError: ``run_dir`` holds no saved experiment.
        """
        session = load_experiment(Path(run_dir))
        if session is None or "params" not in session:
            raise CerebroError(
                f"{run_dir} holds no Cerebro experiment (no experiment.json); start one with "
                "`cerebro run FILE` or Experiment(...).run_fit."
            )
        ray = session.get("engine", {"engine": "local"})
        return cls(session["params"], workers=session["workers"], verbose=verbose, **ray)

    def saved_spec(self, section: str) -> Any:
        """The spec an earlier ``run_etl`` (``"etl"``) or ``run_fit`` (``"fit"``) used."""
        try:
            return load_spec(self.output_dir, section)
        except FileNotFoundError:
            step = "run_etl" if section == "etl" else "run_fit"
            raise CerebroError(
                f"{self.output_dir} has no saved {section} spec: {step} was never called there."
            ) from None

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
        session = load_experiment(exp.output_dir) or {}
        if "fit" not in session:
            raise CerebroError(
                f"{run_dir} holds no fit to resume: run_fit was never called there. Run the "
                "script that called run_etl and run_fit again (the finished ETL is reused), "
                "or start with Experiment.run, which records both steps before either starts."
            )
        settings = FitSettings.from_json(session["fit"], exp.output_dir / SEARCH_DIR)
        spec = exp.saved_spec("fit")
        etl_step = None
        if "etl" in session and exp.params.etl_dir is None:
            etl_step = (exp.saved_spec("etl"), dict(session["etl"]))
        return exp._run_steps(etl_step, spec, settings, False, allow_changed_code)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the run directory, and turn catalog write failures into a clear error."""
        self._check_open()
        with self._lock:
            try:
                yield
            except sqlite3.OperationalError as e:
                raise CerebroError(
                    f"could not write the catalog {self.catalog_path}: {e}. Free disk space "
                    "(or raise the file-size limit) and rerun: SQLite rolled back the "
                    "unfinished change and every completed hop is kept."
                ) from e

    def _engine(self, spec: MinibatchSpec, owned: list[dict[str, list[int]]]) -> Engine:
        """Start the workers, each holding the partitions ``owned`` lists for it."""
        w = len(owned)
        if self.engine == "ray":
            from cerebro.engine.ray import RayEngine

            return RayEngine(
                spec,
                str(self.data_dir),
                owned,
                str(self._misc_dir()),
                address=self.address,
                resources_per_worker=self.resources_per_worker or None,
            )
        return LocalEngine(
            spec,
            str(self.data_dir),
            owned,
            str(self._misc_dir()),
            threads=threads_per_worker(w),
            devices=default_devices(w),
            pool=self._worker_pool(),
        )

    @property
    def data_dir(self) -> Path:
        return self.params.etl_dir or self.output_dir / "data"

    @property
    def catalog_path(self) -> Path:
        return self.output_dir / "catalog.sqlite"

    def _misc_dir(self) -> Path:
        """Copy the ``misc`` files into one folder that every worker's ``read_misc`` gets."""
        d = self.output_dir / "misc"
        d.mkdir(exist_ok=True)
        for f in self.params.misc:
            target = d / f.name
            try:
                if not target.exists() or target.stat().st_size != f.stat().st_size:
                    with replacing(target) as tmp:
                        shutil.copyfile(f, tmp)
            except OSError as e:
                raise ParamsError(
                    f"params['misc'] file {f} could not be copied into {d}: {e}. Check that "
                    "it is a readable file and that the output folder has room."
                ) from e
        return d

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
        check_spec(etl_spec, ETLSpec)
        _picklable(etl_spec)
        if self.params.etl_dir is not None and not self.params.mains:
            manifest = etl.load_manifest(self.params.etl_dir)
            if manifest is None:
                raise ParamsError(
                    f"etl_dir {self.params.etl_dir} holds no finished ETL "
                    f"({etl.MANIFEST} missing). Give the CSVs (train_main ...) in params as "
                    "well to have run_etl write the data there."
                )
            return manifest
        settings = self._etl_settings(fraction, seed, partitions)
        parts = settings["partitions"]
        with self._locked():
            with self._etl_locked():
                # The same inputs: nothing to do, no worker to start (Ray's ETL checks as well
                # that every node still holds its partitions).
                reused = self._manifest_after_etl(etl_spec, settings)
                if reused is not None and self.engine == "local":
                    if self.params.etl_dir is None:
                        self._remember("etl", settings, etl_spec)
                    return reused
            with self._etl_target():
                if self.params.etl_dir is None:
                    # Only the run's own data is redone by resume; etl_dir may serve other runs.
                    self._remember("etl", settings, etl_spec)
                if self.engine == "ray":
                    from cerebro.engine.ray import ray_etl

                    return ray_etl(
                        etl_spec,
                        self.params,
                        self.data_dir,
                        self._misc_dir(),
                        partitions=parts,
                        fraction=float(fraction),
                        seed=int(seed),
                        workers=self.workers,
                        address=self.address,
                        resources_per_worker=self.resources_per_worker or None,
                        progress=self.verbose,
                    )
                pool = self._worker_pool()
                assert pool is not None
                launched = pool.start(self.workers)  # at once: they warm up as CSVs are read
                try:
                    return etl.run_etl(
                        etl_spec,
                        self.params,
                        self.data_dir,
                        self._misc_dir(),
                        partitions=parts,
                        fraction=float(fraction),
                        seed=int(seed),
                        processes=os.cpu_count() or 1,
                        progress=self.verbose,
                        pool=pool,
                    )
                except BaseException:
                    pool.discard_unused(launched)  # e.g. a bad CSV: no worker was needed
                    raise

    @contextmanager
    def _etl_target(self) -> Iterator[None]:
        """Make :attr:`data_dir` ready for the ETL to write: checked to be Cerebro's (NOTE
        [ whose etl_dir ]) before anything there is touched, then marked as Cerebro's; an
        ``etl_dir`` is also locked against a second ETL writing into it at the same time."""
        d, etl_dir = self.data_dir, self.params.etl_dir
        if etl_dir is not None:
            check_etl_dir(etl_dir)  # again: the folder may have changed since Experiment()
        try:
            d.mkdir(parents=True, exist_ok=True)
            if not (d / ETL_MARK).exists():
                (d / ETL_MARK).write_text("Cerebro's preprocessed data (run_etl).\n")
        except OSError as e:
            raise ParamsError(
                f"cannot write the preprocessed data into {d}: {e}. Choose a writable "
                "etl_dir (or output_dir)."
            ) from e
        with self._etl_locked():
            yield

    @contextmanager
    def _etl_locked(self) -> Iterator[None]:
        """Hold ``etl_dir`` against another run's ETL; re-entrant. Only a folder that is
        Cerebro's already (NOTE [ whose etl_dir ]): nothing is written into any other."""
        etl_dir = self.params.etl_dir
        if etl_dir is None or not etl_dir.is_dir() or not is_etl_output(etl_dir):
            yield
            return
        if self._etl_lock is None:
            self._etl_lock = RunLock(etl_dir)
        try:
            self._etl_lock.__enter__()
        except CerebroError:
            holder = (etl_dir / ".lock").read_text(errors="replace").strip()
            raise CerebroError(
                f"etl_dir {etl_dir} is in use by another run's ETL ({holder or 'a process'}). "
                "Wait for it to finish (then this run reuses its output), or give this run "
                "another etl_dir."
            ) from None
        try:
            yield
        finally:
            self._etl_lock.__exit__(None, None, None)

    def _etl_settings(self, fraction: Any, seed: int, partitions: int | None) -> dict[str, Any]:
        """Check ``run_etl``'s arguments before any work."""
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise TypeError(f"fraction must be a number in (0, 1], got {fraction!r}.")
        if partitions is None:
            train = self.params.mains.get("train")
            rows = count_lines(train) - 1 if train is not None and train.is_file() else 0
            partitions = default_partitions(int(rows * min(float(fraction), 1.0)), self.workers)
        parts = positive_int("partitions", partitions)
        return {"fraction": fraction, "seed": seed, "partitions": parts}

    def _remember_fit(self, spec: MinibatchSpec, settings: FitSettings) -> None:
        self._remember("fit", settings.to_json(), spec)

    def _remember(self, section: str, settings: dict[str, Any], spec: object) -> None:
        save_experiment(
            self.output_dir,
            {
                "params": self.params.as_dict(),
                "workers": self.workers,
                section: settings,
                "engine": {
                    "engine": self.engine,
                    "address": self.address,
                    "resources_per_worker": self.resources_per_worker,
                },
            },
            section,
            spec,
        )

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
        check_spec(etl_spec, ETLSpec)
        _picklable(etl_spec)
        etl_settings = self._etl_settings(fraction, seed, partitions)
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
        )
        return self._run_steps(
            (etl_spec, etl_settings), spec, settings, overwrite, allow_changed_code
        )

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
        _check_fit_spec(spec)
        with self._locked(), self._etl_locked():
            manifest: dict[str, Any] | None
            if etl_step is None:
                manifest = self._train_manifest()
            else:
                manifest = self._manifest_after_etl(*etl_step)
            if manifest is not None:
                self._check_workers(int(manifest["partitions"]))
            else:  # the ETL writes the data: as many partitions as its settings say
                assert etl_step is not None
                self._check_workers(int(etl_step[1]["partitions"]))
            signature = None if manifest is None else self._signature(spec, settings, manifest)
            code = code_fingerprint(spec)
            with reading(self.catalog_path) as catalog:
                plan_fit(catalog, self.output_dir, signature, code, overwrite, allow_changed_code)
            # NOTE: every refusal is above this line; nothing was written before it.
            if etl_step is not None:
                etl_spec, etl_settings = etl_step
                if self.params.etl_dir is None:
                    self._remember("etl", etl_settings, etl_spec)
                self._remember_fit(spec, settings)
                self.run_etl(
                    etl_spec,
                    etl_settings["fraction"],
                    etl_settings["seed"],
                    partitions=etl_settings["partitions"],
                )
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
        _check_fit_spec(spec)
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
        )
        return self._fit(spec, settings, overwrite, allow_changed_code)

    def _fit(
        self, spec: MinibatchSpec, settings: FitSettings, overwrite: bool, allow_changed_code: bool
    ) -> FitResult:
        with self._locked():
            manifest = self._train_manifest()
            self._check_workers(int(manifest["partitions"]))
            signature = self._signature(spec, settings, manifest)
            code = code_fingerprint(spec)
            with reading(self.catalog_path) as reader:
                plan_fit(reader, self.output_dir, signature, code, overwrite, allow_changed_code)
            # NOTE: every refusal is above this line; nothing was written before it.
            self._remember_fit(spec, settings)
            catalog = Catalog(self.catalog_path)
            try:
                plan = plan_fit(
                    catalog, self.output_dir, signature, code, overwrite, allow_changed_code
                )
                fit_id = open_fit(
                    catalog,
                    plan,
                    self.output_dir,
                    signature,
                    code,
                    settings.planned_models(),
                    self.workers,
                )
                run_fit_loop(
                    catalog,
                    fit_id,
                    spec,
                    manifest,
                    settings,
                    workers=self.workers,
                    models_dir=self.output_dir / "models",
                    start_dir=self.params.models_dir,
                    search_dir=self.output_dir / SEARCH_DIR,
                    make_engine=lambda owned: self._engine(spec, owned),
                    verbose=self.verbose,
                )
            finally:
                catalog.close()
        result = FitResult(self.catalog_path, fit_id, settings.objective, settings.mode)
        result.spec = spec
        return result

    # --- which fit a call continues: decided before anything is written -----------------------

    def _train_manifest(self) -> dict[str, Any]:
        manifest = etl.load_manifest(self.data_dir)
        if manifest is None or "train" not in manifest["splits"]:
            raise ParamsError(
                f"no preprocessed train data in {self.data_dir}; call "
                "run_etl(etl_spec) before run_fit."
            )
        return manifest

    def _manifest_after_etl(
        self, etl_spec: ETLSpec, settings: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The manifest ``run_etl(etl_spec, **settings)`` will leave: the one there when
        the ETL reuses it, None when the ETL will write new data. Writes nothing.

        Raises:
            ParamsError: ``etl_dir`` is not Cerebro's, or (without CSVs) holds no ETL.
        """
        etl_dir = self.params.etl_dir
        old = etl.load_manifest(self.data_dir)
        if etl_dir is not None and not self.params.mains:
            if old is None:
                raise ParamsError(
                    f"etl_dir {etl_dir} holds no finished ETL ({etl.MANIFEST} missing). Give "
                    "the CSVs (train_main ...) in params as well to have run_etl write the "
                    "data there."
                )
            return old
        if etl_dir is not None:
            check_etl_dir(etl_dir)
        if not 0.0 < float(settings["fraction"]) <= 1.0:
            raise ParamsError(f"fraction must be in (0, 1], got {settings['fraction']!r}.")
        want = etl_fingerprint(
            self.params,
            etl_spec,
            settings["partitions"],
            float(settings["fraction"]),
            int(settings["seed"]),
        )
        return old if old is not None and old.get("fingerprint") == want else None

    def _check_workers(self, parts: int) -> None:
        if self.workers > parts:
            raise ParamsError(
                f"{self.workers} workers but the data has {parts} partitions: a worker would "
                f"have no data. Use workers <= {parts}, or rerun run_etl(..., partitions="
                f"{self.workers})."
            )

    def _signature(
        self, spec: MinibatchSpec, settings: FitSettings, manifest: dict[str, Any]
    ) -> str:
        """What makes a fit this fit; its code is checked apart (NOTE [ fit identity ])."""
        return settings.signature(spec, manifest["fingerprint"], self.workers)

    def _model(self, catalog: Catalog, model_tag: str) -> Any:
        def best(fit_id: int) -> dict[str, Any]:
            return FitResult(self.catalog_path, fit_id).best

        return resolve_model(catalog, model_tag, best, self.params.models_dir)

    def _eval(
        self, spec: MinibatchSpec, model_tag: str, kind: str, batch_size: int | None
    ) -> tuple[Any, list[Any]]:
        check_batch_size(batch_size)
        check_spec(spec, MinibatchSpec)
        if kind == "predict":
            check_predict(spec)
        _picklable(spec)
        manifest = etl.load_manifest(self.data_dir)
        if manifest is None or kind not in manifest["splits"]:
            raise ParamsError(
                f"no preprocessed {kind} data in {self.data_dir}: give "
                f"params['{kind}_main'] and run run_etl first."
            )
        sizes = manifest["splits"][kind]["sizes"]
        parts = [p for p, n in enumerate(sizes) if n > 0]
        w = min(self.workers, len(sizes))
        with self._locked():
            catalog = Catalog(self.catalog_path)
            try:
                ref = self._model(catalog, model_tag)
            finally:
                catalog.close()
            need_batch_size(ref, batch_size, f"run_{kind}")
            if ref.components is not None:  # NOTE [ original model files ]
                spec = with_components(spec, ref.components)
            owned: list[dict[str, list[int]]] = [{} for _ in range(w)]
            for p in parts:
                owned[owner(p, w)].setdefault(kind, []).append(p)
            engine = self._engine(spec, owned)
            try:
                return ref, evaluate(engine, ref, kind, parts, batch_size)
            finally:
                engine.shutdown()

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
            catalog = Catalog(self.catalog_path)
            try:
                record_test(catalog, ref, metrics)
            finally:
                catalog.close()
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
