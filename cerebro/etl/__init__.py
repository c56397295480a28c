"""Parallel preprocessing of CSV splits into partitions (``row_prep`` over a process pool)."""

from __future__ import annotations

from cerebro.etl._partitions import count_lines, default_partitions, owner
from cerebro.etl._plan import (
    MANIFEST,
    check_fraction,
    fingerprint,
    load_manifest,
    reusable_manifest,
)
from cerebro.etl._run import run_etl

__all__ = [
    "MANIFEST",
    "check_fraction",
    "count_lines",
    "default_partitions",
    "fingerprint",
    "load_manifest",
    "owner",
    "reusable_manifest",
    "run_etl",
]
