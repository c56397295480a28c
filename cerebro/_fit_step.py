"""The fit step of an ``Experiment``: its refusals, its record, then the fit in the catalog.

The caller holds the run directory. :func:`run_fit_step` finds or creates the fit in the
catalog (see ``_rundir.plan_fit``) and hands it to :func:`cerebro._fit.run_fit_loop`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cerebro._fit import run_fit_loop
from cerebro._preflight import check_fit_plan, check_workers, fit_signature, train_manifest
from cerebro._rundir import SEARCH_DIR, open_fit, plan_fit
from cerebro._saved import remember
from cerebro._settings import FitSettings
from cerebro.catalog import Catalog
from cerebro.engine import Engine
from cerebro.spec import MinibatchSpec, code_fingerprint

if TYPE_CHECKING:
    from cerebro.experiment import Experiment

__all__ = ["run_fit_step"]


def run_fit_step(
    exp: Experiment,
    spec: MinibatchSpec,
    settings: FitSettings,
    overwrite: bool,
    allow_changed_code: bool,
    make_engine: Callable[[MinibatchSpec, list[dict[str, list[int]]]], Engine],
) -> int:
    """Check, record and run (or continue) ``exp``'s fit; returns its id in the catalog.

    ``make_engine(spec, owned)`` starts the workers (``Experiment._engine``).
    """
    manifest = train_manifest(exp.data_dir)
    check_workers(exp.workers, int(manifest["partitions"]))
    signature = fit_signature(settings, spec, manifest, exp.workers)
    code = code_fingerprint(spec)
    check_fit_plan(exp, signature, code, overwrite, allow_changed_code)
    # NOTE: every refusal is above this line; nothing was written before it.
    remember(exp, "fit", settings.to_json(), spec)
    catalog = Catalog(exp.catalog_path)
    try:
        plan = plan_fit(catalog, exp.output_dir, signature, code, overwrite, allow_changed_code)
        fit_id = open_fit(
            catalog,
            plan,
            exp.output_dir,
            signature,
            code,
            settings.planned_models(),
            exp.workers,
        )
        run_fit_loop(
            catalog,
            fit_id,
            spec,
            manifest,
            settings,
            workers=exp.workers,
            models_dir=exp.output_dir / "models",
            start_dir=exp.params.models_dir,
            search_dir=exp.output_dir / SEARCH_DIR,
            make_engine=lambda owned: make_engine(spec, owned),
            verbose=exp.verbose,
        )
    finally:
        catalog.close()
    return fit_id
