"""Exceptions Cerebro raises, each saying what went wrong, where, and how to fix it."""

from __future__ import annotations

import linecache
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

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
        user_traceback = locate_dynamic_code(user_traceback)
        if user_traceback:
            full += "\n\n--- traceback from the worker ---\n" + user_traceback.rstrip()
        super().__init__(full)
        self.function = function
        self.where = where
        self.user_traceback = user_traceback


class WorkerError(CerebroError):
    """A worker process died or stopped answering."""


# NOTE [ <dynamic-code> in tracebacks ]
# A spec defined where the workers cannot import it (an experiment file, a notebook cell, a
# script's __main__, a function's body) travels by value, and cloudpickle names the code it
# sends "<dynamic-code>" (for a deterministic payload): a worker's traceback then reads
# `File "<dynamic-code>", line 27, in train` and shows no source. The line number and the
# function's name survive, so the driver, which has the user's classes, finds the function
# they name and writes its file and source line back in.

_DYNAMIC = re.compile(r'^(\s*)File "<dynamic-code>", line (\d+), in (.+)$')


def locate_dynamic_code(tb: str) -> str:
    """``tb`` with every ``<dynamic-code>`` frame given back its file and source line, where
    one function of the user's spec classes (or of their modules) matches its name and line.
    """
    if "<dynamic-code>" not in tb:
        return tb
    index = _code_index()
    out: list[str] = []
    lines = tb.splitlines()
    for i, line in enumerate(lines):
        m = _DYNAMIC.match(line)
        files = index.get((m.group(3), int(m.group(2))), set()) if m else set()
        if m is None or len(files) != 1:
            out.append(line)
            continue
        indent, lineno, filename = m.group(1), int(m.group(2)), files.pop()
        out.append(f'{indent}File "{filename}", line {lineno}, in {m.group(3)}')
        source = linecache.getline(filename, lineno).strip()
        following = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if source and following != source:
            out.append(f"{indent}  {source}")
    return "\n".join(out) + ("\n" if tb.endswith("\n") else "")


def _code_index() -> dict[tuple[str, int], set[str]]:
    """``{(function name, line): {file}}`` over every spec subclass this process has, their
    modules' functions and classes, and the code nested in them."""
    from cerebro.spec import ETLSpec, MinibatchSpec

    classes: list[type] = []
    todo: list[type] = [ETLSpec, MinibatchSpec]
    while todo:
        sub: list[type] = todo.pop().__subclasses__()
        classes += sub
        todo += sub
    funcs: list[Any] = []
    seen: set[int] = set()
    for cls in classes:
        module = sys.modules.get(cls.__module__)
        for owner in (cls, module):
            if owner is None or id(owner) in seen:
                continue
            seen.add(id(owner))
            for value in list(vars(owner).values()):
                if owner is cls or getattr(value, "__module__", None) == cls.__module__:
                    funcs += _functions(value)
                if isinstance(value, type) and value.__module__ == cls.__module__:
                    for attr in vars(value).values():
                        funcs += _functions(attr)
    index: dict[tuple[str, int], set[str]] = {}
    for func in funcs:
        code = func.__code__
        filename = code.co_filename
        if filename == "<dynamic-code>":  # unpickled by value here too: its module's file
            filename = func.__globals__.get("__file__") or filename
        if filename == "<dynamic-code>":
            continue
        for c in _nested(code):
            for _, _, lineno in c.co_lines():
                if lineno is not None:
                    index.setdefault((c.co_name, lineno), set()).add(filename)
    return index


def _functions(value: Any) -> list[Any]:
    """The plain functions behind a class attribute (method, static/class method, property)."""
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset, value.fdel) if f is not None]
    func = getattr(value, "__func__", value)
    return [func] if isinstance(func, types.FunctionType) else []


def _nested(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _nested(const)
