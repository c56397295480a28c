"""A fit's settings as one checked, typed object: what ``run_fit`` was called with.

``run_fit``'s keyword arguments are checked once into :class:`FitSettings`; the same object
gives the fit's identity (:meth:`FitSettings.signature`, NOTE [ fit identity ] in
``_rundir.py``), the record that ``resume`` reads back (:meth:`FitSettings.to_json`), and
the search that asks for the fit's models (:meth:`FitSettings.make_search`).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from cerebro._atomic import write_atomic
from cerebro.errors import ParamsError
from cerebro.scheduler import POLICIES
from cerebro.search import GridSearch, Search, Space, grid_points, parse_space
from cerebro.stopping import EarlyStopping, OptunaPruner, Stopper, parse_early_stopping
from cerebro.stopping._config import from_json as stopping_from_json

__all__ = ["ON_ERROR", "PARALLELISM", "FitSettings", "positive_int"]

ON_ERROR = ("continue", "stop")
PARALLELISM = ("ddp", "fsdp", "auto")  # NOTE [ choosing the parallelism ] in worker/_trial
_NAMED = ("grid", "random", "tpe")


# NOTE [ same bits at any scale ]
# A fit's models are functions of the seed, the data's partitions and the spec, not of the
# workers: each model walks the partitions in an order of (seed, model, epoch) only (NOTE
# [ Walks independent of the workers ] in the scheduler), each hop's rows and minibatches
# depend on (seed, model, epoch, partition), and metrics are summed in partition order.
# What is left is the numerics of a hop: torch's CPU kernels split work by the intra-op
# thread count and round differently with another one, and some GPU kernels are
# nondeterministic. So deterministic=True runs every hop with ``threads_per_hop`` threads
# (default 1) on every worker, whatever its cores, and torch's deterministic algorithms;
# with the fixed policy (the only one whose walks are fixed) the same fit then gives the
# same bits on 1, 2 or 8 workers, local or Ray. Without it a worker uses its share of the
# cores (fastest) and results are the same for the same worker count.


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1; a ``TypeError`` or ``ParamsError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    if value < 1:
        raise ParamsError(f"{name} must be at least 1, got {value}.")
    return value


def _search_name(search: Any) -> tuple[str, Any]:
    """``("grid" | "random" | "tpe", None)`` or ``("sampler:<Class>", instance)``."""
    if isinstance(search, str):
        if search not in _NAMED:
            from cerebro.search._optuna import unknown_search  # imports no optuna

            raise unknown_search(search)
        return search, None
    import optuna

    if isinstance(search, optuna.samplers.BaseSampler):
        return f"sampler:{type(search).__name__}", search
    raise TypeError(
        f"search must be 'grid', 'random', 'tpe' or an optuna.samplers.BaseSampler, got "
        f"{type(search).__name__} ({search!r:.60})."
    )


def _sampler_key(sampler: Any) -> str:
    """NOTE [ a sampler's identity ]
    A sampler instance is part of what makes a search this search: its class and its
    settings (TPE's ``n_startup_trials``, its seed...), taken as the hash of its pickle as
    the user passed it, before it asked anything (Optuna's samplers pickle the same for
    the same settings). A resumed search reads this key from the run's record, since the
    sampler it restores has asked since and pickles otherwise."""
    try:
        data = pickle.dumps(sampler)
    except Exception:  # noqa: BLE001 - a sampler holding a lambda: cloudpickle takes it
        data = cloudpickle.dumps(sampler)
    return hashlib.sha256(data).hexdigest()[:16]


_PRUNER = "pruner.pkl"
_RULE = "parallelism.pkl"  # a per-model parallelism function
_PER_MODEL = "per model"  # how the record names one
DETERMINISTIC_GENERATION = 8  # a deterministic adaptive search's max_live_models default


def _load_kept(search_dir: Path, name: str, what: str) -> Any:
    """An object a fit keeps in its search folder for resume (a pruner, a parallelism
    function); ``what`` names it and says how to run the fit without it."""
    try:
        return pickle.loads((search_dir / name).read_bytes())
    except FileNotFoundError:
        raise ParamsError(f"{search_dir} holds no saved {what}") from None


def _load_rule(search_dir: Path) -> Any:
    return _load_kept(
        search_dir,
        _RULE,
        f"parallelism function ({_RULE}): run the fit again with it (parallelism=...).",
    )


def _load_pruner(search_dir: Path) -> Any:
    return _load_kept(
        search_dir,
        _PRUNER,
        f"pruner ({_PRUNER}): this fit's early stopping cannot be resumed; run it again "
        "with the pruner instance (early_stopping=...).",
    )


@dataclass(frozen=True)
class FitSettings:
    """The checked arguments of one fit (see ``Experiment.run_fit`` for each)."""

    space: Space
    num_epochs: int
    seed: int = 1
    policy: str = "fixed"
    on_error: str = "continue"
    objective: str | None = None
    mode: str = "min"
    search: str = "grid"  # "grid", "random", "tpe" or "sampler:<Class>"
    num_models: int | None = None
    max_live_models: int | None = None
    deterministic: bool = False
    sampler: Any = field(default=None, compare=False, repr=False)  # search="sampler:..."
    sampler_key: str | None = None  # the sampler as given: NOTE [ a sampler's identity ]
    early_stopping: EarlyStopping | None = None
    threads_per_hop: int | None = None  # None: the worker's (cores / workers)
    # on several-device workers: "ddp", "fsdp", "auto", or a function of a model's
    # hyperparameters that says which (kept in the search folder for resume)
    parallelism: Any = field(default="ddp", compare=False)

    @classmethod
    def check(
        cls,
        param_grid: Any,
        num_epochs: Any,
        seed: Any = 1,
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
        parallelism: Any = "ddp",
    ) -> FitSettings:
        """Check every argument before any work; errors name the argument and the fix."""
        name, sampler = _search_name(search)
        space = (
            param_grid
            if isinstance(param_grid, Space)
            else parse_space(param_grid, search="grid" if name == "grid" else "sampler")
        )
        if name == "grid" and not space.is_grid:
            raise ParamsError(
                "this space has distributions: search='grid' can only enumerate lists."
            )
        num_epochs = positive_int("num_epochs", num_epochs)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r}).")
        seed = int(seed)  # a numpy integer too: the seed is stored as JSON
        if policy not in POLICIES:
            raise ParamsError(f"policy must be one of {POLICIES}, got {policy!r}.")
        if on_error not in ON_ERROR:
            raise ParamsError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
        if mode not in ("min", "max"):
            raise ParamsError(f"mode must be 'min' or 'max', got {mode!r}.")
        if objective is not None and not isinstance(objective, str):
            raise TypeError(
                f"objective must be a metric name such as 'val_loss', got {objective!r}."
            )
        if name == "grid":
            if num_models is not None:
                raise ParamsError(
                    "num_models is for search='random', 'tpe' or a sampler: search='grid' "
                    f"trains every point of the grid ({len(grid_points(space))} here)."
                )
        elif num_models is None:
            raise ParamsError(
                f"search={search!r} needs num_models=N, the number of models to try."
            )
        else:
            num_models = positive_int("num_models", num_models)
        if max_live_models is not None:
            max_live_models = positive_int("max_live_models", max_live_models)
        if threads_per_hop is not None:
            threads_per_hop = positive_int("threads_per_hop", threads_per_hop)
        if deterministic and policy != "fixed":
            raise ParamsError(
                f"deterministic=True needs policy='fixed' (got {policy!r}): only its walks "
                "over the partitions are fixed in advance; the others follow timing."
            )
        if deterministic and threads_per_hop is None:
            threads_per_hop = 1  # NOTE [ same bits at any scale ]
        if not callable(parallelism) and parallelism not in PARALLELISM:
            raise ParamsError(
                f"parallelism must be one of {PARALLELISM} or a function of a model's "
                f"hyperparameters that returns one, got {parallelism!r}: how a worker of "
                "several devices (devices_per_worker) trains a model."
            )
        rule = parse_early_stopping(early_stopping, num_epochs)
        if rule is not None and deterministic and name not in ("grid", "random"):
            raise ParamsError(
                "deterministic=True with an adaptive sampler does not combine with "
                "early_stopping yet: a stopped model is told to the sampler at a time that "
                "depends on the other models. For a reproducible search with early stopping "
                "use search='random' (its draws never depend on results) with "
                "early_stopping='sha'."
            )
        return cls(
            space,
            num_epochs,
            seed,
            policy,
            on_error,
            objective,
            mode,
            name,
            num_models,
            max_live_models,
            bool(deterministic),
            sampler,
            None if sampler is None else _sampler_key(sampler),
            rule,
            threads_per_hop,
            parallelism,
        )

    @property
    def grid_json(self) -> Any:
        """The space as recorded: a single grid as ``{name: [values]}`` (as fits always
        recorded it), anything else as :meth:`Space.to_json`."""
        if len(self.space.parts) == 1 and self.space.is_grid:
            return self.space.parts[0]
        return self.space.to_json()

    def planned_models(self) -> int:
        """How many models the fit trains in all."""
        if self.search == "grid":
            return len(grid_points(self.space))
        assert self.num_models is not None
        return self.num_models

    def max_live(self, workers: int) -> int | None:
        """Models training at once: ``max_live_models``; for a sampler by default twice
        the workers (enough that none idles while a model is runnable, few enough that
        each result is told before most asks), or ``DETERMINISTIC_GENERATION`` for a
        deterministic adaptive one; for the grid every model."""
        if self.max_live_models is not None:
            return self.max_live_models
        if self.search == "grid":
            return None
        if self.deterministic and self.search != "random":
            # generations of asks: a size of the workers would give other models on
            # another worker count (NOTE [ same bits at any scale ])
            return DETERMINISTIC_GENERATION
        return 2 * workers

    def to_json(self) -> dict[str, Any]:
        """What ``resume`` needs (``DIR/experiment.json``); :meth:`from_json` reads it."""
        out: dict[str, Any] = {
            "param_grid": self.grid_json,
            "num_epochs": self.num_epochs,
            "seed": self.seed,
            "policy": self.policy,
            "on_error": self.on_error,
            "objective": self.objective,
            "mode": self.mode,
        }
        out |= self._search_fields()
        if self.sampler_key is not None:
            out["sampler_key"] = self.sampler_key
        if callable(self.parallelism):  # (not in the signature: it changes how, not what)
            out["parallelism"] = _PER_MODEL
        elif self.parallelism != "ddp":
            out["parallelism"] = self.parallelism
        return out

    def _search_fields(self) -> dict[str, Any]:
        """The search's and early stopping's settings, in the record and the signature;
        none for a plain grid fit, whose record and signature stay what they were before
        searches existed."""
        out: dict[str, Any] = {}
        if self.search != "grid" or self.max_live_models is not None:
            out = {
                "search": self.search,
                "num_models": self.num_models,
                "max_live_models": self.max_live_models,
                "deterministic": self.deterministic,
            }
        if self.deterministic:
            out["deterministic"] = True
        if self.threads_per_hop is not None:
            out["threads_per_hop"] = self.threads_per_hop
        if self.early_stopping is not None:
            out["early_stopping"] = self.early_stopping.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], search_dir: Path) -> FitSettings:
        """Read back :meth:`to_json`; a sampler instance comes from ``search_dir``."""
        grid = d["param_grid"]
        space = Space.from_json(grid if isinstance(grid, list) else [grid])
        search = d.get("search", "grid")
        sampler = None
        if search.startswith("sampler:"):
            from cerebro.search._optuna import load_sampler

            sampler = load_sampler(search_dir)
        stopping = d.get("early_stopping")
        pruner = None
        if stopping is not None and stopping["type"].startswith("pruner:"):
            pruner = _load_pruner(search_dir)
        return cls(
            space,
            d["num_epochs"],
            d["seed"],
            d["policy"],
            d["on_error"],
            d["objective"],
            d["mode"],
            search,
            d.get("num_models"),
            d.get("max_live_models"),
            bool(d.get("deterministic", False)),
            sampler,
            d.get("sampler_key"),
            stopping_from_json(stopping, pruner),
            d.get("threads_per_hop"),
            _load_rule(search_dir)
            if d.get("parallelism") == _PER_MODEL
            else d.get("parallelism", "ddp"),
        )

    def signature(self, spec: object, data: str, workers: int) -> str:
        """What makes a fit this fit (NOTE [ fit identity ]): a grid fit's is what it
        always was, so runs made before searches existed still resume."""
        sig: dict[str, Any] = {
            "grid": self.grid_json,
            "num_epochs": self.num_epochs,
            "seed": self.seed,
            "policy": self.policy,
            "spec": type(spec).__qualname__,
            "data": data,
            "workers": workers,
        }
        sig |= self._search_fields()
        if self.sampler_key is not None:
            sig["sampler"] = self.sampler_key
        return json.dumps(sig, sort_keys=True)

    def make_stopper(self, search_dir: Path) -> Stopper | None:
        """The fit's early stopping (None without); a pruner instance is kept in
        ``search_dir`` for resume."""
        rule = self.early_stopping
        if rule is None:
            return None
        if isinstance(rule, OptunaPruner) and not (search_dir / _PRUNER).is_file():
            write_atomic(search_dir / _PRUNER, cloudpickle.dumps(rule.pruner))
        return rule.make(self.num_epochs, self.planned_models(), self.mode)

    def parallelism_rule(self, search_dir: Path) -> Any:
        """The fit's ``parallelism``; a per-model function is kept in ``search_dir`` for
        resume, as a pruner is."""
        if callable(self.parallelism) and not (search_dir / _RULE).is_file():
            write_atomic(search_dir / _RULE, cloudpickle.dumps(self.parallelism))
        return self.parallelism

    def make_search(self, search_dir: Path, workers: int) -> Search:
        """The search that asks for this fit's models (its study kept in ``search_dir``)."""
        live = self.max_live(workers)
        if self.search == "grid":
            return GridSearch(self.space, live)
        from cerebro.search._optuna import OptunaSearch, make_sampler

        sampler = (
            self.sampler if self.sampler is not None else make_sampler(self.search, self.seed)
        )
        assert self.num_models is not None and live is not None
        return OptunaSearch(
            self.space,
            sampler,
            num_models=self.num_models,
            max_live=live,
            mode=self.mode,
            search_dir=search_dir,
            # random draws never depend on results: no generations needed
            deterministic=self.deterministic and self.search != "random",
        )
