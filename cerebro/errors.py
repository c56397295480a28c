"""Exceptions Cerebro raises, each saying what went wrong, where, and how to fix it."""

from __future__ import annotations

__all__ = ["CerebroError", "ParamsError", "SpecError", "UserCodeError", "WorkerError"]


class CerebroError(Exception):
    """Base class of every error Cerebro raises on purpose."""


class SpecError(CerebroError, TypeError):
    """A user's spec class does not fit the contract (missing hook, wrong signature)."""


class ParamsError(CerebroError, ValueError):
    """``params``, a hyperparameter grid or a run option is wrong."""


class UserCodeError(CerebroError):
    """A user's spec function raised or returned something Cerebro cannot use.

    Attributes:
        function: the spec hook that failed, e.g. ``"MySpec.train"``.
        where: what it was working on (model id and hyperparameters, or split and row id).
        user_traceback: the traceback text from the process where it failed.
    """

    def __init__(self, message: str, *, function: str, where: str, user_traceback: str = ""):
        full = f"{function} failed for {where}: {message}"
        if user_traceback:
            full += "\n\n--- traceback from the worker ---\n" + user_traceback.rstrip()
        super().__init__(full)
        self.function = function
        self.where = where
        self.user_traceback = user_traceback


class WorkerError(CerebroError):
    """A worker process died or stopped answering."""
