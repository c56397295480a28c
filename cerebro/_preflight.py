"""The refusals a step makes before it writes anything.

A spec that cannot travel to the workers, no preprocessed train data, more workers than
partitions, a fit the run directory cannot continue: each is raised while the run directory
is still as the call found it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle

from cerebro import etl
from cerebro._etl_step import manifest_after_etl
from cerebro._rundir import plan_fit, reading
from cerebro._settings import FitSettings
from cerebro.errors import ParamsError, SpecError
from cerebro.spec import ETLSpec, MinibatchSpec, check_spec, code_fingerprint

if TYPE_CHECKING:
    from cerebro.experiment import Experiment

__all__ = [
    "check_etl_spec",
    "check_fit_plan",
    "check_fit_spec",
    "check_picklable",
    "check_steps",
    "check_workers",
    "fit_signature",
    "train_manifest",
]


def check_picklable(spec: object) -> None:
    """Refuse a spec that cannot be sent to the worker processes."""
    try:
        cloudpickle.dumps(spec)
    except Exception as e:
        raise SpecError(
            f"{type(spec).__name__} cannot be sent to the worker processes: {type(e).__name__}: "
            f"{e}. Keep only picklable attributes on the spec (open files, locks, sockets and "
            "loaded data sets belong in initialize_worker or read_misc)."
        ) from e


def check_etl_spec(spec: ETLSpec) -> None:
    """Refuse an ETL spec that is not a valid subclass instance or not picklable."""
    check_spec(spec, ETLSpec)
    check_picklable(spec)


def check_fit_spec(spec: MinibatchSpec) -> None:
    """Refuse a Minibatch spec that is not a valid subclass instance or not picklable."""
    check_spec(spec, MinibatchSpec)
    check_picklable(spec)


def train_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest of the preprocessed data in ``data_dir``, which must hold a train split."""
    manifest = etl.load_manifest(data_dir)
    if manifest is None or "train" not in manifest["splits"]:
        raise ParamsError(
            f"no preprocessed train data in {data_dir}; call run_etl(etl_spec) before run_fit."
        )
    return manifest


def check_workers(workers: int, parts: int) -> None:
    """Refuse more workers than the data has partitions."""
    if workers > parts:
        raise ParamsError(
            f"{workers} workers but the data has {parts} partitions: a worker would "
            f"have no data. Use workers <= {parts}, or rerun run_etl(..., partitions="
            f"{workers})."
        )


def fit_signature(
    settings: FitSettings, spec: MinibatchSpec, manifest: dict[str, Any], workers: int
) -> str:
    """What makes a fit this fit; its code is checked apart (NOTE [ fit identity ])."""
    return settings.signature(spec, manifest["fingerprint"], workers)


def check_fit_plan(
    exp: Experiment,
    signature: str | None,
    code: str,
    overwrite: bool,
    allow_changed_code: bool,
) -> None:
    """Refuse a fit that ``exp``'s catalog cannot continue; reads the catalog only."""
    with reading(exp.catalog_path) as catalog:
        plan_fit(catalog, exp.output_dir, signature, code, overwrite, allow_changed_code)


def check_steps(
    exp: Experiment,
    etl_step: tuple[ETLSpec, dict[str, Any]] | None,
    spec: MinibatchSpec,
    settings: FitSettings,
    overwrite: bool,
    allow_changed_code: bool,
) -> None:
    """Every refusal of ``run``/``resume``: the ETL's (when ``etl_step`` is given), then
    the fit's, against the data the ETL will leave."""
    manifest: dict[str, Any] | None
    if etl_step is None:
        manifest = train_manifest(exp.data_dir)
    else:
        manifest = manifest_after_etl(exp.params, exp.data_dir, *etl_step)
    if manifest is not None:
        check_workers(exp.workers, int(manifest["partitions"]))
    else:  # the ETL writes the data: as many partitions as its settings say
        assert etl_step is not None
        check_workers(exp.workers, int(etl_step[1]["partitions"]))
    signature = None
    if manifest is not None:
        signature = fit_signature(settings, spec, manifest, exp.workers)
    check_fit_plan(exp, signature, code_fingerprint(spec), overwrite, allow_changed_code)
