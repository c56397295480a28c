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

    @property
    def table(self) -> pd.DataFrame:
        """One row per model: id, hyperparameters, last epoch's metrics, status."""
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
            row["status"] = model["status"]
            row["error"] = model["error"]
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def best(self) -> dict[str, Any]:
        """The best model by the objective at its last epoch (ties: lowest model id).

        Raises:
            ValueError: no model has a value for the objective (every model failed, or the
                metric is not one the spec returns).
        """
        table = self.table
        if self.objective not in table.columns or table[self.objective].isna().all():
            have = sorted(c for c in table.columns if c.startswith(("train_", "val_")))
            raise ValueError(
                f"no model has a value for the objective {self.objective!r}; metrics "
                f"recorded: {have or 'none (did every model fail? see result.table)'}"
            )
        ok = table.dropna(subset=[self.objective])
        ok = ok.sort_values(
            [self.objective, "model_id"], ascending=[self.mode == "min", True], kind="stable"
        )
        best = ok.iloc[0]
        model = next(m for m in self._models if m["model_id"] == best["model_id"])
        return {
            "model_id": best["model_id"],
            "hyperparams": json.loads(model["hyperparams"]),
            "objective": self.objective,
            "value": float(best[self.objective]),
            "metrics": {
                k: float(v)
                for k, v in best.items()
                if k.startswith(("train_", "val_")) and pd.notna(v)
            },
            "checkpoint": model["checkpoint"],
        }

    def __repr__(self) -> str:
        return (
            f"FitResult(fit_id={self.fit_id}, models={len(self._models)}, "
            f"status={self.status!r}, objective={self.objective!r})"
        )
