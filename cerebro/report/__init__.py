"""Results a user can act on, read from a run's catalog only.

Everything here opens the catalog read-only, so it works on a finished run, on a run still
being written (beside a live fit) and after a resume.

- :func:`write_report`: ``DIR/report.html`` with plots under ``DIR/plots/``.
- :func:`write_tensorboard`: TensorBoard event files under ``DIR/tensorboard/<model_id>/``.
- :func:`status_text` / :func:`read_status`: progress of a running or finished fit.
"""

from __future__ import annotations

from cerebro.report._data import NoFitError
from cerebro.report._html import write_report
from cerebro.report._status import read_status, status_text
from cerebro.report._summary import ModelProgress, RunStatus
from cerebro.report._tensorboard import write_tensorboard

__all__ = [
    "ModelProgress",
    "NoFitError",
    "RunStatus",
    "read_status",
    "status_text",
    "write_report",
    "write_tensorboard",
]
