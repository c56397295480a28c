"""Parallel preprocessing of CSV splits into partitions (``row_prep`` over a process pool)."""

from __future__ import annotations

from cerebro.etl._partitions import count_lines, default_partitions, owner
from cerebro.etl._run import MANIFEST, load_manifest, run_etl

__all__ = [
    "MANIFEST",
    "count_lines",
    "default_partitions",
    "load_manifest",
    "owner",
    "run_etl",
]
