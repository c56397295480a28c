from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from cerebro import ETLSpec, Experiment, ParamsError, UserCodeError
from cerebro.partitions import Partition, partition_path
from toy import ToyETL


def _all_rows(data_dir: Path, split: str, parts: int) -> dict[int, list[float]]:
    rows = {}
    for p in range(parts):
        part = Partition(partition_path(data_dir, split, p))
        x, _ = part.batch(slice(0, len(part)))
        for i, row_id in enumerate(part.ids.tolist()):
            rows[row_id] = x[i].tolist()
    return rows


def test_etl_writes_every_split_in_partitions(toy_params: dict[str, str]) -> None:
    exp = Experiment(toy_params, workers=2, verbose=False)
    manifest = exp.run_etl(ToyETL(), seed=1)
    assert manifest["splits"]["train"] == {"rows": 240, "sizes": [120, 120]}
    assert manifest["splits"]["predict"]["rows"] == 60
    rows = _all_rows(exp.data_dir, "train", 2)
    csv = pd.read_csv(toy_params["train_main"]).set_index("id")
    assert sorted(rows) == sorted(csv.index.tolist())
    assert rows[1000] == pytest.approx(csv.loc[1000, [f"f{i}" for i in range(6)]].tolist())
    _, labels = Partition(partition_path(exp.data_dir, "train", 0)).batch(slice(0, 3))
    assert labels.dtype == torch.int64
    x, y = Partition(partition_path(exp.data_dir, "predict", 1)).batch(slice(0, 2))
    assert y is None and x.shape == (2, 6)


def test_parallel_equals_serial(toy_params: dict[str, str], tmp_path: Path) -> None:
    from cerebro import etl
    from cerebro.params import validate_params

    params = validate_params(toy_params)
    out = {}
    for procs in (1, 2):
        d = tmp_path / f"data{procs}"
        etl.run_etl(
            ToyETL(),
            params,
            d,
            tmp_path,
            partitions=3,
            fraction=1.0,
            seed=7,
            processes=procs,
            progress=False,
        )
        out[procs] = {
            split: [
                (Partition(partition_path(d, split, p)).ids.tolist(), _all_rows(d, split, 3))
                for p in range(3)
            ]
            for split in ("train", "val")
        }
    assert out[1] == out[2]
    for p in range(3):  # byte-identical array files, not only equal values
        a = (tmp_path / "data1" / "train" / f"part-{p:05d}" / "leaf0.npy").read_bytes()
        b = (tmp_path / "data2" / "train" / f"part-{p:05d}" / "leaf0.npy").read_bytes()
        assert a == b


def test_fraction_is_seeded(toy_params: dict[str, str], tmp_path: Path) -> None:
    from cerebro import etl
    from cerebro.params import validate_params

    params = validate_params(toy_params)
    ids = []
    for run, seed in enumerate((3, 3, 4)):
        d = tmp_path / f"d{run}"
        m = etl.run_etl(
            ToyETL(),
            params,
            d,
            tmp_path,
            partitions=2,
            fraction=0.25,
            seed=seed,
            processes=2,
            progress=False,
        )
        assert m["splits"]["train"]["rows"] == 60
        assert m["splits"]["predict"]["rows"] == 60  # predict is never sampled
        ids.append(sorted(_all_rows(d, "train", 2)))
    assert ids[0] == ids[1] and ids[0] != ids[2]


def test_etl_output_is_reused(toy_params: dict[str, str]) -> None:
    exp = Experiment(toy_params, workers=2, verbose=False)
    exp.run_etl(ToyETL(), seed=1)
    leaf = partition_path(exp.data_dir, "train", 0) / "leaf0.npy"
    before = leaf.stat().st_mtime_ns
    exp.run_etl(ToyETL(), seed=1)
    assert leaf.stat().st_mtime_ns == before
    exp.run_etl(ToyETL(), seed=2)  # a different seed redoes the work
    assert leaf.stat().st_mtime_ns != before
    # etl_dir in params points a new run at this data without recomputing it
    params = dict(
        toy_params,
        etl_dir=str(exp.data_dir),
        output_dir=str(Path(toy_params["output_dir"]) / "again"),
    )
    again = Experiment(params, workers=2, verbose=False)
    assert again.run_etl(ToyETL())["splits"]["train"]["rows"] == 240
    assert again.data_dir == exp.data_dir


class FailingETL(ToyETL):
    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        if row["id"] == 1007:
            raise KeyError("no such column 'pixel'")
        return super().row_prep(row, mode, object_dir)


def test_row_prep_error_names_split_and_row(toy_params: dict[str, str]) -> None:
    exp = Experiment(toy_params, workers=2, verbose=False)
    with pytest.raises(UserCodeError) as err:
        exp.run_etl(FailingETL())
    msg = str(err.value)
    assert "FailingETL.row_prep failed for split 'train', row id 1007" in msg
    assert "KeyError" in msg and "no such column 'pixel'" in msg
    assert "traceback from the worker" in msg and "row_prep" in err.value.user_traceback
    assert not (exp.data_dir / "manifest.json").exists()


class ImageETL(ETLSpec):
    """Reads an object file per row, and a misc file in every process."""

    def read_misc(self, misc_path: str) -> None:
        self.scale = float((Path(misc_path) / "scale.txt").read_text())

    def set_features(self) -> list[str]:
        return ["blob"]

    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        assert object_dir is not None
        arr = np.load(os.path.join(object_dir, row["blob"]))
        return torch.from_numpy(arr) * self.scale, torch.tensor(row["label"])


def _object_params(tmp_path: Path) -> dict[str, Any]:
    objs = tmp_path / "objs"
    objs.mkdir()
    rows = []
    for i in range(10):
        np.save(objs / f"{i}.npy", np.full(3, i, dtype=np.float32))
        rows.append({"id": i, "blob": f"{i}.npy", "label": i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "scale.txt").write_text("2.0")
    return {
        "train_main": str(tmp_path / "train.csv"),
        "train_dir": str(objs),
        "misc": [str(tmp_path / "scale.txt")],
        "output_dir": str(tmp_path / "run"),
    }


def test_object_files_and_misc(tmp_path: Path) -> None:
    exp = Experiment(_object_params(tmp_path), workers=2, verbose=False)
    exp.run_etl(ImageETL())
    rows = _all_rows(exp.data_dir, "train", 2)
    assert rows[7] == [14.0, 14.0, 14.0]


class FlagsETL(ImageETL):
    """The original Cerebro's form of set_features: one bool per column (id, blob, label)."""

    def set_features(self) -> list[bool]:  # type: ignore[override]
        return [False, True, False]


def test_set_features_as_one_bool_per_column(tmp_path: Path) -> None:
    params = _object_params(tmp_path)
    (Path(params["train_dir"]) / "7.npy").unlink()  # so the bools must mark 'blob' as paths
    with pytest.raises(ParamsError, match=r"row id 7, column 'blob': '7.npy' names no file"):
        Experiment(params, workers=2, verbose=False).run_etl(FlagsETL())
    np.save(Path(params["train_dir"]) / "7.npy", np.full(3, 7, dtype=np.float32))
    exp = Experiment(params, workers=2, verbose=False)
    exp.run_etl(FlagsETL())
    assert _all_rows(exp.data_dir, "train", 2)[7] == [14.0, 14.0, 14.0]


def test_row_prep_gets_the_confined_path(tmp_path: Path) -> None:
    """A path that stays inside reaches row_prep normalized: no "..", no "./", no link."""
    params = _object_params(tmp_path)
    objs = Path(params["train_dir"])
    (objs / "sub").mkdir()
    (objs / "sub" / "link").symlink_to(objs / "2.npy")
    df = pd.read_csv(params["train_main"])
    df.loc[df["id"] == 0, "blob"] = "./0.npy"
    df.loc[df["id"] == 1, "blob"] = "sub/../1.npy"
    df.loc[df["id"] == 2, "blob"] = "sub/link"
    df.to_csv(params["train_main"], index=False)

    class Strict(ImageETL):
        def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
            assert row["blob"] == f"{row['id']}.npy", row["blob"]
            return super().row_prep(row, mode, object_dir)

    exp = Experiment(params, workers=2, verbose=False)
    exp.run_etl(Strict())
    rows = _all_rows(exp.data_dir, "train", 2)
    assert [rows[i] for i in range(3)] == [[0.0] * 3, [2.0] * 3, [4.0] * 3]


def _refusal(exp: Experiment, value: str) -> str:
    """The refusal of the ETL whose CSV names ``value`` for row 4 (the id and the value
    itself taken out)."""
    path = exp.params.mains["train"]
    df = pd.read_csv(path)
    df.loc[df["id"] == 4, "blob"] = value
    df.to_csv(path, index=False)
    with pytest.raises(ParamsError) as e:
        exp.run_etl(ImageETL())
    return str(e.value).replace(repr(value), "VALUE")


def test_refusals_do_not_tell_whether_an_outside_file_exists(tmp_path: Path) -> None:
    params = _object_params(tmp_path)
    objs = Path(params["train_dir"])
    (tmp_path / "secret.txt").write_text("outside")
    (objs / "to_secret").symlink_to(tmp_path / "secret.txt")
    (objs / "to_nothing").symlink_to(tmp_path / "nothing.txt")
    with Experiment(params, workers=2, verbose=False) as exp:
        assert _refusal(exp, "../secret.txt") == _refusal(exp, "../nothing.txt")
        assert _refusal(exp, "to_secret") == _refusal(exp, "to_nothing")
        assert "leads outside" in _refusal(exp, "to_nothing")


class SwapETL(ImageETL):
    """Turns 3.npy into a link out of its folder once the driver has checked the CSV:
    ``initialize_worker`` runs in the ETL processes, after the driver's check."""

    def __init__(self, outside: str) -> None:
        self.outside = outside

    def initialize_worker(self) -> None:
        objs = Path(self.outside).parent / "objs"
        tmp = objs / f".swap-{os.getpid()}"
        tmp.symlink_to(self.outside)
        os.replace(tmp, objs / "3.npy")


def test_paths_are_checked_again_where_row_prep_runs(tmp_path: Path) -> None:
    params = _object_params(tmp_path)
    outside = tmp_path / "secret.npy"
    np.save(outside, np.full(3, 99, dtype=np.float32))
    with pytest.raises(ParamsError) as e:
        Experiment(params, workers=2, verbose=False).run_etl(SwapETL(str(outside)))
    message = str(e.value)
    assert "row id 3, column 'blob': '3.npy' is a symbolic link" in message
    assert f"checked on {platform.node()}, where row_prep reads them" in message


class MixedETL(ToyETL):
    """Leaves of dtypes numpy has (int8, bool) and one it lacks (bfloat16), in a dict."""

    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        x, y = super().row_prep(row, mode, object_dir)
        inputs = {"half": x.to(torch.bfloat16), "small": x.to(torch.int8), "pos": x > 0}
        return inputs, (None if y is None else y.to(torch.int8))


def test_every_dtype_reaches_the_partition_as_row_prep_made_it(
    toy_params: dict[str, str], tmp_path: Path
) -> None:
    """Rows travel from the ETL processes as numpy arrays where numpy holds the dtype, as
    tensors where it does not: the partitions get the very values and dtypes either way."""
    from cerebro import etl
    from cerebro.params import validate_params

    params = validate_params(toy_params)
    etl.run_etl(
        MixedETL(), params, tmp_path / "data", tmp_path, partitions=1, fraction=1.0, seed=1,
        processes=1, progress=False,
    )  # fmt: skip
    part = Partition(partition_path(tmp_path / "data", "train", 0))
    inputs, labels = part.batch(slice(0, len(part)))
    csv = pd.read_csv(toy_params["train_main"]).set_index("id").loc[part.ids.tolist()]
    x = torch.tensor(csv[[f"f{i}" for i in range(6)]].to_numpy(), dtype=torch.float32)
    assert torch.equal(inputs["half"], x.to(torch.bfloat16))
    assert torch.equal(inputs["small"], x.to(torch.int8))
    assert torch.equal(inputs["pos"], x > 0)
    assert labels.dtype == torch.int8
    assert labels.tolist() == csv["label"].tolist()


def test_listing_a_folder_confines_as_resolving_each_path_does(tmp_path: Path) -> None:
    """NOTE [ confining many paths ]: the same answer, path or error, for every value, in a
    folder without links (listed), with a link (not listed) and with too many files."""
    from cerebro.etl._paths import BadObjectPath, Confiner, confine

    objs = tmp_path / "objs"
    (objs / "a").mkdir(parents=True)
    (objs / "d").mkdir()
    for name in ("c.png", "a/b.png"):
        (objs / name).write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"s")
    values = ["c.png", "./c.png", "a/../c.png", "a/b.png", "a//b.png", "missing.png", "d",
              "a", "../secret.png", "/etc/passwd", "", "a/b.png/", "link", "a/link2"]  # fmt: skip

    def answers(check: Any) -> list[str]:
        out = []
        for v in values:
            try:
                out.append(f"ok {check(v)}")
            except BadObjectPath as e:
                out.append(f"refused: {e}")
        return out

    root = str(objs)
    listed = Confiner(root, len(values))
    assert answers(listed) == answers(lambda v: confine(root, v))
    assert listed._files == {"c.png", "a/b.png"}  # it did list the folder
    assert Confiner(root, 0)._most < 1100  # (a small CSV lists at most ~1,000 entries)
    (objs / "link").symlink_to(tmp_path / "secret.png")
    (objs / "a" / "link2").symlink_to(objs / "c.png")
    unlisted = Confiner(root, len(values))
    assert answers(unlisted) == answers(lambda v: confine(root, v))
    assert unlisted._files is None  # a link: every value resolved
    assert "ok c.png" in answers(unlisted) and "ok c.png" == answers(unlisted)[-1]
