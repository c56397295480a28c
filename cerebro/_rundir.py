"""The run directory's lock, the saved experiment that ``resume`` needs, and which fit of
its catalog a ``run_fit`` call continues.

NOTE [ run lock ]
One process at a time may run ETL, a fit, a test or a prediction in a run directory. The
lock is ``fcntl.flock`` on ``DIR/.lock``: the kernel drops it when its process dies, however
it dies, so a killed run never blocks the next one. Readers (status, report) take no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import cloudpickle

from cerebro._atomic import write_atomic
from cerebro.catalog import Catalog
from cerebro.errors import CerebroError, ParamsError

__all__ = [
    "FitPlan",
    "SEARCH_DIR",
    "RunLock",
    "load_experiment",
    "open_fit",
    "plan_fit",
    "reading",
    "save_experiment",
]

_CLI_FLAGS = "(cerebro: --allow-changed-code, --overwrite, --output)"

_SESSION = "experiment.json"
SEARCH_DIR = "search"  # the fit's Optuna study and sampler (cerebro/search/_optuna.py)


class RunLock:
    """Exclusive use of a run directory by this process (re-entrant within it)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> RunLock:
        if self._depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise CerebroError(
                    f"{self.path.parent} is in use by {holder}. Wait for it to finish or stop "
                    "it (a stopped run releases the directory at once), or use another "
                    "output_dir."
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} (since {time.ctime()})".encode())
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def save_experiment(run_dir: Path, settings: dict[str, Any], section: str, spec: object) -> None:
    """Remember how a step was called (``settings`` and its spec by value) for ``resume``."""
    run_dir = Path(run_dir)
    (run_dir / "specs").mkdir(exist_ok=True)
    write_atomic(run_dir / "specs" / f"{section}.pkl", cloudpickle.dumps(spec))
    session = load_experiment(run_dir) or {}
    session.update(settings)
    write_atomic(run_dir / _SESSION, json.dumps(session, indent=1, default=str).encode())


def load_experiment(run_dir: Path) -> dict[str, Any] | None:
    """The saved settings of a run directory, or None when it has none."""
    try:
        return json.loads((Path(run_dir) / _SESSION).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def load_spec(run_dir: Path, section: str) -> Any:
    """The spec saved for ``section`` (``"etl"`` or ``"fit"``)."""
    import pickle

    with open(Path(run_dir) / "specs" / f"{section}.pkl", "rb") as f:
        return pickle.load(f)


# --- which fit a call continues: decided before anything is written ---------------------------


@dataclass(frozen=True)
class FitPlan:
    """What a ``run_fit`` call does with the catalog's fits, decided before it writes.

    ``fit_id``: the fit it continues (None: it creates one); ``replace``: the fit it deletes
    first; ``code_changed``: the continued fit's recorded spec code is to be replaced.
    """

    fit_id: int | None
    replace: int | None
    code_changed: bool


@contextmanager
def reading(catalog_path: Path) -> Iterator[Catalog | None]:
    """The catalog opened read-only (None when there is none): a check writes nothing."""
    if not catalog_path.is_file():
        yield None
        return
    catalog = Catalog(catalog_path, readonly=True)
    try:
        yield catalog
    finally:
        catalog.close()


def plan_fit(
    catalog: Catalog | None,
    run_dir: Path,
    signature: str | None,
    code: str,
    overwrite: bool,
    allow_changed_code: bool,
) -> FitPlan:
    """Decide which fit a ``run_fit`` call continues, replaces or creates.

    NOTE [ fit identity ]
    A fit is its signature (grid or space, epochs, seed, policy, spec class, data,
    workers, and for a search its sampler, ``num_models``, ``max_live_models`` and
    ``deterministic``: ``FitSettings.signature``): a call with the same one continues
    it. Its spec's code (``code_fingerprint``) is recorded beside it: continuing with
    other code would mix two versions of the code in one fit, so it is refused unless
    ``allow_changed_code`` (the new code is then recorded) or ``overwrite`` (the fit
    starts over). A fit with no completed hop
    trained nothing, so any call may replace it: fixing the spec the probe rejected
    and running again just works. ``signature`` None: the data is yet to be made, so
    no fit there can be this one.

    Raises:
        ParamsError: a different fit that trained something is there (and no
            ``overwrite``), or this one trained with other code.
    """
    if catalog is None:
        return FitPlan(None, None, False)
    fit_id = catalog.find_fit(signature) if signature is not None else None
    if fit_id is not None:
        stored = catalog.fit_code(fit_id)
        changed = stored is not None and stored != code
        hops = catalog.done_hop_count(fit_id)
        if not changed or hops == 0 or allow_changed_code:
            return FitPlan(fit_id, None, changed)
        if overwrite:
            return FitPlan(None, fit_id, False)
        status = catalog.fit(fit_id)["status"]
        raise ParamsError(
            f"{run_dir} holds this fit (fit {fit_id}, {status}, {hops} hops done) "
            "trained with other code: a method or attribute of the Minibatch spec changed "
            "since, and going on would mix the two versions in one fit. Pass "
            "allow_changed_code=True to go on with the new code anyway, or "
            f"overwrite=True or a new output_dir to start over {_CLI_FLAGS}."
        )
    latest = catalog.latest_fit()
    if latest is None:
        return FitPlan(None, None, False)
    hops = catalog.done_hop_count(latest["fit_id"])
    if hops and not overwrite:
        data = " (on other data: the ETL's inputs changed)" if signature is None else ""
        raise ParamsError(
            f"{run_dir} already holds a different fit (fit {latest['fit_id']}, "
            f"{latest['status']}, {hops} hops done){data}: other grid, epochs, seed, "
            "policy, search, workers, spec class or data. Use a new output_dir to keep it, or "
            "pass overwrite=True to discard it (cerebro: --output, --overwrite); or "
            "repeat that fit's own call to continue it."
        )
    return FitPlan(None, latest["fit_id"], False)


def open_fit(
    catalog: Catalog,
    plan: FitPlan,
    run_dir: Path,
    signature: str,
    code: str,
    planned: int,
    workers: int,
) -> int:
    """Carry out ``plan``: the id of the fit to run, created (with no model yet: its
    search asks for them) when there is none."""
    if plan.fit_id is not None:
        if plan.code_changed:
            catalog.set_fit_code(plan.fit_id, code)
        return plan.fit_id
    if plan.replace is not None:
        catalog.delete_fit(plan.replace)
        shutil.rmtree(run_dir / "models", ignore_errors=True)
    shutil.rmtree(run_dir / SEARCH_DIR, ignore_errors=True)  # a study no fit owns any more
    # "walk": how the fixed policy orders a model's hops (a fit created before walks were
    # independent of the workers has none, and resumes with the old one).
    config = {"models": planned, "workers": workers, "code": code, "walk": "partitions"}
    return catalog.create_fit(signature, config, [])
