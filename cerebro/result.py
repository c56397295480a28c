"""What a fit returns: a table of models, the best one, and the learning-curve history.

Epochs a user reads here are 1-based (``epoch`` 1 is the first pass over the data); the
catalog counts from 0 inside. "Best" is NOTE [ one meaning of best ] in ``_ranking.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from cerebro import _ranking
from cerebro.catalog import Catalog
from cerebro.engine.messages import CANDIDATES
from cerebro.params import ask_order
from cerebro.statuses import ModelStatus

__all__ = ["FitResult"]


def _recorded_stopping(signature: str) -> dict[str, Any] | None:
    try:
        sig = json.loads(signature)
    except ValueError:
        return None
    return sig.get("early_stopping") if isinstance(sig, dict) else None


class FitResult:
    """The results of one fit, read from its catalog (so it also works after a resume).

    Args:
        catalog_path: the run's ``catalog.sqlite``.
        fit_id: which fit of that catalog.
        objective: metric that ranks models, ``"<split>_<name>"``, e.g. ``"val_acc"``.
            Default: the one the fit was run with, else a validation metric
            (``val_loss``, else the first ``val_*`` metric whose name contains ``loss``,
            else the first ``val_*`` metric); a train metric only without a validation
            split. :attr:`objective` says which.
        mode: ``"min"`` or ``"max"``; default: the fit's, else ``"min"``.
        include_stopped: let a model early stopping stopped be :attr:`best` (by default
            none can be: its value came from fewer epochs than the others').

    Attributes:
        objective, mode: what ranks the models here (given or chosen as above), the same
            ranking ``cerebro status`` and the report use.
    """

    def __init__(
        self,
        catalog_path: Path,
        fit_id: int,
        objective: str | None = None,
        mode: str | None = None,
        include_stopped: bool = False,
    ):
        self.catalog_path = Path(catalog_path)
        self.include_stopped = include_stopped
        self.fit_id = fit_id
        cat = Catalog(self.catalog_path, readonly=True)
        try:
            self._models = sorted(
                (dict(r) for r in cat.models(fit_id)),
                key=lambda m: ask_order(m["model_id"]),
            )
            self._metrics = [dict(r) for r in cat.metrics(fit_id)]
            self._checkpoints = {
                (r["model_id"], r["epoch"]): r["path"]
                for r in cat.db.execute("SELECT * FROM checkpoints WHERE fit_id=?", (fit_id,))
            }
            self._seconds: dict[str, float] = {}
            for r in cat.db.execute(
                "SELECT model_id, SUM(end - start) FROM hops WHERE fit_id=? AND status='done' "
                "GROUP BY model_id",
                (fit_id,),
            ):
                self._seconds[r[0]] = float(r[1] or 0.0)
            fit = dict(cat.fit(fit_id))
            self._parallelism = cat.parallelism(fit_id)
        finally:
            cat.close()
        self.config: dict[str, Any] = json.loads(fit["config"])
        #: The fit's early-stopping rule as recorded (``{"type": "sha", ...}``), or None.
        self.early_stopping: dict[str, Any] | None = _recorded_stopping(fit["signature"])
        self.status: str = fit["status"]
        names = {f"{m['split']}_{m['name']}" for m in self._metrics}
        self.objective, self.mode = _ranking.choose(
            objective, mode, names, self.catalog_path.parent, fit["signature"]
        )
        self._per_model = _ranking.rank(self._metrics, self.objective, self.mode)
        self._ranked = _ranking.contenders(self._per_model, self._models, include_stopped)
        self.spec: Any = None  # the spec that trained these models, when known

    def load_model(self, model_id: str = "best", spec: Any = None) -> dict[str, Any]:
        """The ``create_model_components`` dict of a model, with its trained state loaded.

        Ready for plain PyTorch outside Cerebro. ``spec`` defaults to the spec this fit ran.

        Raises:
            ValueError: unknown model id, a model with no checkpoint, or no spec to build it.
        """
        import torch

        spec = spec if spec is not None else self.spec
        if spec is None:
            raise ValueError(
                "pass spec=YourSpec(): this result was read from disk, so the "
                "spec that builds the model is not known."
            )
        if model_id == "best":
            model_id = self.best["model_id"]
        model = next((m for m in self._models if m["model_id"] == model_id), None)
        if model is None:
            ids = ", ".join(m["model_id"] for m in self._models)
            raise ValueError(f"unknown model id {model_id!r}; this fit has {ids}.")
        if model["checkpoint"] is None:
            raise ValueError(f"model {model_id} has no checkpoint (status {model['status']}).")
        state = torch.load(model["checkpoint"], map_location="cpu", weights_only=False)
        components = spec.create_model_components(json.loads(model["hyperparams"]))
        for name, sd in state["components"].items():
            components[name].load_state_dict(sd)
        return dict(components)

    @property
    def history(self) -> pd.DataFrame:
        """One row per model × epoch × split × metric; ``epoch`` counts from 1."""
        cols = ["model_id", "epoch", "split", "metric", "value"]
        rows = [
            (m["model_id"], m["epoch"] + 1, m["split"], m["name"], m["value"])
            for m in self._metrics
        ]
        return pd.DataFrame(rows, columns=cols)

    @property
    def table(self) -> pd.DataFrame:
        """One row per model, in the order they were asked: the trial number (the Optuna
        trial's, or the grid point's), hyperparameters, epochs done, last epoch's metrics, the best
        value of the objective (column ``best_<objective>``) and the epoch it was reached
        (``best_epoch``, from 1), training seconds (sum of its hops), status and error.
        With early stopping also ``stopped_epoch``: the epoch (from 1) after which a
        ``stopped`` model stopped, its last; empty for the others. When workers of several
        devices trained: ``parallelism``, how each model's first train hop on one ran
        (``ddp``, ``fsdp``, or ``single``: rank 0 alone); with ``parallelism="auto"``
        also ``trial_single_s``, ``trial_ddp_s``, ``trial_fsdp_s``: each candidate's
        seconds per minibatch in the model's trial, empty where it was not feasible (the
        catalog's ``parallelism`` table says why).

        ``table.attrs`` holds the ``objective`` and ``mode`` that ranked it, and
        ``best_among``: which models may be :attr:`best` (early-stopped ones only with
        ``include_stopped=True``).
        """
        last: dict[str, int] = {}
        for m in self._metrics:
            last[m["model_id"]] = max(last.get(m["model_id"], -1), m["epoch"])
        bests = {b.model_id: b for b in self._per_model}
        stopping = self.early_stopping is not None
        trials = any(c["trials"] for c in self._parallelism.values())
        rows = []
        for model in self._models:
            mid = model["model_id"]
            row: dict[str, Any] = {"model_id": mid, "trial": int(mid.removeprefix("m"))}
            row |= json.loads(model["hyperparams"])
            row["epochs"] = last.get(mid, -1) + 1
            for m in self._metrics:
                if m["model_id"] == mid and m["epoch"] == last.get(mid):
                    row[f"{m['split']}_{m['name']}"] = m["value"]
            best = bests.get(mid)
            row[f"best_{self.objective}"] = best.value if best else None
            row["best_epoch"] = best.epoch + 1 if best else None
            row["train_seconds"] = round(self._seconds.get(mid, 0.0), 3)
            row["status"] = model["status"]
            if stopping:
                row["stopped_epoch"] = (
                    row["epochs"] if model["status"] == ModelStatus.STOPPED else None
                )
            chosen = self._parallelism.get(mid, {})
            if self._parallelism:
                row["parallelism"] = chosen.get("choice")
            if trials:
                for mode in CANDIDATES:
                    t = chosen.get("trials", {}).get(mode)
                    row[f"trial_{mode}_s"] = t if isinstance(t, float) else None
            row["error"] = model["error"]
            rows.append(row)
        table = pd.DataFrame(rows)
        if stopping:
            table["stopped_epoch"] = table["stopped_epoch"].astype("Int64")
        among = "every model" if self.include_stopped else "models early stopping did not stop"
        table.attrs.update(objective=self.objective, mode=self.mode, best_among=among)
        return table

    @property
    def best(self) -> dict[str, Any]:
        """The model with the best objective at any epoch (ties: earliest epoch, then
        lowest model id), leaving out models early stopping stopped unless
        ``include_stopped``.

        Returns:
            ``model_id``, ``hyperparams``, ``objective``, ``mode``, ``value``, ``epoch``
            (where the value was reached, from 1), ``metrics`` (all of that epoch) and
            ``checkpoint`` (the model's state at the end of that epoch).

        Raises:
            ValueError: no model has a value for the objective (every model failed, or the
                metric is not one the spec returns).
        """
        if not self._ranked and self._per_model:
            raise ValueError(
                "early stopping stopped every model that has a value for the objective "
                f"{self.objective!r}, so none may be the best; read FitResult(..., "
                "include_stopped=True).best to rank stopped models too."
            )
        if not self._ranked:
            have = sorted({f"{m['split']}_{m['name']}" for m in self._metrics})
            raise ValueError(
                f"no model has a value for the objective {self.objective!r}; metrics "
                f"recorded: {have or 'none (did every model fail? see result.table)'}"
            )
        top = self._ranked[0]
        model = next(m for m in self._models if m["model_id"] == top.model_id)
        metrics = {
            f"{m['split']}_{m['name']}": float(m["value"])
            for m in self._metrics
            if m["model_id"] == top.model_id and m["epoch"] == top.epoch and m["value"] is not None
        }
        return {
            "model_id": top.model_id,
            "hyperparams": json.loads(model["hyperparams"]),
            "objective": self.objective,
            "mode": self.mode,
            "value": top.value,
            "epoch": top.epoch + 1,
            "metrics": metrics,
            "checkpoint": self._checkpoints.get((top.model_id, top.epoch), model["checkpoint"]),
        }

    def report(self) -> Path:
        """Write this fit's HTML report, ranked by this result's objective and mode.

        The same page as ``cerebro report DIR`` (without the TensorBoard files): a
        summary with the best model, learning curves, hyperparameter plots, the hop
        timeline and a table of every model, in ``DIR/report.html`` with its plots in
        ``DIR/plots/`` (see :func:`cerebro.report.write_report`).

        Returns:
            The path of ``report.html``.

        Example:
            >>> result = exp.run_fit(spec, grid, num_epochs=5)  # doctest: +SKIP
            >>> result.report()  # doctest: +SKIP
            PosixPath('runs/digits/report.html')
        """
        from cerebro.report import write_report

        return write_report(self.catalog_path.parent, self.objective, self.mode)

    @property
    def study(self) -> Any:
        """The fit's Optuna study (``search="random"``, ``"tpe"`` or a sampler), read from
        ``DIR/search/study.log``: ``optuna.visualization`` and ``optuna-dashboard`` work on
        it. Trial *n* is model ``m<n>``; a trial's value is the model's best objective.

        Raises:
            ValueError: a grid fit (no study).
        """
        from cerebro.search._optuna import open_study

        return open_study(self.catalog_path.parent / "search", self.fit_id)

    def __repr__(self) -> str:
        return (
            f"FitResult(fit_id={self.fit_id}, models={len(self._models)}, "
            f"status={self.status!r}, objective={self.objective!r}, mode={self.mode!r})"
        )
