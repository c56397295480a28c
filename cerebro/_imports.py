"""Optional dependencies, imported only when a feature needs them.

``import cerebro`` must work without Ray: only the Ray engine calls :func:`import_ray`, and
a missing Ray is then one error that says which command installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_ray"]


def import_ray() -> ModuleType:
    """The ``ray`` module.

    Raises:
        ImportError: Ray is not installed; the message names the install command.
    """
    try:
        return importlib.import_module("ray")
    except ImportError as e:
        raise ImportError(
            "the Ray engine needs Ray, which is not installed "
            f"({type(e).__name__}: {e}). Install it with: pip install 'cerebro-mop[ray]' "
            "(or pip install ray), on the driver and on every node of the cluster."
        ) from e
