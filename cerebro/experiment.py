"""``Experiment``: the one object a user drives — ETL, then a MOP fit over a grid."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from cerebro import etl
from cerebro._controller import FitState, replay, run_loop
from cerebro.catalog import Catalog
from cerebro.engine.local import LocalEngine, default_devices, threads_per_worker
from cerebro.errors import ParamsError, SpecError
from cerebro.params import Params, expand_grid, validate_params
from cerebro.result import FitResult
from cerebro.scheduler import POLICIES, Scheduler
from cerebro.spec import ETLSpec, MinibatchSpec, check_spec

__all__ = ["Experiment"]

_ON_ERROR = ("continue", "stop")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    if value < 1:
        raise ParamsError(f"{name} must be at least 1, got {value}.")
    return value


def _picklable(spec: object) -> None:
    try:
        cloudpickle.dumps(spec)
    except Exception as e:
        raise SpecError(
            f"{type(spec).__name__} cannot be sent to the worker processes: {type(e).__name__}: "
            f"{e}. Keep only picklable attributes on the spec (open files, locks, sockets and "
            "loaded data sets belong in initialize_worker or read_misc)."
        ) from e


class Experiment:
    """One run directory: its data, its fits and everything they record.

    Args:
        params: file locations (see DESIGN.md §2): ``train_main`` ... ``predict_main``,
            ``*_dir``, ``misc``, ``etl_dir``, ``models_dir``, ``output_dir``.
        workers: worker processes; each holds one share of the data. Default: the cores.
        verbose: show progress bars.

    Example:
        >>> exp = Experiment(params, workers=2)                     # doctest: +SKIP
        >>> exp.run_etl(DigitsETL(), fraction=1.0, seed=1)          # doctest: +SKIP
        >>> result = exp.run_fit(DigitsSpec(), {"lr": [1e-3], "batch_size": [32]},
        ...                      num_epochs=5)                      # doctest: +SKIP
        >>> result.table                                            # doctest: +SKIP
    """

    def __init__(
        self, params: Mapping[str, Any], workers: int | None = None, *, verbose: bool = True
    ):
        self.params: Params = validate_params(params)
        self.workers = _positive_int(
            "workers", workers if workers is not None else (os.cpu_count() or 1)
        )
        self.verbose = verbose
        self.output_dir = self.params.output_dir
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ParamsError(f"cannot create output_dir {self.output_dir}: {e}") from e
        if not os.access(self.output_dir, os.W_OK):
            raise ParamsError(f"output_dir {self.output_dir} is not writable; choose another.")

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
            if not target.exists() or target.stat().st_size != f.stat().st_size:
                tmp = d / f".{f.name}.tmp"
                shutil.copyfile(f, tmp)
                os.replace(tmp, target)
        return d

    def run_etl(
        self,
        etl_spec: ETLSpec,
        fraction: float = 1.0,
        seed: int = 1,
        *,
        partitions: int | None = None,
    ) -> dict[str, Any]:
        """Preprocess every split into partitions (one per worker by default).

        Reuses earlier output when the inputs, spec, fraction, seed and partition count are
        unchanged; with ``etl_dir`` in params, checks that folder and does nothing else.

        Returns:
            The ETL manifest: rows and partition sizes per split.
        """
        check_spec(etl_spec, ETLSpec)
        _picklable(etl_spec)
        if self.params.etl_dir is not None:
            manifest = etl.load_manifest(self.params.etl_dir)
            if manifest is None:
                raise ParamsError(
                    f"etl_dir {self.params.etl_dir} holds no finished ETL "
                    f"({etl.MANIFEST} missing); run run_etl without etl_dir."
                )
            return manifest
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise TypeError(f"fraction must be a number in (0, 1], got {fraction!r}.")
        parts = _positive_int("partitions", partitions if partitions is not None else self.workers)
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
        )

    def run_fit(
        self,
        spec: MinibatchSpec,
        param_grid: Mapping[str, Sequence[Any]],
        num_epochs: int,
        seed: int = 1,
        *,
        policy: str = "fixed",
        on_error: str = "continue",
        objective: str | None = None,
        mode: str = "min",
        overwrite: bool = False,
    ) -> FitResult:
        """Train every configuration of ``param_grid`` for ``num_epochs`` with MOP.

        Calling it again with the same arguments on the same data resumes an interrupted
        fit (or returns the finished one) without redoing any completed hop.

        Args:
            spec: the user's Minibatch spec instance.
            param_grid: ``{name: [values]}``; needs ``batch_size``.
            num_epochs: passes over the train data per model.
            seed: fixes model initialisation and the row order inside every hop.
            policy: hop order, one of ``"fixed"`` (bit-identical runs), ``"lrf"`` (most
                remaining work first) or ``"random"`` (the original's randomized greedy).
            on_error: ``"continue"`` marks a failing model failed and goes on; ``"stop"``
                stops the fit at the first failure.
            objective, mode: how :attr:`FitResult.best` ranks models.
            overwrite: discard an earlier, different fit in this run directory.
        """
        check_spec(spec, MinibatchSpec)
        _picklable(spec)
        num_epochs = _positive_int("num_epochs", num_epochs)
        if policy not in POLICIES:
            raise ParamsError(f"policy must be one of {POLICIES}, got {policy!r}.")
        if on_error not in _ON_ERROR:
            raise ParamsError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}.")
        if mode not in ("min", "max"):
            raise ParamsError(f"mode must be 'min' or 'max', got {mode!r}.")
        configs = expand_grid(param_grid)
        manifest = etl.load_manifest(self.data_dir)
        if manifest is None or "train" not in manifest["splits"]:
            raise ParamsError(
                f"no preprocessed train data in {self.data_dir}; call "
                "run_etl(etl_spec) before run_fit."
            )
        parts = int(manifest["partitions"])
        if self.workers > parts:
            raise ParamsError(
                f"{self.workers} workers but the data has {parts} partitions: a worker would "
                f"have no data. Use workers <= {parts}, or rerun run_etl(..., partitions="
                f"{self.workers})."
            )
        signature = json.dumps(
            {
                "grid": {k: list(v) for k, v in param_grid.items()},
                "num_epochs": num_epochs,
                "seed": seed,
                "policy": policy,
                "spec": type(spec).__qualname__,
                "data": manifest["fingerprint"],
                "workers": self.workers,
            },
            sort_keys=True,
        )
        catalog = Catalog(self.catalog_path)
        try:
            fit_id = self._fit_id(catalog, signature, configs, overwrite)
            self._fit(catalog, fit_id, spec, configs, manifest, num_epochs, seed, policy, on_error)
        finally:
            catalog.close()
        return FitResult(self.catalog_path, fit_id, objective, mode)

    def _fit_id(
        self, catalog: Catalog, signature: str, configs: list[Any], overwrite: bool
    ) -> int:
        fit_id = catalog.find_fit(signature)
        if fit_id is not None:
            return fit_id
        latest = catalog.latest_fit()
        if latest is not None:
            if not overwrite:
                raise ParamsError(
                    f"{self.output_dir} already holds a different fit (fit {latest['fit_id']}, "
                    f"{latest['status']}). Use a new output_dir to keep it, or pass "
                    "overwrite=True to discard it."
                )
            catalog.delete_fit(latest["fit_id"])
            shutil.rmtree(self.output_dir / "models", ignore_errors=True)
        config = {"models": len(configs), "workers": self.workers}
        return catalog.create_fit(
            signature, config, [(c.model_id, c.hyperparams) for c in configs]
        )

    def _fit(
        self,
        catalog: Catalog,
        fit_id: int,
        spec: MinibatchSpec,
        configs: list[Any],
        manifest: dict[str, Any],
        num_epochs: int,
        seed: int,
        policy: str,
        on_error: str,
    ) -> None:
        w = self.workers
        splits = manifest["splits"]
        train_owner = {p: p % w for p, n in enumerate(splits["train"]["sizes"])}
        val_owner = (
            {p: p % w for p, n in enumerate(splits["val"]["sizes"]) if n > 0}
            if "val" in splits
            else {}
        )
        sched = Scheduler(
            [c.model_id for c in configs],
            num_epochs=num_epochs,
            train_owner=train_owner,
            val_owner=val_owner,
            policy=policy,
            seed=seed,
        )
        state = FitState(
            fit_id,
            spec,
            {c.model_id: c for c in configs},
            self.output_dir / "models",
            seed,
            num_epochs,
            on_error,
        )
        replay(catalog, state, sched)
        if sched.done:
            catalog.set_fit_status(fit_id, "done")
            return
        owned: list[dict[str, list[int]]] = [{} for _ in range(w)]
        for split, owner in (("train", train_owner), ("val", val_owner)):
            for p, worker in owner.items():
                owned[worker].setdefault(split, []).append(p)
        engine = LocalEngine(
            spec,
            str(self.data_dir),
            owned,
            str(self._misc_dir()),
            threads=threads_per_worker(w),
            devices=default_devices(w),
        )
        progress = _bar(
            sched.total_hops(), sched.total_hops() - sched.remaining_hops(), self.verbose
        )
        try:
            run_loop(catalog, state, sched, engine, progress)
        except BaseException:
            catalog.set_fit_status(fit_id, "stopped")
            raise
        finally:
            progress.close()
            engine.shutdown()
        catalog.set_fit_status(fit_id, "done")


def _bar(total: int, done: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="MOP hops", unit="hop", disable=not enabled)
