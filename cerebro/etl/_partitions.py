"""How many partitions the ETL writes when the user names no number.

The partition count is a property of the data, not of the cluster (NOTE [ same bits at any
scale ] in ``cerebro/_settings.py``): a model's walk is over partitions, so the same data in
the same partitions trains the same models on any number of workers up to the count.
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["ROWS_PER_PARTITION", "count_lines", "default_partitions", "owner"]

ROWS_PER_PARTITION = 10_000  # train rows per partition by default
MAX_PARTITIONS = 64


def owner(partition: int, workers: int) -> int:
    """The worker (0-based) that holds ``partition`` among ``workers``: the one rule, for
    the ETL's placement, the fit's hops and the evaluations alike (DESIGN §6)."""
    return partition % workers


def default_partitions(train_rows: int, workers: int) -> int:
    """One partition per ``ROWS_PER_PARTITION`` train rows, at most ``MAX_PARTITIONS``, at
    least one per worker (each worker must hold one). It depends on the workers only for
    data too small to give each one a partition; pass ``run_etl(partitions=P)`` to fix it."""
    return max(workers, min(MAX_PARTITIONS, math.ceil(train_rows / ROWS_PER_PARTITION)))


def count_lines(path: Path) -> int:
    """Newlines in ``path`` (a CSV's rows plus its header), read in 1 MiB blocks."""
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
    return n
