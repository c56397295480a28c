"""The original Cerebro's import path of the Minibatch spec:
``from cerebro.mop.minibatch_spec import MiniBatchSpec`` (capital B, as the original
spelled it). The very class of :mod:`cerebro.spec` (``cerebro.MinibatchSpec``), not a
copy, so ported notebooks run unchanged; new code imports it from ``cerebro``."""

from __future__ import annotations

from cerebro.spec import MinibatchSpec

MiniBatchSpec = MinibatchSpec

__all__ = ["MiniBatchSpec", "MinibatchSpec"]
