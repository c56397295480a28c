"""The ``cerebro`` command: run an experiment file or a bundled example."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

import cloudpickle

from cerebro.errors import CerebroError
from cerebro.statuses import DROPPED, FitStatus

__all__ = ["load_experiment_file", "main"]

_REQUIRED = ("etl_spec", "minibatch_spec", "params", "param_grid", "num_epochs")


def load_experiment_file(path: str | Path) -> types.ModuleType:
    """Import an experiment file as a module whose specs travel to workers by value.

    Raises:
        FileNotFoundError: no such file.
        CerebroError: the file raised while it ran (a NameError, a SyntaxError...): one
            line naming the file, the line and the error; or it lacks one of the names an
            experiment needs.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no experiment file {path}")
    name = f"cerebro_experiment_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    cloudpickle.register_pickle_by_value(module)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise CerebroError(_file_error(path, e)) from e
    if not hasattr(module, "param_grid") and hasattr(module, "space"):
        module.param_grid = module.space  # type: ignore[attr-defined]  # a space: same slot
    missing = [n for n in _REQUIRED if not hasattr(module, n)]
    if missing:
        raise CerebroError(
            f"{path} must define {', '.join(missing)} at module level (an experiment file "
            f"defines {', '.join(_REQUIRED)} (or space instead of param_grid), and "
            "optionally seed, fraction, workers, objective, mode, search, num_models, "
            "max_live_models, deterministic, early_stopping, threads_per_hop, "
            "devices_per_worker, parallelism)."
        )
    return module


def _file_error(path: Path, e: BaseException) -> str:
    """``error in experiment file X line N: NameError: ...``: the deepest line of the file
    itself in the traceback (a SyntaxError names its own line)."""
    if isinstance(e, SyntaxError) and e.filename and Path(e.filename).resolve() == path:
        line = e.lineno
        what = f"{type(e).__name__}: {e.msg}"
    else:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
        line = frames[-1].lineno if frames else None
        what = f"{type(e).__name__}: {e}"
    where = f" line {line}" if line else ""
    return f"error in experiment file {path}{where}: {what}"


def _run(module: types.ModuleType, args: argparse.Namespace) -> int:
    from cerebro.experiment import Experiment

    params = dict(module.params)
    if args.output:
        params["output_dir"] = args.output
    workers = args.workers if args.workers is not None else getattr(module, "workers", None)
    seed = getattr(module, "seed", 1)
    exp = Experiment(
        params,
        workers=workers,
        engine=args.engine,
        address=args.address,
        verbose=not args.quiet,
        devices_per_worker=getattr(module, "devices_per_worker", 1),
    )
    started = time.time()
    result = exp.run(
        module.etl_spec,
        module.minibatch_spec,
        module.param_grid,
        num_epochs=args.epochs if args.epochs is not None else module.num_epochs,
        seed=seed,
        fraction=getattr(module, "fraction", 1.0),
        policy=args.policy,
        objective=getattr(module, "objective", None),
        mode=getattr(module, "mode", "min"),
        search=getattr(module, "search", "grid"),
        num_models=getattr(module, "num_models", None),
        max_live_models=getattr(module, "max_live_models", None),
        deterministic=getattr(module, "deterministic", False),
        early_stopping=getattr(module, "early_stopping", None),
        threads_per_hop=getattr(module, "threads_per_hop", None),
        parallelism=getattr(module, "parallelism", "ddp"),
        overwrite=args.overwrite,
        allow_changed_code=args.allow_changed_code,
    )
    _say_if_finished_before(result, exp.output_dir, started, args.quiet)
    _print_result(result, exp.output_dir)
    return 0


def _say_if_finished_before(result: Any, output_dir: Path, started: float, quiet: bool) -> None:
    """A fit that had finished before this command trained nothing now: say so."""
    from cerebro.catalog import Catalog

    catalog = Catalog(output_dir / "catalog.sqlite", readonly=True)
    try:
        fit = catalog.fit(result.fit_id)
    finally:
        catalog.close()
    if not quiet and fit["status"] == FitStatus.DONE and (fit["finished"] or started) < started:
        print(
            f"cerebro: the fit in {output_dir} was already finished; showing its results "
            "(to train again, give another --output or delete that folder).",
            file=sys.stderr,
        )


def _print_result(result: Any, output_dir: Path) -> None:
    import pandas as pd

    table = result.table.drop(columns=["error"])
    with pd.option_context(
        "display.max_columns", None, "display.width", 200, "display.float_format", "{:.4f}".format
    ):
        print(table.to_string(index=False))
    try:
        best = result.best
        print(
            f"\nbest by {best['objective']} ({best['mode']}): {best['model_id']} "
            f"{best['hyperparams']} {best['objective']}={best['value']:.4f} "
            f"at epoch {best['epoch']}"
        )
    except ValueError as e:
        print(f"\nno best model: {e}")
    failed = result.table[result.table["status"].isin(sorted(DROPPED))]
    for _, row in failed.iterrows():
        print(f"\n{row['model_id']} {row['status']}: {row['error']}", file=sys.stderr)
    print(f"run directory: {output_dir}")


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1 (0 is an error, not "not given")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_ALLOW_CHANGED = (
    "continue the fit although the Minibatch spec's code changed since it started "
    "(the fit then mixes the two versions)"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cerebro", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--workers",
            type=_positive,
            help="worker processes (default: the file's, else the number of cores)",
        )
        sp.add_argument("--output", help="run directory (overrides params['output_dir'])")
        sp.add_argument("--epochs", type=_positive, help="override num_epochs")
        sp.add_argument(
            "--overwrite",
            action="store_true",
            help="discard a fit already in the run directory that this one cannot continue "
            "(another grid, epochs, seed, data... or other spec code)",
        )
        sp.add_argument("--allow-changed-code", action="store_true", help=_ALLOW_CHANGED)
        sp.add_argument(
            "--policy",
            default="fixed",
            choices=("fixed", "lrf", "random"),
            help="hop scheduling policy (default: fixed, bit-identical runs)",
        )
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        sp.add_argument(
            "--engine",
            default="local",
            choices=("local", "ray"),
            help="where hops run: worker processes here (default) or Ray actors",
        )
        sp.add_argument(
            "--address",
            help="Ray cluster to join (HOST:6379); with --engine ray "
            "and no address, a local Ray instance is started",
        )

    run = sub.add_parser("run", help="run an experiment file: ETL, then the MOP fit")
    run.add_argument(
        "file",
        help="Python file defining etl_spec, minibatch_spec, params, param_grid, num_epochs",
    )
    common(run)
    ex = sub.add_parser("example", help="run a bundled example (digits, mnist)")
    ex.add_argument("name", help="example name: digits or mnist")
    common(ex)
    rep = sub.add_parser(
        "report", help="write DIR/report.html, its plots and TensorBoard files from the catalog"
    )
    rep.add_argument("dir", help="run directory (the output_dir of a fit)")
    rep.add_argument(
        "--objective",
        help="metric that ranks models (default: the fit's own, else val_loss or a val metric)",
    )
    rep.add_argument("--mode", choices=("min", "max"), help="default: the fit's own, else min")
    rep.add_argument("--no-tensorboard", action="store_true", help="skip TensorBoard files")
    st = sub.add_parser("status", help="progress of a running or finished fit in DIR")
    st.add_argument("dir", help="run directory (the output_dir of a fit)")
    st.add_argument(
        "--objective",
        help="metric that ranks models (default: the fit's own, else val_loss or a val metric)",
    )
    st.add_argument("--mode", choices=("min", "max"), help="default: the fit's own, else min")
    res = sub.add_parser("resume", help="continue an interrupted run in DIR from its catalog")
    res.add_argument("dir", help="run directory")
    res.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    res.add_argument("--allow-changed-code", action="store_true", help=_ALLOW_CHANGED)
    for name, what in (
        ("test", "evaluate a trained model on the test split"),
        ("predict", "write DIR/predictions/<model>.csv for the predict split"),
    ):
        sp = sub.add_parser(name, help=what)
        sp.add_argument("dir", help="run directory")
        sp.add_argument(
            "--model",
            default="best",
            help="'best' (default), a model id such as m003, or a checkpoint path",
        )
        sp.add_argument("--batch-size", type=_positive, help="override the model's batch_size")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def _on_saved_run(args: argparse.Namespace) -> int:
    """``cerebro resume|test|predict DIR``: act on the experiment saved in DIR."""
    from cerebro.experiment import Experiment

    if args.command == "resume":
        started = time.time()
        result = Experiment.resume(
            args.dir, verbose=not args.quiet, allow_changed_code=args.allow_changed_code
        )
        _say_if_finished_before(result, Path(args.dir).resolve(), started, args.quiet)
        _print_result(result, Path(args.dir).resolve())
        return 0
    exp = Experiment.from_dir(args.dir, verbose=not args.quiet)
    spec = exp.saved_spec("fit")
    if args.command == "test":
        for name, value in exp.run_test(spec, args.model, args.batch_size).items():
            print(f"{name}\t{value:.6g}")
    else:
        print(exp.run_predict(spec, args.model, args.batch_size))
    return 0


def _report_or_status(args: argparse.Namespace) -> int:
    """``cerebro report DIR`` and ``cerebro status DIR``: read the catalog, never write it."""
    from cerebro import report

    try:
        if args.command == "status":
            print(report.status_text(args.dir, objective=args.objective, mode=args.mode), end="")
            return 0
        page = report.write_report(args.dir, objective=args.objective, mode=args.mode)
        print(page)
        if not args.no_tensorboard:
            tb = report.write_tensorboard(args.dir)
            print(f"{tb}  (view: tensorboard --logdir {tb})")
        return 0
    except (CerebroError, FileNotFoundError, ValueError) as e:
        first = str(e).strip().splitlines()
        print(f"cerebro: error: {first[0] if first else type(e).__name__}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cerebro`` console script."""
    args = _parser().parse_args(argv)
    if args.command in ("report", "status"):
        return _report_or_status(args)
    try:
        if args.command in ("resume", "test", "predict"):
            return _on_saved_run(args)
        if args.command == "example":
            from cerebro.examples import example_path

            module = load_experiment_file(example_path(args.name))
        else:
            module = load_experiment_file(args.file)
        return _run(module, args)
    except (CerebroError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"cerebro: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cerebro: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
