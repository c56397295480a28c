"""Parallel preprocessing of CSV splits into partitions (``row_prep`` over a process pool)."""

from __future__ import annotations

from cerebro.etl._run import MANIFEST, load_manifest, run_etl

__all__ = ["MANIFEST", "load_manifest", "run_etl"]
