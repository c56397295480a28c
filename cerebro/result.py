"""What a fit returns: a table of models, the best one, and the learning-curve history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from cerebro.catalog import Catalog

__all__ = ["FitResult"]


class FitResult:
    """The results of one fit, read from its catalog (so it also works after a resume).

    Args:
        catalog_path: the run's ``catalog.sqlite``.
        fit_id: which fit of that catalog.
        objective: metric that ranks models, ``"<split>_<name>"``, e.g. ``"val_loss"``.
        mode: ``"min"`` or ``"max"``.
    """

    def __init__(
        self, catalog_path: Path, fit_id: int, objective: str | None = None, mode: str = "min"
    ):
        self.catalog_path = Path(catalog_path)
        self.fit_id = fit_id
        cat = Catalog(self.catalog_path, readonly=True)
        try:
            self._models = [dict(r) for r in cat.models(fit_id)]
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
        finally:
            cat.close()
        self.config: dict[str, Any] = json.loads(fit["config"])
        self.status: str = fit["status"]
        self.objective = objective or self._default_objective()
        self.mode = mode
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

    def _default_objective(self) -> str:
        names = {f"{m['split']}_{m['name']}" for m in self._metrics}
        for candidate in ("val_loss", "train_loss"):
            if candidate in names:
                return candidate
        return sorted(names)[0] if names else "val_loss"

    @property
    def history(self) -> pd.DataFrame:
        """One row per model × epoch × split × metric."""
        cols = ["model_id", "epoch", "split", "metric", "value"]
        rows = [
            (m["model_id"], m["epoch"], m["split"], m["name"], m["value"]) for m in self._metrics
        ]
        return pd.DataFrame(rows, columns=cols)

    def _best_epoch(self, model_id: str) -> tuple[int, float] | None:
        """(epoch, value) where this model's objective was best; ties: earliest epoch."""
        split, _, name = self.objective.partition("_")
        values = [
            (m["epoch"], m["value"])
            for m in self._metrics
            if m["model_id"] == model_id
            and m["split"] == split
            and m["name"] == name
            and m["value"] is not None
        ]
        if not values:
            return None
        sign = 1 if self.mode == "min" else -1
        return min(values, key=lambda ev: (sign * ev[1], ev[0]))

    @property
    def table(self) -> pd.DataFrame:
        """One row per model: hyperparameters, last epoch's metrics, the best value of the
        objective and its epoch, training seconds (sum of its hops) and status."""
        last: dict[str, int] = {}
        for m in self._metrics:
            last[m["model_id"]] = max(last.get(m["model_id"], -1), m["epoch"])
        rows = []
        for model in self._models:
            mid = model["model_id"]
            row: dict[str, Any] = {"model_id": mid, **json.loads(model["hyperparams"])}
            row["epochs"] = last.get(mid, -1) + 1
            for m in self._metrics:
                if m["model_id"] == mid and m["epoch"] == last.get(mid):
                    row[f"{m['split']}_{m['name']}"] = m["value"]
            best = self._best_epoch(mid)
            row[f"best_{self.objective}"] = best[1] if best else None
            row["best_epoch"] = best[0] if best else None
            row["train_seconds"] = round(self._seconds.get(mid, 0.0), 3)
            row["status"] = model["status"]
            row["error"] = model["error"]
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def best(self) -> dict[str, Any]:
        """The model with the best objective at any epoch (ties: lowest model id).

        Returns:
            ``model_id``, ``hyperparams``, ``objective``, ``value``, ``epoch`` (where the
            value was reached), ``metrics`` (all of that epoch) and ``checkpoint`` (the
            model's state at the end of that epoch).

        Raises:
            ValueError: no model has a value for the objective (every model failed, or the
                metric is not one the spec returns).
        """
        sign = 1 if self.mode == "min" else -1
        found = [
            (sign * b[1], m["model_id"], b[0], m)
            for m in self._models
            if (b := self._best_epoch(m["model_id"])) is not None
        ]
        if not found:
            have = sorted({f"{m['split']}_{m['name']}" for m in self._metrics})
            raise ValueError(
                f"no model has a value for the objective {self.objective!r}; metrics "
                f"recorded: {have or 'none (did every model fail? see result.table)'}"
            )
        _, model_id, epoch, model = min(found, key=lambda t: (t[0], t[1]))
        metrics = {
            f"{m['split']}_{m['name']}": float(m["value"])
            for m in self._metrics
            if m["model_id"] == model_id and m["epoch"] == epoch and m["value"] is not None
        }
        return {
            "model_id": model_id,
            "hyperparams": json.loads(model["hyperparams"]),
            "objective": self.objective,
            "value": metrics[self.objective],
            "epoch": epoch,
            "metrics": metrics,
            "checkpoint": self._checkpoints.get((model_id, epoch), model["checkpoint"]),
        }

    def __repr__(self) -> str:
        return (
            f"FitResult(fit_id={self.fit_id}, models={len(self._models)}, "
            f"status={self.status!r}, objective={self.objective!r})"
        )
