"""Workers keep freed memory for the next minibatch (glibc's mmap and trim thresholds)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pytest

from cerebro import CerebroError, Experiment
from cerebro.allocator import keep_freed_bytes, keep_freed_memory
from cerebro.engine._process import Child
from cerebro.worker import setup_worker
from toy import ToyETL, ToySpec, write_toy_csvs

GRID = {"lr": [0.05, 0.01], "batch_size": [16]}
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _kept_after_free(state: dict[str, Any], tune: bool) -> tuple[bool, float]:
    """In a fresh process: tune (or not), then how many of 16 freed MB stay resident."""
    tuned = keep_freed_memory() if tune else False
    before = _resident_mb()
    block = bytearray(16 * 2**20)  # zero-filled: every page touched
    del block
    return tuned, _resident_mb() - before


@glibc
@pytest.mark.parametrize("setting", ["1024", "0"])
def test_freed_memory_stays_in_the_process_only_when_tuned(setting: str) -> None:
    child = Child("allocator probe", {"CEREBRO_KEEP_FREED_MB": setting})
    try:
        tuned, kept_mb = child.call(_kept_after_free, True)
    finally:
        child.close()
    if setting == "0":
        assert not tuned and kept_mb < 4  # glibc unmapped the block on free
    else:
        assert tuned and kept_mb > 12  # reused by the next allocation instead


@glibc
def test_a_worker_tunes_its_allocator(tmp_path: Path) -> None:
    params = write_toy_csvs(tmp_path / "csv")
    params["output_dir"] = str(tmp_path / "run")
    with Experiment(params, workers=1, verbose=False) as e:
        e.run_etl(ToyETL(), seed=1)
    child = Child("worker")
    try:
        info = child.call(
            setup_worker, ToySpec(), str(e.data_dir), {"train": [0]}, str(tmp_path), 1, "cpu"
        )
    finally:
        child.close()
    assert info["allocator_tuned"] is True


def test_setting_is_read_in_megabytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CEREBRO_KEEP_FREED_MB", raising=False)
    assert keep_freed_bytes() == 1024 * 2**20
    monkeypatch.setenv("CEREBRO_KEEP_FREED_MB", "0.5")
    assert keep_freed_bytes() == 2**19
    for bad, why in (
        ("lots", "must be a number of megabytes"),
        ("-1", "must be 0 or more"),
        ("nan", "must be 0 or more"),
    ):
        monkeypatch.setenv("CEREBRO_KEEP_FREED_MB", bad)
        with pytest.raises(ValueError, match=f"CEREBRO_KEEP_FREED_MB {why}"):
            keep_freed_bytes()


def test_a_bad_setting_stops_the_fit_before_any_hop_and_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = write_toy_csvs(tmp_path / "csv")
    params["output_dir"] = str(tmp_path / "run")
    with Experiment(params, workers=1, verbose=False) as e:
        e.run_etl(ToyETL(), seed=1)
    monkeypatch.setenv("CEREBRO_KEEP_FREED_MB", "lots")
    with Experiment(params, workers=1, verbose=False) as e:
        with pytest.raises(CerebroError, match="CEREBRO_KEEP_FREED_MB must be a number"):
            e.run_fit(ToySpec(), param_grid=GRID, num_epochs=1, seed=1)
    monkeypatch.delenv("CEREBRO_KEEP_FREED_MB")
    with Experiment(params, workers=1, verbose=False) as e:  # the ETL output was kept
        result = e.run_fit(ToySpec(), param_grid=GRID, num_epochs=1, seed=1)
    assert len(result.table) == 2 and set(result.table["status"]) == {"done"}
