"""The example notebook runs top to bottom in a real Jupyter kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).parent.parent / "examples" / "digits_notebook.ipynb"


def test_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEREBRO_NOTEBOOK_DIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "test_acc" in text and "row_id" in text
    lines = (tmp_path / "run" / "predictions" / "best.csv").read_text().splitlines()
    assert lines[0] == "row_id,output_class,confidence" and len(lines) > 1
    assert (tmp_path / "run" / "report.html").is_file()
