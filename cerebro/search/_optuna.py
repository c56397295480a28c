"""Search with any Optuna sampler through its ask-and-tell interface.

Each asked trial is one model (``m<trial number>``). The study lives in the run directory
as an Optuna journal file (``DIR/search/study.log``) that ``optuna.load_study`` and
``optuna-dashboard`` read as they are, and the sampler is pickled after every ask
(``DIR/search/sampler.pkl``, Optuna's documented way to keep a sampler's state), so a
resumed search asks no trial twice and draws what an uninterrupted one would.

NOTE [ deterministic asks ]
An adaptive sampler (TPE) draws from the results it has, so what it asks depends on which
models finished first, hence on timing. With ``deterministic=True`` trials are asked in
generations of ``generation`` models: trial *n* (generation *n // generation*) is asked only
once every trial of the earlier generations has been told, and each generation's asks are
made one after another with nothing told in between. Then what the sampler has seen at each
ask depends only on the order of asks and the results, never on timing: the same seed gives
the same configurations and, with the fixed policy, the same weights. The cost: at each
generation's end the workers wait for its slowest model (bench/search.py measures it).
Random search needs none of this: its draws never depend on results.

NOTE [ sampler lag ]
The sampler is pickled right after ``study.ask``. A driver killed between the two (a few
milliseconds) leaves the study one trial ahead of the pickled sampler: that trial is kept
(its model is trained), and the restored sampler's next draw is the one it would have made
for it; a warning says so. Everything else is exact.
"""

from __future__ import annotations

import logging
import math
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cerebro._atomic import write_atomic
from cerebro.errors import ParamsError
from cerebro.params import ModelConfig
from cerebro.search._base import Search
from cerebro.search._space import Choice, Distribution, FloatRange, IntRange, Space
from cerebro.statuses import FINAL, ModelStatus

__all__ = [
    "SPACE_KEY",
    "OptunaSearch",
    "load_sampler",
    "make_sampler",
    "open_study",
    "study_storage",
    "unknown_search",
]

SPACE_KEY = "cerebro_subspace"  # the trial parameter choosing a sub-space of a list of dicts
_STUDY = "cerebro"


def make_sampler(search: Any, seed: int) -> Any:
    """The Optuna sampler for ``search``: ``"random"``, ``"tpe"`` (seeded from the fit's
    seed) or an ``optuna.samplers.BaseSampler`` instance, used as it is."""
    import optuna

    if isinstance(search, optuna.samplers.BaseSampler):
        return search
    if search == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise unknown_search(search)


def unknown_search(search: Any) -> ParamsError:
    """The error for a ``search=`` name that is none of those Cerebro knows."""
    return ParamsError(
        f"search must be 'grid', 'random', 'tpe' or an Optuna sampler instance (e.g. "
        f"optuna.samplers.QMCSampler(seed=1)), got {search!r}."
    )


def study_storage(search_dir: Path) -> Any:
    """The journal storage of the study in ``search_dir`` (Optuna reads it as is)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(search_dir / "study.log")))


def _suggest(trial: Any, name: str, axis: list[Any] | Distribution) -> Any:
    if isinstance(axis, list):
        axis = Choice(tuple(axis))
    if isinstance(axis, FloatRange):
        return trial.suggest_float(name, axis.low, axis.high, step=axis.step, log=axis.log)
    if isinstance(axis, IntRange):
        return trial.suggest_int(name, axis.low, axis.high, step=axis.step, log=axis.log)
    assert isinstance(axis, Choice)
    return axis.decode(trial.suggest_categorical(name, axis.to_optuna().choices))


def open_study(search_dir: Path, fit_id: int) -> Any:
    """The study a search left in ``search_dir`` (fit ``fit_id``'s, for the message).

    Raises:
        ValueError: there is none (a grid fit).
    """
    import optuna

    if not (search_dir / "study.log").is_file():
        raise ValueError(
            f"fit {fit_id} has no Optuna study ({search_dir / 'study.log'} missing): it is a "
            "grid fit; search='random', 'tpe' or a sampler keep one."
        )
    return optuna.load_study(study_name=_STUDY, storage=study_storage(search_dir))


def _read_sampler(search_dir: Path) -> tuple[int, Any]:
    with open(search_dir / "sampler.pkl", "rb") as f:
        asked, sampler = pickle.load(f)
    return int(asked), sampler


def load_sampler(search_dir: Path) -> Any:
    """The sampler a search in ``search_dir`` left (for resume of ``search=<instance>``).

    Raises:
        ParamsError: none was saved there.
    """
    try:
        return _read_sampler(search_dir)[1]
    except FileNotFoundError:
        raise ParamsError(
            f"{search_dir} holds no saved sampler (sampler.pkl): this fit's search cannot be "
            "resumed; run it again with the sampler instance (search=...)."
        ) from None


def _trial_name(parts: Sequence[Any], i: int, name: str) -> str:
    """The Optuna parameter of ``name`` in sub-space ``i``: the name itself in a single
    space; ``s<i>.<name>`` in a list of sub-spaces, which may give one name different ranges
    (Optuna keeps one distribution per name)."""
    return name if len(parts) == 1 else f"s{i}.{name}"


class OptunaSearch(Search):
    """``num_models`` trials of ``sampler`` over ``space``, at most ``max_live`` at once.

    Args:
        space: the checked space.
        sampler: an Optuna sampler (see :func:`make_sampler`).
        num_models: trials to ask in all.
        max_live: models training at once (a new trial is asked when one ends).
        mode: ``"min"`` or ``"max"``: the study's direction.
        search_dir: where the study and the sampler are kept (created).
        deterministic: NOTE [ deterministic asks ], generations of ``max_live`` trials.
    """

    def __init__(
        self,
        space: Space,
        sampler: Any,
        *,
        num_models: int,
        max_live: int,
        mode: str,
        search_dir: Path,
        deterministic: bool = False,
    ):
        import optuna

        self.space = space
        self.num_models = num_models
        self.max_live = self.generation = max_live
        self.deterministic = deterministic
        self._dir = Path(search_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._asked_by_sampler = 0
        if (self._dir / "sampler.pkl").is_file():
            self._asked_by_sampler, sampler = _read_sampler(self._dir)
        self.sampler = sampler
        if self._asked_by_sampler == 0:
            self._save_sampler(0)  # a sampler instance the user passed is kept for resume
        logging.getLogger("optuna").setLevel(logging.WARNING)  # no line per trial
        self.study = optuna.create_study(
            study_name=_STUDY,
            storage=study_storage(self._dir),
            sampler=sampler,
            direction="minimize" if mode == "min" else "maximize",
            load_if_exists=True,
        )
        self._trials: dict[int, Any] = {}  # trial number -> live optuna Trial (this session)
        self._told: set[int] = set()
        self._pending: list[ModelConfig] = []  # asked before a kill, not yet in the catalog
        for t in self.study.get_trials(deepcopy=False):
            if t.state.is_finished():
                self._told.add(t.number)

    @property
    def asked(self) -> int:
        """Trials asked so far (this session and earlier ones)."""
        return len(self.study.get_trials(deepcopy=False))

    def _config(self, number: int, raw: dict[str, Any]) -> ModelConfig:
        """The model of a trial asked in an earlier session, from its stored params."""
        parts = self.space.parts
        i = raw.get(SPACE_KEY, 0)
        params = {}
        for name, axis in parts[i].items():
            choice = Choice(tuple(axis)) if isinstance(axis, list) else axis
            params[name] = choice.decode(raw[_trial_name(parts, i, name)])
        return ModelConfig(f"m{number:03d}", params)

    def ask(self) -> ModelConfig | None:
        if self._pending:
            return self._pending.pop(0)
        n = self.asked
        if n >= self.num_models:
            return None
        if self.deterministic:
            first_of_generation = n - n % self.generation
            if any(i not in self._told for i in range(first_of_generation)):
                return None
        trial = self.study.ask()
        parts = self.space.parts
        i = trial.suggest_categorical(SPACE_KEY, list(range(len(parts)))) if len(parts) > 1 else 0
        params = {
            name: _suggest(trial, _trial_name(parts, i, name), axis)
            for name, axis in parts[i].items()
        }
        self._trials[trial.number] = trial
        trial.set_user_attr("model_id", f"m{trial.number:03d}")
        self._save_sampler(trial.number + 1)
        return ModelConfig(f"m{trial.number:03d}", params)

    def _save_sampler(self, asked: int) -> None:
        write_atomic(self._dir / "sampler.pkl", pickle.dumps((asked, self.sampler)))
        self._asked_by_sampler = asked

    @property
    def finished(self) -> bool:
        return not self._pending and self.asked >= self.num_models

    def tell(self, model_id: str, value: float | None, status: str) -> None:
        import optuna

        number = int(model_id.removeprefix("m"))
        if number in self._told:
            return
        ok = status == ModelStatus.DONE and value is not None and math.isfinite(value)
        trial = self._trials.pop(number, None)
        if trial is not None:
            trial.set_user_attr("cerebro_status", str(status))
        if ok:
            self.study.tell(number, value, state=optuna.trial.TrialState.COMPLETE)
        elif status == ModelStatus.STOPPED:  # Optuna gives a pruned trial its last reported value
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
        self._told.add(number)

    def report(self, model_id: str, epochs: int, value: float) -> None:
        import optuna

        number = int(model_id.removeprefix("m"))
        if number in self._told or not math.isfinite(value):
            return
        trial = self._trials.get(number)
        if trial is None:  # asked by an earlier session of this fit
            storage = self.study._storage
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                self.study._study_id, number
            )
            trial = self._trials[number] = optuna.trial.Trial(self.study, trial_id)
        trial.report(value, epochs)

    def restore(self, models: Sequence[tuple[ModelConfig, str, float | None]]) -> None:
        known = {c.model_id for c, _, _ in models}
        for config, status, value in models:
            if status in FINAL:
                self.tell(config.model_id, value, status)  # an end the study missed
        trials = self.study.get_trials(deepcopy=False)
        lag = len(trials) - self._asked_by_sampler
        if lag > 0:
            warnings.warn(
                f"the search's sampler state in {self._dir} is {lag}"
                " ask(s) behind its study (the driver was killed while asking); the next draw "
                "may repeat the last one's randomness (NOTE [ sampler lag ]).",
                stacklevel=2,
            )
        for t in trials:
            model_id = f"m{t.number:03d}"
            if model_id in known or t.state.is_finished():
                continue
            # Asked before the kill but never recorded as a model: train it now.
            self._pending.append(self._config(t.number, dict(t.params)))
