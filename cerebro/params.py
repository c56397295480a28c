"""Validation of ``params`` and hyperparameter grids, and grid expansion into model configs.

Everything here runs before any process starts, so a typo costs a second, not a run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cerebro.errors import ParamsError

__all__ = [
    "ETL_MARK",
    "SPLITS",
    "ModelConfig",
    "Params",
    "check_etl_dir",
    "ask_order",
    "expand_grid",
    "is_etl_output",
    "validate_params",
]

SPLITS: tuple[str, ...] = ("train", "val", "test", "predict")
_FILE_KEYS = tuple(f"{s}_main" for s in SPLITS)
_DIR_KEYS = tuple(f"{s}_dir" for s in SPLITS)
_KNOWN = (*_FILE_KEYS, *_DIR_KEYS, "misc", "etl_dir", "models_dir", "output_dir")

# NOTE [ whose etl_dir ]
# With the CSVs (*_main) in params, run_etl writes its output into etl_dir, and a rerun with
# other inputs replaces the partitions there. So it writes only into a folder that is
# missing, empty, or already Cerebro's: one with a finished ETL's manifest, or with this
# mark, which run_etl writes before its first partition (so the leftovers of an interrupted
# ETL are Cerebro's too). Anything else (a data set, another program's output, the run's
# own output_dir) is refused before a file is touched. Split-named sub-folders alone do
# not count: a raw image folder has train/ and val/ as well.
ETL_MARK = ".cerebro-etl"


@dataclass(frozen=True)
class Params:
    """Validated ``params``: absolute paths, ``None`` where a key was not given."""

    mains: dict[str, Path]  # split -> CSV
    dirs: dict[str, Path]  # split -> object-file root
    misc: tuple[Path, ...]
    etl_dir: Path | None
    models_dir: Path | None
    output_dir: Path

    def as_dict(self) -> dict[str, Any]:
        """Back to a ``params`` dict, with absolute paths (valid from any directory)."""
        out: dict[str, Any] = {f"{s}_main": str(p) for s, p in self.mains.items()}
        out.update({f"{s}_dir": str(p) for s, p in self.dirs.items()})
        if self.misc:
            out["misc"] = [str(p) for p in self.misc]
        for key in ("etl_dir", "models_dir"):
            if getattr(self, key) is not None:
                out[key] = str(getattr(self, key))
        out["output_dir"] = str(self.output_dir)
        return out

    def object_dir(self, split: str) -> str | None:
        d = self.dirs.get(split)
        return str(d) if d is not None else None


def validate_params(params: Mapping[str, Any]) -> Params:
    """Check ``params`` and resolve its paths.

    With CSVs (``*_main``), ``etl_dir`` is where ``run_etl`` will write: it may be missing,
    but must not hold anything but Cerebro's output (see NOTE [ whose etl_dir ]); without
    them it is data to read and must exist.

    Raises:
        TypeError: ``params`` is not a mapping, or a value has the wrong type.
        ParamsError: an unknown key, a missing file or folder, no ``train_main``, or an
            ``etl_dir`` that is not Cerebro's or holds ``output_dir``.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict, got {type(params).__name__}.")
    unknown = sorted(set(params) - set(_KNOWN))
    if unknown:
        import difflib

        hints = []
        for key in unknown:
            near = difflib.get_close_matches(str(key), _KNOWN, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise ParamsError(
            f"unknown params key(s): {', '.join(hints)}. Known keys: {', '.join(_KNOWN)}."
        )

    def path_of(key: str) -> Path | None:
        value = params.get(key)
        if value is None:
            return None
        if not isinstance(value, str | os.PathLike):
            raise TypeError(f"params[{key!r}] must be a path (str), got {type(value).__name__}.")
        return Path(value).expanduser().resolve()

    mains: dict[str, Path] = {}
    dirs: dict[str, Path] = {}
    for split in SPLITS:
        main = path_of(f"{split}_main")
        if main is not None:
            if not main.is_file():
                raise ParamsError(
                    f"params['{split}_main'] = {str(params[f'{split}_main'])!r}: no such file "
                    f"({main}). Point it at the {split} split's CSV file."
                )
            mains[split] = main
        obj = path_of(f"{split}_dir")
        if obj is not None:
            if not obj.is_dir():
                raise ParamsError(
                    f"params['{split}_dir'] = {str(params[f'{split}_dir'])!r}: no such folder "
                    f"({obj}). It must be the folder that the object paths of the {split} "
                    "CSV are relative to."
                )
            dirs[split] = obj
    etl_dir = path_of("etl_dir")
    if etl_dir is not None and not mains and not etl_dir.is_dir():
        raise ParamsError(
            f"params['etl_dir'] = {str(params['etl_dir'])!r}: no such folder. It must be the "
            "data folder of an earlier run (DIR/data), or give the CSVs (train_main ...) "
            "as well to have run_etl write the data there."
        )
    if "train" not in mains and etl_dir is None:
        raise ParamsError(
            "params needs 'train_main' (the training CSV) or 'etl_dir' (data preprocessed by "
            "an earlier run)."
        )
    models_dir = path_of("models_dir")
    if models_dir is not None and not models_dir.is_dir():
        raise ParamsError(f"params['models_dir'] = {str(params['models_dir'])!r}: no such folder.")
    misc_value = params.get("misc") or []
    if isinstance(misc_value, str | os.PathLike):
        misc_value = [misc_value]
    if not isinstance(misc_value, Sequence):
        raise TypeError(f"params['misc'] must be a list of file paths, got {type(misc_value)}.")
    misc: list[Path] = []
    for item in misc_value:
        p = Path(item).expanduser().resolve()
        if not p.is_file():
            raise ParamsError(f"params['misc'] lists {str(item)!r}: no such file ({p}).")
        misc.append(p)
    out = path_of("output_dir")
    if out is None:
        raise ParamsError("params needs 'output_dir': the folder where the run is written.")
    if etl_dir is not None and mains:
        if out == etl_dir or etl_dir in out.parents:
            raise ParamsError(
                f"params['output_dir'] = {str(out)!r} is inside params['etl_dir'] = "
                f"{str(etl_dir)!r}, which run_etl fills with the preprocessed data (replacing "
                "its sub-folders). Give them separate folders."
            )
        check_etl_dir(etl_dir)
    return Params(mains, dirs, tuple(misc), etl_dir, models_dir, out)


def check_etl_dir(etl_dir: Path) -> None:
    """Refuse an ``etl_dir`` that ``run_etl`` may not write into: a file, or a folder holding
    anything but Cerebro's ETL output (its manifest or :data:`ETL_MARK`, see NOTE
    [ whose etl_dir ]). A missing or empty folder is fine.

    Raises:
        ParamsError: naming the folder, a few of the entries found, and what to do.
    """
    if not etl_dir.exists():
        return
    if not etl_dir.is_dir():
        raise ParamsError(
            f"params['etl_dir'] = {str(etl_dir)!r} is a file, not a folder. Point it at the "
            "folder for the preprocessed data (it is created if missing)."
        )
    if is_etl_output(etl_dir):
        return
    entries = sorted(e.name for e in etl_dir.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if entries[5:] else "")
        raise ParamsError(
            f"params['etl_dir'] = {str(etl_dir)!r} holds files that are not Cerebro's "
            f"preprocessed data ({shown}), and run_etl replaces what it finds there, so it "
            "leaves the folder alone. Point etl_dir at a new or empty folder, or at the data "
            "folder of an earlier run (DIR/data); to read such data without running the ETL, "
            "give etl_dir without the *_main CSVs."
        )


def is_etl_output(folder: Path) -> bool:
    """Whether ``folder`` holds Cerebro's ETL output, finished (a manifest with Cerebro's
    keys) or not (:data:`ETL_MARK`, written before the first partition)."""
    from cerebro.etl._plan import MANIFEST  # not at the top: cerebro.etl imports this module

    if (folder / ETL_MARK).is_file():
        return True
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"fingerprint", "partitions", "splits"} <= set(manifest)


@dataclass(frozen=True)
class ModelConfig:
    """One configuration of the grid: a stable id and its hyperparameters."""

    model_id: str
    hyperparams: dict[str, Any]

    @property
    def batch_size(self) -> int:
        return int(self.hyperparams["batch_size"])


def ask_order(model_id: str) -> tuple[int, str]:
    """Sort key of model ids in the order they were asked (``m999`` before ``m1000``)."""
    return len(model_id), model_id


def expand_grid(param_grid: Mapping[str, Sequence[Any]]) -> list[ModelConfig]:
    """Expand ``{name: [values]}`` into the cross product, in a stable order.

    Model ids are ``m000``, ``m001``... in the order of the product over the keys as given,
    so the same grid always gives the same ids. The rules (and a list of grids, their
    union) are :func:`cerebro.search.parse_space`'s and :func:`~cerebro.search.grid_points`'.

    Raises:
        TypeError: the grid is not a dict of lists, or a value is not JSON-like.
        ParamsError: empty grid, an empty value list, no ``batch_size``, or a
            ``batch_size`` that is not a positive integer.
    """
    from cerebro.search import grid_points, parse_space  # cerebro.search imports this module

    return grid_points(parse_space(param_grid, search="grid"))
