"""``etl_dir`` as the original meant it: with the CSVs in params, ``run_etl`` writes there
(and a later run with the same inputs reuses it); with ``etl_dir`` alone the data there is
read; a folder holding anything but Cerebro's output is refused and left as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cerebro import CerebroError, Experiment, ParamsError, UserCodeError
from cerebro._rundir import RunLock, load_experiment
from cerebro.etl import MANIFEST
from cerebro.params import ETL_MARK
from cerebro.partitions import partition_path
from toy import ToyETL, ToySpec, worker_pids, write_toy_csvs


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The toy CSVs, and their ETL written by a first run into a missing ``etl_dir``."""
    root = tmp_path_factory.mktemp("etl-dir")
    csv = write_toy_csvs(root / "csv")
    etl_dir = root / "ProcessedData"
    params = dict(csv, etl_dir=str(etl_dir), output_dir=str(root / "first"))
    with Experiment(params, workers=2, verbose=False) as exp:
        manifest = exp.run_etl(ToyETL(), seed=1)
        assert exp.data_dir == etl_dir
    return {"root": root, "csv": csv, "etl_dir": etl_dir, "manifest": manifest}


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_run_etl_writes_into_etl_dir_and_a_second_run_reuses_it(shared: dict[str, Any]) -> None:
    etl_dir: Path = shared["etl_dir"]
    assert shared["manifest"]["splits"]["train"] == {"rows": 240, "sizes": [120, 120]}
    assert (etl_dir / MANIFEST).is_file() and (etl_dir / ETL_MARK).is_file()
    assert partition_path(etl_dir, "predict", 1).is_dir()
    assert not (shared["root"] / "first" / "data").exists()  # nothing in the run's own dir
    # resume does not redo an ETL into an etl_dir, which other runs may share
    assert "etl" not in (load_experiment(shared["root"] / "first") or {})

    before = _snapshot(etl_dir)
    params = dict(shared["csv"], etl_dir=str(etl_dir), output_dir=str(shared["root"] / "again"))
    with Experiment(params, workers=2, verbose=False) as again:
        assert again.run_etl(ToyETL(), seed=1) == shared["manifest"]
        after = _snapshot(etl_dir)
        # the same inputs: not one partition nor the manifest rewritten (only the lock
        # file, which says who used the folder last)
        assert {k: v for k, v in after.items() if k != ".lock"} == {
            k: v for k, v in before.items() if k != ".lock"
        }


class _Failing(ToyETL):
    def row_prep(self, row: dict[str, Any], mode: str, object_dir: str | None) -> Any:
        if mode == "test":
            raise ValueError("broken image")
        return super().row_prep(row, mode, object_dir)


def test_changed_inputs_redo_the_etl_in_etl_dir_even_after_an_interrupted_one(
    tmp_path: Path,
) -> None:
    """A changed input replaces the data in ``etl_dir`` (it is Cerebro's), and so does a
    rerun after a failed ETL left half its partitions and no manifest there."""
    csv = write_toy_csvs(tmp_path / "csv")
    etl_dir = tmp_path / "data"
    params = dict(csv, etl_dir=str(etl_dir), output_dir=str(tmp_path / "run"))
    with Experiment(params, workers=2, verbose=False) as exp:
        one = exp.run_etl(ToyETL(), seed=1)
        mtime = (etl_dir / MANIFEST).stat().st_mtime_ns
        with pytest.raises(UserCodeError, match="broken image"):
            exp.run_etl(_Failing(), seed=1)  # another spec: redone, and fails half-way
        assert not (etl_dir / MANIFEST).exists() and partition_path(etl_dir, "train", 0).is_dir()
        # those leftovers are Cerebro's: a new experiment accepts the folder ...
        Experiment(dict(params, output_dir=str(tmp_path / "other")), 2, verbose=False).close()
        two = exp.run_etl(ToyETL(), seed=2)  # ... and the ETL writes there again
    assert one["fingerprint"]["seed"] == 1 and two["fingerprint"]["seed"] == 2
    assert json.loads((etl_dir / MANIFEST).read_text()) == two
    assert (etl_dir / MANIFEST).stat().st_mtime_ns != mtime


def test_only_etl_dir_reads_the_data_there(shared: dict[str, Any], tmp_path: Path) -> None:
    others = set(worker_pids())  # live workers of earlier tests' experiments
    before = _snapshot(shared["etl_dir"])
    params = {"etl_dir": str(shared["etl_dir"]), "output_dir": str(tmp_path / "run")}
    with Experiment(params, workers=2, verbose=False) as exp:
        assert exp.run_etl(ToyETL(), seed=5) == shared["manifest"]  # read, never run
        assert set(worker_pids()) <= others  # nothing to run: no worker started
        result = exp.run_fit(ToySpec(), {"lr": [0.05], "batch_size": [64]}, 1)
        assert set(result.table["status"]) == {"done"}
    assert _snapshot(shared["etl_dir"]) == before


@pytest.mark.parametrize(
    "content",
    [
        {"notes.txt": "my data"},
        {"train/img0.png": "raw", "val/img1.png": "raw"},  # a data set's split folders
        {MANIFEST: json.dumps({"name": "someone else's manifest"})},
    ],
    ids=["a file", "split folders", "another manifest"],
)
def test_a_foreign_etl_dir_is_refused_and_untouched(
    tmp_path: Path, content: dict[str, str]
) -> None:
    foreign = tmp_path / "mine"
    for name, text in content.items():
        (foreign / name).parent.mkdir(parents=True, exist_ok=True)
        (foreign / name).write_text(text)
    before = _snapshot(foreign)
    params = dict(write_toy_csvs(tmp_path / "csv"), etl_dir=str(foreign))
    params["output_dir"] = str(tmp_path / "run")
    with pytest.raises(
        ParamsError,
        match=r"params\['etl_dir'\] = '.*mine' holds files that are not Cerebro's preprocessed "
        r"data \(.+\), and run_etl replaces what it finds there, so it leaves the folder "
        r"alone. Point etl_dir at a new or empty folder",
    ):
        Experiment(params, workers=2, verbose=False)
    assert _snapshot(foreign) == before


def test_an_etl_dir_that_turned_foreign_is_refused_by_run_etl(tmp_path: Path) -> None:
    """Checked again right before the ETL would replace anything (here a user's file came
    after ``Experiment()``), so nothing of it is lost."""
    others = set(worker_pids())  # live workers of earlier tests' experiments
    folder = tmp_path / "empty"
    folder.mkdir()
    params = dict(write_toy_csvs(tmp_path / "csv"), etl_dir=str(folder))
    exp = Experiment(dict(params, output_dir=str(tmp_path / "run")), workers=2, verbose=False)
    (folder / "train").mkdir()
    (folder / "train" / "cat.jpg").write_bytes(b"\xff\xd8")
    before = _snapshot(folder)
    with pytest.raises(ParamsError, match=r"holds files that are not Cerebro's .*\(train\)"):
        exp.run_etl(ToyETL())
    assert _snapshot(folder) == before and set(worker_pids()) <= others
    exp.close()


def test_etl_dir_path_errors(tmp_path: Path) -> None:
    csv = write_toy_csvs(tmp_path / "csv")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ParamsError, match=r"params\['etl_dir'\] = '.*file' is a file, not a"):
        Experiment(dict(csv, etl_dir=str(tmp_path / "file"), output_dir=str(tmp_path / "r")))
    with pytest.raises(
        ParamsError,
        match=r"params\['output_dir'\] = '.*d/run' is inside params\['etl_dir'\] = '.*d', which "
        r"run_etl fills with the preprocessed data .* Give them separate folders",
    ):
        Experiment(dict(csv, etl_dir=str(tmp_path / "d"), output_dir=str(tmp_path / "d" / "run")))
    with pytest.raises(
        ParamsError,
        match=r"params\['etl_dir'\] = '.*nowhere': no such folder\. It must be the data folder "
        r"of an earlier run \(DIR/data\), or give the CSVs",
    ):
        Experiment({"etl_dir": str(tmp_path / "nowhere"), "output_dir": str(tmp_path / "r")})
    exp = Experiment(dict(csv, etl_dir=str(tmp_path / "file" / "data"), output_dir=str(tmp_path)))
    with pytest.raises(
        ParamsError,
        match=r"cannot write the preprocessed data into .*file/data: .*Choose a writable "
        r"etl_dir \(or output_dir\)",
    ):
        exp.run_etl(ToyETL())
    (tmp_path / "empty").mkdir()
    exp = Experiment({"etl_dir": str(tmp_path / "empty"), "output_dir": str(tmp_path / "r")})
    with pytest.raises(
        ParamsError,
        match=r"etl_dir .*empty holds no finished ETL \(manifest.json missing\)\. Give the "
        r"CSVs \(train_main \.\.\.\) in params as well",
    ):
        exp.run_etl(ToyETL())


def test_a_second_etl_into_the_same_etl_dir_waits_its_turn(tmp_path: Path) -> None:
    others = set(worker_pids())  # live workers of earlier tests' experiments
    etl_dir = tmp_path / "data"
    params = dict(write_toy_csvs(tmp_path / "csv"), etl_dir=str(etl_dir))
    exp = Experiment(dict(params, output_dir=str(tmp_path / "run")), workers=2, verbose=False)
    etl_dir.mkdir()
    (etl_dir / ETL_MARK).touch()  # another run's ETL, writing there: marked, then locked
    with RunLock(etl_dir):
        with pytest.raises(
            CerebroError,
            match=r"etl_dir .*data is in use by another run's ETL \(process \d+ .*\)\. Wait "
            r"for it to finish",
        ):
            exp.run_etl(ToyETL())
    assert set(worker_pids()) <= others
    exp.close()
