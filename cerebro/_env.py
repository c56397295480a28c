"""Sizes set by environment variables, checked with a message that names the variable."""

from __future__ import annotations

import math
import os


def megabytes(name: str, default: float) -> int:
    """Bytes from the variable ``name``, given in megabytes (``0`` turns its feature off)."""
    raw = os.environ.get(name, str(default))
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(
            f"{name} must be a number of megabytes (0 turns it off), got {raw!r}"
        ) from None
    if not math.isfinite(mb) or mb < 0:
        raise ValueError(f"{name} must be 0 or more, got {raw!r}")
    return int(mb * 2**20)
