from __future__ import annotations

from pathlib import Path

import pytest

from toy import write_toy_csvs


@pytest.fixture
def toy_params(tmp_path: Path) -> dict[str, str]:
    """params for the toy data set, output under tmp_path/run."""
    params = write_toy_csvs(tmp_path / "csv")
    params["output_dir"] = str(tmp_path / "run")
    return params
