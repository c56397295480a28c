from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from toy import write_toy_csvs

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
