"""The original Cerebro's import path of the ETL spec: ``from cerebro.etl.etl_spec import
ETLSpec``. The very class of :mod:`cerebro.spec` (``cerebro.ETLSpec``), not a copy, so
ported notebooks run unchanged; new code imports it from ``cerebro``."""

from __future__ import annotations

from cerebro.spec import ETLSpec

__all__ = ["ETLSpec"]
