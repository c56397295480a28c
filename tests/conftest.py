from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from toy import ToyETL, write_toy_csvs

# Hypothesis draws the same examples on every run, here as in CI: a property test that
# fails, fails every time (and one that passes does not pass by luck of the draw). The
# explicit @settings(max_examples=..., deadline=None) of the tests keep this: settings a
# decorator does not name come from the loaded profile.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile("ci")


@pytest.fixture
def toy_params(tmp_path: Path) -> dict[str, str]:
    """params for the toy data set, output under tmp_path/run."""
    params = write_toy_csvs(tmp_path / "csv")
    params["output_dir"] = str(tmp_path / "run")
    return params


@pytest.fixture(scope="session")
def toy_csvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The toy data set's CSVs for the whole session (read-only): ``*_main`` paths."""
    return write_toy_csvs(tmp_path_factory.mktemp("toy-csv"))


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory, toy_csvs: dict[str, str]) -> dict[str, str]:
    """``toy_csvs`` through the ETL once for the whole session (2 partitions, seed 1).

    params with only ``etl_dir``: a run given them reads that data and never writes it
    (``run_etl`` returns its manifest), so every module may share it; add ``output_dir``.
    A test that changes the CSVs or the ETL makes its own data (``toy_params``).
    """
    from cerebro import Experiment

    root = tmp_path_factory.mktemp("toy-data")
    with Experiment(dict(toy_csvs, output_dir=str(root)), workers=2, verbose=False) as exp:
        exp.run_etl(ToyETL(), seed=1)
    return {"etl_dir": str(exp.data_dir)}
