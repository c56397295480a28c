"""The table of bad inputs: each gives one clear error saying what, where and how to fix it.

Every row is a distinct mistake a user can make; the test checks the exception type and the
message. Most fail before any process starts; the rest fail before training starts, or stop
a fit without losing what it had computed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from cerebro import (
    CerebroError,
    ETLSpec,
    Experiment,
    MinibatchSpec,
    ParamsError,
    SpecError,
    UserCodeError,
)
from cerebro.params import expand_grid
from cerebro.spec import check_spec
from toy import ToyETL, ToySpec, write_toy_csvs

GRID = {"lr": [0.05], "batch_size": [32]}


@dataclass
class Ctx:
    tmp: Path
    params: dict[str, Any]  # fresh toy CSVs, output under tmp/run
    data: dict[str, Any]  # params of a run whose ETL is done (etl_dir), output under tmp/fit
    prep: Experiment  # a run with a finished fit, shared by the module
    untrained: Experiment  # on the ETL'd data, shared by the module: it never trains a hop

    def exp(self, **changes: Any) -> Experiment:
        return Experiment(dict(self.params, **changes), workers=2, verbose=False)

    def fitted(self) -> Experiment:
        """An experiment on data that is ready, for a fit that must be refused. Its warm
        workers serve every case: a refused fit trained nothing, so the next case's fit
        replaces it (a case that trains or needs an empty run folder uses :meth:`own`)."""
        return self.untrained

    def own(self) -> Experiment:
        return Experiment(self.data, workers=2, verbose=False)


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory, toy_data: dict[str, str]
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("bad")
    exp = Experiment(dict(toy_data, output_dir=str(root / "prep")), workers=2, verbose=False)
    exp.run_fit(ToySpec(), GRID, num_epochs=1)
    untrained = Experiment(dict(toy_data, output_dir=str(root / "fit")), workers=2, verbose=False)
    yield {"data_dir": toy_data["etl_dir"], "prep": exp, "untrained": untrained}
    untrained.close()
    exp.close()


@pytest.fixture
def ctx(tmp_path: Path, prepared: dict[str, Any]) -> Ctx:
    params = write_toy_csvs(tmp_path / "csv")
    params["output_dir"] = str(tmp_path / "run")
    data = {"etl_dir": prepared["data_dir"], "output_dir": str(tmp_path / "fit")}
    return Ctx(tmp_path, params, data, prepared["prep"], prepared["untrained"])


def _csv(ctx: Ctx, split: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = ctx.params[f"{split}_main"]
    change(pd.read_csv(path)).to_csv(path, index=False)


class _ETL(ToyETL):
    def __init__(self, fn: Callable[[dict[str, Any], str], Any]):
        self.fn = fn

    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        return self.fn(row, mode)


def _good(row: dict[str, Any], mode: str) -> Any:
    return ToyETL().row_prep(row, mode, None)


class _Spec(ToySpec):
    """ToySpec with one hook replaced."""

    def __init__(self, **hooks: Callable[..., Any]):
        self.hooks = hooks

    def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
        if "create" in self.hooks:
            return self.hooks["create"](super().create_model_components(hyperparams))  # type: ignore[no-any-return]
        return super().create_model_components(hyperparams)

    def train(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        out = super().train(model_object, minibatch, hyperparams, device)
        return self.hooks["train"](out) if "train" in self.hooks else out

    def predict(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        out = super().predict(model_object, minibatch, hyperparams, device)
        return self.hooks["predict"](out) if "predict" in self.hooks else out


class _NoTrain(MinibatchSpec):
    def create_model_components(self, hyperparams: dict[str, Any]) -> dict[str, Any]:
        return {}

    def valtest(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        return {}


class _Typo(ToySpec):
    def metric_agg(self, mode: str, hyperparams: Any, metrics: Any) -> Any:
        return {}


class _Sig(ToySpec):
    def train(self, model_object: Any, minibatch: Any) -> Any:  # type: ignore[override]
        return {}


class _SigETL(ETLSpec):
    def row_prep(self, row: Any) -> Any:  # type: ignore[override]
        return row


class _Lock(ToySpec):
    def __init__(self) -> None:
        self.lock = threading.Lock()


class _Features(ToyETL):
    def set_features(self) -> list[str]:
        return ["f0"]


class _Flags(ToyETL):
    def __init__(self, flags: list[Any]) -> None:
        self.flags = flags

    def set_features(self) -> Any:
        return self.flags


class _BothValtests(ToySpec):
    def val_test(self, model_object: Any, minibatch: Any, hyperparams: Any, device: Any) -> Any:
        return {}


class _Blob(ToyETL):
    """Opens each row's object file the way our MNIST example does, then the toy row."""

    def set_features(self) -> list[str]:
        return ["blob"]

    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        assert object_dir is not None
        with open(os.path.join(object_dir, row["blob"]), "rb") as f:
            f.read()
        return super().row_prep(row, mode, object_dir)


def _object_path(value: str) -> Callable[[Ctx], Any]:
    """The ETL of toy CSVs whose object column names ``ok.bin`` in ``objs/``, but for the
    first train row (id 1000), which names ``value``. Beside ``objs/`` lies an outside file;
    inside, a folder, a link out to that file and a link loop."""

    def act(c: Ctx) -> Any:
        objs = c.tmp / "objs"
        (objs / "sub").mkdir(parents=True)
        (objs / "ok.bin").write_bytes(b"ok")
        (c.tmp / "secret.txt").write_text("outside")
        (objs / "out").symlink_to(c.tmp / "secret.txt")
        (objs / "loop").symlink_to(objs / "loop")
        for split in ("val", "test", "predict"):
            _csv(c, split, lambda d: d.assign(blob="ok.bin"))
        _csv(c, "train", lambda d: d.assign(blob=[value] + ["ok.bin"] * (len(d) - 1)))
        dirs = {f"{s}_dir": str(objs) for s in ("train", "val", "test", "predict")}
        return c.exp(**dirs).run_etl(_Blob())

    return act


def _header(ctx: Ctx, split: str, names: str) -> None:
    """Replace the header line of a split's CSV."""
    path = Path(ctx.params[f"{split}_main"])
    path.write_text(names + "\n" + path.read_text().split("\n", 1)[1])


def _run_fit(spec: Any, **kw: Any) -> Callable[[Ctx], Any]:
    args = {"param_grid": GRID, "num_epochs": 1, **kw}
    return lambda c: c.fitted().run_fit(spec, **args)


def _etl(spec: ETLSpec | None = None, **kw: Any) -> Callable[[Ctx], Any]:
    return lambda c: c.exp().run_etl(spec or ToyETL(), **kw)


def _two_fits(exp: Experiment) -> None:
    exp.run_fit(ToySpec(), GRID, 1)
    exp.run_fit(ToySpec(), GRID, 2)


def _then(setup: Callable[[Ctx], Any], act: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
    return lambda c: (setup(c), act(c))


CASES: list[tuple[str, Callable[[Ctx], Any], type[BaseException], str]] = [
    # params
    (
        "unknown params key",
        lambda c: c.exp(batch=1),
        ParamsError,
        r"unknown params key\(s\): 'batch'.*Known keys: train_main",
    ),
    (
        "misspelled params key",
        lambda c: c.exp(train_mian="x"),
        ParamsError,
        r"'train_mian' \(did you mean 'train_main'\?\)",
    ),
    (
        "missing CSV file",
        lambda c: c.exp(val_main=str(c.tmp / "nope.csv")),
        ParamsError,
        r"params\['val_main'\] = '.*nope.csv': no such file .*Point it at the val split's CSV",
    ),
    (
        "missing object folder",
        lambda c: c.exp(train_dir=str(c.tmp / "imgs")),
        ParamsError,
        r"params\['train_dir'\] = .*: no such folder",
    ),
    (
        "missing misc file",
        lambda c: c.exp(misc=[str(c.tmp / "vocab.txt")]),
        ParamsError,
        r"params\['misc'\] lists '.*vocab.txt': no such file",
    ),
    (
        "missing etl_dir without CSVs",
        lambda c: Experiment({"etl_dir": str(c.tmp / "old"), "output_dir": str(c.tmp / "run")}),
        ParamsError,
        r"params\['etl_dir'\] = .*: no such folder. It must be the data folder of an earlier",
    ),
    (
        "missing models_dir",
        lambda c: c.exp(models_dir=str(c.tmp / "m")),
        ParamsError,
        r"params\['models_dir'\] = .*: no such folder",
    ),
    (
        "params not a dict",
        lambda c: Experiment(["train.csv"]),
        TypeError,  # type: ignore[arg-type]
        "params must be a dict, got list",
    ),
    (
        "path of the wrong type",
        lambda c: c.exp(train_main=3),
        TypeError,
        r"params\['train_main'\] must be a path \(str\), got int",
    ),
    (
        "no output_dir",
        lambda c: Experiment({"train_main": c.params["train_main"]}),
        ParamsError,
        "params needs 'output_dir'",
    ),
    (
        "no train data",
        lambda c: Experiment({"output_dir": str(c.tmp)}),
        ParamsError,
        "params needs 'train_main' .* or 'etl_dir'",
    ),
    (
        "output_dir under a file",
        lambda c: c.exp(output_dir=c.params["train_main"] + "/run"),
        ParamsError,
        "cannot create output_dir .*train.csv/run",
    ),
    (
        "zero workers",
        lambda c: Experiment(c.params, workers=0),
        ParamsError,
        "workers must be at least 1, got 0",
    ),
    (
        "workers as a string",
        lambda c: Experiment(c.params, workers="2"),
        TypeError,  # type: ignore[arg-type]
        r"workers must be an int, got str \('2'\)",
    ),
    (
        "unknown engine",
        lambda c: Experiment(c.params, engine="spark"),
        ParamsError,
        r"engine must be one of \('local', 'ray'\), got 'spark'",
    ),
    (
        "address without the ray engine",
        lambda c: Experiment(c.params, address="h:6379"),
        ParamsError,
        "address and resources_per_worker are for engine='ray'",
    ),
    # param_grid
    ("empty grid", lambda c: expand_grid({}), ParamsError, "param_grid is empty"),
    (
        "grid without batch_size",
        lambda c: expand_grid({"lr": [0.1]}),
        ParamsError,
        "param_grid needs 'batch_size'",
    ),
    (
        "batch_size 0",
        lambda c: expand_grid({"batch_size": [0]}),
        ParamsError,
        "must hold positive integers, got 0",
    ),
    (
        "negative batch_size",
        lambda c: expand_grid({"batch_size": [-4]}),
        ParamsError,
        "must hold positive integers, got -4",
    ),
    (
        "fractional batch_size",
        lambda c: expand_grid({"batch_size": [32.5]}),
        ParamsError,
        "must hold positive integers, got 32.5",
    ),
    (
        "empty value list",
        lambda c: expand_grid({"batch_size": [32], "lr": []}),
        ParamsError,
        r"param_grid\['lr'\] is an empty list",
    ),
    (
        "value not a list",
        lambda c: expand_grid({"batch_size": 32}),
        TypeError,  # type: ignore[dict-item]
        r"write 'batch_size': \[32\] for a single value",
    ),
    (
        "value not storable",
        lambda c: expand_grid({"batch_size": [32], "act": [object()]}),
        TypeError,
        "cannot be stored in the catalog",
    ),
    (
        "grid not a dict",
        lambda c: expand_grid([("batch_size", [32])]),
        TypeError,  # type: ignore[arg-type]
        "param_grid must be a dict of lists",
    ),
    # specs
    (
        "spec class, not instance",
        lambda c: check_spec(ToySpec, MinibatchSpec),
        TypeError,
        r"pass ToySpec\(\) instead",
    ),
    (
        "spec not a subclass",
        lambda c: check_spec(object(), MinibatchSpec),
        TypeError,
        "subclass instance of cerebro.MinibatchSpec",
    ),
    (
        "missing train",
        lambda c: check_spec(_NoTrain(), MinibatchSpec),
        SpecError,
        r"_NoTrain must define MinibatchSpec.train\(\)",
    ),
    (
        "misspelled hook",
        lambda c: check_spec(_Typo(), MinibatchSpec),
        SpecError,
        "_Typo.metric_agg looks like a misspelling of the hook 'metrics_agg'",
    ),
    (
        "train signature",
        lambda c: check_spec(_Sig(), MinibatchSpec),
        SpecError,
        r"_Sig.train takes \(model_object, minibatch\) but Cerebro calls it as",
    ),
    (
        "row_prep signature",
        lambda c: check_spec(_SigETL(), ETLSpec),
        SpecError,
        r"_SigETL.row_prep takes \(row\)",
    ),
    (
        "valtest and val_test both",
        lambda c: check_spec(_BothValtests(), MinibatchSpec),
        SpecError,
        "_BothValtests defines both valtest and val_test .*keep one",
    ),
    (
        "set_features bools of the wrong count",
        _etl(_Flags([False, True])),
        UserCodeError,
        r"_Flags.set_features failed for ETL: returned 2 bools, but the train CSV .* has 8 "
        r"columns \('id', 'f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'label'\); return one bool per",
    ),
    (
        "set_features of names and bools",
        _etl(_Flags(["f0", True])),
        UserCodeError,
        r"_Flags.set_features failed for ETL: must return a list of column names or a list of "
        r"bools .*not a mix: got \['f0', True\]",
    ),
    (
        "unpicklable spec",
        _run_fit(_Lock()),
        SpecError,
        "_Lock cannot be sent to the worker processes: .*lock",
    ),
    # CSVs and ETL
    (
        "CSV without id",
        _then(lambda c: _csv(c, "val", lambda d: d.drop(columns=["id"])), _etl()),
        ParamsError,
        "has no 'id' column",
    ),
    (
        "duplicate ids",
        _then(lambda c: _csv(c, "val", lambda d: d.assign(id=7)), _etl()),
        ParamsError,
        r"duplicate id\(s\) \[7\]",
    ),
    (
        "non-integer ids",
        _then(lambda c: _csv(c, "test", lambda d: d.assign(id="x")), _etl()),
        ParamsError,
        "column 'id' must hold integers",
    ),
    (
        "empty split",
        _then(lambda c: _csv(c, "val", lambda d: d.iloc[:0]), _etl()),
        ParamsError,
        "has a header but no rows",
    ),
    (
        "empty CSV file",
        _then(lambda c: Path(c.params["test_main"]).write_text(""), _etl()),
        ParamsError,
        "is empty; it needs a header row",
    ),
    (
        "unparsable CSV",
        _then(
            lambda c: Path(c.params["val_main"]).write_bytes(b"id,a\n1,2\n3,4,5,6\n\xff\xfe"),
            _etl(),
        ),
        ParamsError,
        "could not be parsed as CSV",
    ),
    (
        "duplicate header names",
        _then(lambda c: _header(c, "val", "id,f0,f0,f2,f3,f4,f5,label"), _etl()),
        ParamsError,
        r"val CSV .*: the header names column\(s\) 'f0' more than once",
    ),
    (
        "empty header name",
        _then(lambda c: _header(c, "train", "id,f0,,f2,f3,f4,f5,label"), _etl()),
        ParamsError,
        r"train CSV .*: the header has empty column name\(s\) at position\(s\) \[3\]",
    ),
    (
        "id beyond 64 bits",
        _then(
            lambda c: _csv(c, "val", lambda d: d.assign(id=[2**64 - 1 - i for i in d.index])),
            _etl(),
        ),
        ParamsError,
        r"column 'id' must hold integers that fit in 64 bits .*found data row 1: "
        r"18446744073709551615; .*\(and 55 more\)",
    ),
    (
        "boolean ids",
        _then(lambda c: _csv(c, "val", lambda d: d.assign(id=d["id"] % 2 == 0)), _etl()),
        ParamsError,
        r"column 'id' must hold integers .*found data row 1: True; data row 2: False",
    ),
    (
        "unreadable CSV",
        lambda c: c.exp(test_main="/proc/self/mem").run_etl(ToyETL()),
        ParamsError,
        r"test CSV /proc/\d+/mem could not be read: \[Errno 5\] Input/output error",
    ),
    (
        "unreadable misc file",
        lambda c: c.exp(misc=["/proc/self/mem"]).run_etl(ToyETL()),
        ParamsError,
        r"params\['misc'\] file /proc/\d+/mem could not be copied into .*Input/output",
    ),
    ("object files without *_dir", _etl(_Features()), ParamsError, r"params has no 'train_dir'"),
    (
        "object column of numbers",
        lambda c: c.exp(train_dir=str(c.tmp)).run_etl(_Features()),
        ParamsError,
        r"bad object path\(s\) under train_dir=.*: row id 1000, column 'f0': -?\d.* is not a "
        r"path \(float\).*; row id \d+, .*Object paths must be relative paths of files inside",
    ),
    (
        "missing object file",
        _object_path("nope.bin"),
        ParamsError,
        r"train split: bad object path\(s\) under train_dir=.*/objs: row id 1000, column "
        r"'blob': 'nope.bin' names no file\. .*fix the CSV .*train.csv",
    ),
    (
        "empty object path",
        _object_path(""),
        ParamsError,
        r"row id 1000, column 'blob': nan is not a path \(empty\)",
    ),
    (
        "object path with ..",
        _object_path("../secret.txt"),
        ParamsError,
        r"row id 1000, column 'blob': '\.\./secret\.txt' leads outside the folder",
    ),
    (
        "absolute object path",
        _object_path("/etc/passwd"),
        ParamsError,
        r"row id 1000, column 'blob': '/etc/passwd' is an absolute path",
    ),
    (
        "object path through a link out",
        _object_path("out"),
        ParamsError,
        r"row id 1000, column 'blob': 'out' is a symbolic link .*that leads outside",
    ),
    (
        "object path of a link loop",
        _object_path("loop"),
        ParamsError,
        r"'loop' cannot be read: Too many levels of symbolic links",
    ),
    (
        "object path of a folder",
        _object_path("sub"),
        ParamsError,
        r"row id 1000, column 'blob': 'sub' is a folder, not a file",
    ),
    (
        "object path with a NUL",
        _object_path("ok\0.bin"),
        ParamsError,
        r"row id 1000, column 'blob': 'ok\\x00\.bin' holds a NUL character",
    ),
    (
        "5,000-character object path",
        _object_path("a" * 5000),
        ParamsError,
        r"row id 1000, column 'blob': 'a{59}…\(5002 characters\) is 5000 characters long: no "
        r"file can have a path over 4096",
    ),
    (
        "row_prep returns a tensor",
        _etl(_ETL(lambda r, m: torch.zeros(2))),
        UserCodeError,
        r"_ETL.row_prep failed for split 'train', row id \d+: row_prep must return \(input, ",
    ),
    (
        "row_prep label None",
        _etl(_ETL(lambda r, m: (torch.zeros(2), None))),
        UserCodeError,
        "returned label None in train mode",
    ),
    (
        "row_prep returns text",
        _etl(_ETL(lambda r, m: ("x", torch.tensor(1)))),
        UserCodeError,
        "input must be a tensor or a tuple/list/dict of tensors, got str",
    ),
    (
        "inconsistent shapes and types",
        _etl(
            _ETL(
                lambda r, m: (
                    torch.zeros(2),
                    torch.tensor(1) if r["id"] % 2 else torch.tensor(1.5),
                )
            )
        ),
        UserCodeError,
        r"row_prep returned dtype torch\.\w+ for leaf 1 of this row but \w+ for earlier rows",
    ),
    (
        "row_prep labels of two structures",
        _etl(
            _ETL(
                lambda r, m: (
                    torch.zeros(2),
                    torch.tensor(1) if r["id"] % 2 else (torch.tensor(1), torch.tensor(2)),
                )
            )
        ),
        UserCodeError,
        "every row must give the same structure",
    ),
    (
        "row_prep raises",
        _etl(_ETL(lambda r, m: r["pixels"])),
        UserCodeError,
        r"row_prep failed for split 'train', row id \d+: KeyError: 'pixels'",
    ),
    ("fraction above 1", _etl(fraction=1.5), ParamsError, r"fraction must be in \(0, 1\]"),
    (
        "fraction too small",
        _etl(fraction=0.001),
        ParamsError,
        "train split has 1 row.* but 2 partitions are needed",
    ),
    ("fraction as text", _etl(fraction="half"), TypeError, "fraction must be a number"),
    # fits
    (
        "num_epochs 0",
        _run_fit(ToySpec(), num_epochs=0),
        ParamsError,
        "num_epochs must be at least 1, got 0",
    ),
    (
        "num_epochs as text",
        _run_fit(ToySpec(), num_epochs="3"),
        TypeError,
        "num_epochs must be an int, got str",
    ),
    (
        "unknown policy",
        _run_fit(ToySpec(), policy="fast"),
        ParamsError,
        "policy must be one of .*got 'fast'",
    ),
    (
        "unknown on_error",
        _run_fit(ToySpec(), on_error="skip"),
        ParamsError,
        "on_error must be one of",
    ),
    (
        "unknown parallelism",
        _run_fit(ToySpec(), parallelism="pipeline"),
        ParamsError,
        r"parallelism must be one of \('ddp', 'fsdp', 'auto'\) or a function .*, got "
        "'pipeline'",
    ),
    (
        "unknown mode",
        _run_fit(ToySpec(), mode="maximize"),
        ParamsError,
        "mode must be 'min' or 'max'",
    ),
    (
        "more workers than partitions",
        lambda c: Experiment(c.data, workers=3, verbose=False).run_fit(ToySpec(), GRID, 1),
        ParamsError,
        "3 workers but the data has 2 partitions",
    ),
    (
        "run with an unknown policy",
        lambda c: c.exp().run(ToyETL(), ToySpec(), GRID, 1, policy="fast"),
        ParamsError,
        "policy must be one of .*got 'fast'",
    ),
    (
        "run with fraction as text",
        lambda c: c.exp().run(ToyETL(), ToySpec(), GRID, 1, fraction="half"),
        TypeError,
        "fraction must be a number",
    ),
    (
        "fit before ETL",
        lambda c: c.exp().run_fit(ToySpec(), GRID, 1),
        ParamsError,
        r"call run_etl\(etl_spec\) before run_fit",
    ),
    (
        "no optimizer",
        _run_fit(_Spec(create=lambda d: {"model": d["model"]})),
        UserCodeError,
        r"create_model_components failed for model m000 .*key 'optimizer', got \['model'\]",
    ),
    (
        "train returns a list metric",
        _run_fit(_Spec(train=lambda o: {"loss": [1.0, 2.0]})),
        UserCodeError,
        r"_Spec.train returned metric 'loss' = list; each metric must be a single",
    ),
    (
        "train returns nothing",
        _run_fit(_Spec(train=lambda o: None)),
        UserCodeError,
        r"_Spec.train must return a dict of metrics .*got NoneType",
    ),
    (
        "train returns a tensor metric",
        _run_fit(_Spec(train=lambda o: {"loss": torch.ones(3)})),
        UserCodeError,
        r"metric 'loss' = Tensor of shape \(3,\)",
    ),
    (
        "unknown objective",
        _run_fit(ToySpec(), objective="val_auc"),
        ParamsError,
        "objective 'val_auc' is not a metric this spec returns; choose one of train_acc",
    ),
    (
        "another fit in the run dir",
        lambda c: _two_fits(c.own()),
        ParamsError,
        "already holds a different fit .*pass overwrite=True",
    ),
    # test and predict
    (
        "unknown model_tag",
        lambda c: c.fitted().run_test(ToySpec(), "m7"),
        ParamsError,
        r"unknown model_tag 'm7': use 'best', a model id of the latest fit",
    ),
    (
        "model_tag not a string",
        lambda c: c.fitted().run_test(ToySpec(), 3),
        TypeError,  # type: ignore[arg-type]
        "model_tag must be a str, got int",
    ),
    (
        "test before any fit",
        lambda c: c.own().run_test(ToySpec()),
        ParamsError,
        "model_tag='best' but this run directory has no fit yet",
    ),
    (
        "batch_size override 0",
        lambda c: c.prep.run_test(ToySpec(), batch_size=0),
        ParamsError,
        "batch_size must be a positive int, got 0",
    ),
    (
        "predict of the wrong length",
        lambda c: c.prep.run_predict(_Spec(predict=lambda o: (o[0][:-1], o[1]))),
        UserCodeError,
        r"returned \d+ classes and \d+ confidences for a minibatch of \d+ rows",
    ),
    (
        "resume where nothing ran",
        lambda c: Experiment.resume(c.tmp),
        CerebroError,
        "holds no Cerebro experiment",
    ),
]


def test_table_is_large_and_distinct() -> None:
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)) >= 40


@pytest.mark.parametrize("name, act, exc, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    ctx: Ctx, name: str, act: Callable[[Ctx], Any], exc: type[BaseException], match: str
) -> None:
    with pytest.raises(exc, match=match):
        act(ctx)


@pytest.mark.parametrize(
    "act",
    [
        _then(
            lambda c: _csv(c, "val", lambda d: d.assign(id=["7" * 20_000_000, *d["id"][1:]])),
            _etl(),
        ),
        _then(lambda c: _header(c, "val", "id,f0,f0" + ",x" * 1000), _etl()),
        _object_path("b" * 5000),
    ],
    ids=["20 MB id", "1,000 repeated header names", "5,000-character path"],
)
def test_a_huge_cell_makes_a_short_message(ctx: Ctx, act: Callable[[Ctx], Any]) -> None:
    """The message shows each offending value cut to ~80 characters, a few of them."""
    with pytest.raises(ParamsError) as e:
        act(ctx)
    assert len(str(e.value)) < 1000, str(e.value)[:2000]


def test_run_checks_both_steps_before_it_records_or_starts_either(tmp_path: Path) -> None:
    params = write_toy_csvs(tmp_path / "csv")
    params["output_dir"] = str(tmp_path / "run")
    exp = Experiment(params, workers=2, verbose=False)
    with pytest.raises(ParamsError, match="mode must be"):
        exp.run(ToyETL(), ToySpec(), GRID, 1, mode="maximize")
    assert not (tmp_path / "run" / "experiment.json").exists()
    assert not (tmp_path / "run" / "data").exists()


DISK_FULL = """
import resource, sys
sys.path.insert(0, {tests!r})
from cerebro import Experiment
from toy import ToyETL, ToySpec
exp = Experiment({params!r}, workers=2, verbose=False)
if sys.argv[1] == "etl":
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
    exp.run_etl(ToyETL())
elif sys.argv[1] == "catalog":
    exp.run_etl(ToyETL())
    exp.run_fit(ToySpec(), {{"lr": [0.05], "batch_size": [32]}}, num_epochs=1)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
    exp.run_fit(ToySpec(), {{"lr": [0.05, 0.01], "batch_size": [32]}}, num_epochs=2,
                overwrite=True)
else:
    class TinyDisk(ToySpec):
        def initialize_worker(self):  # only the workers' disk is full
            resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    exp.run_etl(ToyETL())
    exp.run_fit(TinyDisk(), {{"lr": [0.05], "hidden": [64], "batch_size": [32]}},
                num_epochs=1)
"""


@pytest.mark.parametrize(
    "stage, match",
    [
        ("etl", r"could not write the partitions under .*File too large\. Free disk space"),
        ("catalog", r"could not write the catalog .*catalog.sqlite: disk I/O error. Free disk"),
        (
            "worker",
            r"saving the checkpoint failed for model m000 .*could not write it .*the "
            r"disk may be full.*Completed hops are kept: fix the cause",
        ),
    ],
)
def test_disk_full(ctx: Ctx, stage: str, match: str) -> None:
    script = DISK_FULL.format(tests=str(Path(__file__).parent), params=ctx.params)
    r = subprocess.run(
        [sys.executable, "-c", script, stage],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    import re

    assert re.search(match, last), r.stderr[-3000:]
