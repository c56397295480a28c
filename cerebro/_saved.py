"""The run directory of an ``Experiment``: made, what it records there, and read back.

``from_dir`` rebuilds the experiment and ``resume`` its steps from this record: the params,
the workers and engine, each step's settings and its spec (by value).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cerebro._rundir import SEARCH_DIR, load_experiment, load_spec, save_experiment
from cerebro._settings import FitSettings
from cerebro.errors import CerebroError, ParamsError
from cerebro.spec import ETLSpec, MinibatchSpec

if TYPE_CHECKING:
    from cerebro.experiment import Experiment

__all__ = [
    "make_output_dir",
    "remember",
    "remember_etl",
    "remember_steps",
    "saved_args",
    "saved_spec",
    "saved_steps",
]


def make_output_dir(output_dir: Path) -> Path:
    """Create the run directory ``output_dir`` if missing; refuse one that is not writable."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ParamsError(f"cannot create output_dir {output_dir}: {e}") from e
    if not os.access(output_dir, os.W_OK):
        raise ParamsError(f"output_dir {output_dir} is not writable; choose another.")
    return output_dir


def remember(exp: Experiment, section: str, settings: dict[str, Any], spec: object) -> None:
    """Record ``exp`` and how its step ``section`` was called (settings and spec)."""
    session = {
        "params": exp.params.as_dict(),
        "workers": exp.workers,
        section: settings,
        "engine": {
            "engine": exp.engine,
            "address": exp.address,
            "resources_per_worker": exp.resources_per_worker,
        },
    }
    earlier = load_experiment(exp.output_dir) or {}
    if any(k != 1 for k in exp.ranks) or "devices_per_worker" in earlier:  # (only once set)
        session["devices_per_worker"] = exp.devices_per_worker  # a tuple is written as a list
    save_experiment(exp.output_dir, session, section, spec)


def remember_etl(exp: Experiment, settings: dict[str, Any], etl_spec: ETLSpec) -> None:
    """Record the ETL step, unless it writes into ``etl_dir``."""
    if exp.params.etl_dir is None:
        # Only the run's own data is redone by resume; etl_dir may serve other runs.
        remember(exp, "etl", settings, etl_spec)


def remember_steps(
    exp: Experiment,
    etl_step: tuple[ETLSpec, dict[str, Any]],
    spec: MinibatchSpec,
    settings: FitSettings,
) -> None:
    """Record both steps of ``run``/``resume`` before either starts: the ETL, then the fit."""
    etl_spec, etl_settings = etl_step
    remember_etl(exp, etl_settings, etl_spec)
    remember(exp, "fit", settings.to_json(), spec)


def saved_args(run_dir: str | Path) -> dict[str, Any]:
    """The ``Experiment`` arguments (but ``verbose``) recorded in ``run_dir``."""
    session = load_experiment(Path(run_dir))
    if session is None or "params" not in session:
        raise CerebroError(
            f"{run_dir} holds no Cerebro experiment (no experiment.json); start one with "
            "`cerebro run FILE` or Experiment(...).run_fit."
        )
    ray = session.get("engine", {"engine": "local"})
    args = {"params": session["params"], "workers": session["workers"], **ray}
    if "devices_per_worker" in session:
        args["devices_per_worker"] = session["devices_per_worker"]
    return args


def saved_spec(run_dir: Path, section: str) -> Any:
    """The spec an earlier ``run_etl`` (``"etl"``) or ``run_fit`` (``"fit"``) used."""
    try:
        return load_spec(run_dir, section)
    except FileNotFoundError:
        step = "run_etl" if section == "etl" else "run_fit"
        raise CerebroError(
            f"{run_dir} has no saved {section} spec: {step} was never called there."
        ) from None


def saved_steps(
    exp: Experiment, run_dir: str | Path
) -> tuple[tuple[ETLSpec, dict[str, Any]] | None, MinibatchSpec, FitSettings]:
    """The steps ``resume`` runs again: the ETL's (when it is the run's own) and the fit's."""
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
    return etl_step, spec, settings
