"""The README's Python code runs as written.

NOTE [ which README blocks run ]
Every fenced block whose info string is ``python`` (or ``py``) is a whole program: this test
runs each one as a script in a fresh interpreter, in an empty temporary folder, and it must
exit 0. A block that is only a fragment (a signature, a call out of context) must say so in
its info string, ```` ```python fragment ````, and is skipped; GitHub still highlights it as
Python. Any other word after ``python`` is an error here, so a block is never skipped by
accident.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
    """The whole-program Python blocks of a Markdown text (see the NOTE above)."""
    blocks = []
    for match in FENCE.finditer(text):
        words = match.group(1).split()
        if not words or words[0].lower() not in ("python", "py"):
            continue
        if words[1:] == ["fragment"]:
            continue
        if words[1:]:
            raise ValueError(
                f"README block labelled {match.group(1)!r}: use `python` (a whole program, "
                f"run by this test) or `python fragment` (skipped)."
            )
        blocks.append(match.group(2))
    return blocks


def test_block_rule() -> None:
    text = (
        "```python\nprint(1)\n```\n"
        "```python fragment\nexp.run_test(spec)\n```\n"
        "```bash\nls\n```\n"
        "```py\nprint(2)\n```\n"
    )
    assert python_blocks(text) == ["print(1)\n", "print(2)\n"]
    with pytest.raises(ValueError, match="python fragment"):
        python_blocks("```python skip\nx\n```\n")


def test_readme_example_runs(tmp_path: Path) -> None:
    """The "What you write" script: ETL, fit, test, predict and load, then its outputs."""
    blocks = python_blocks(README.read_text())
    assert blocks, "the README has no whole-program python block"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    for i, code in enumerate(blocks):
        script = tmp_path / f"readme_block_{i}.py"
        script.write_text(code)
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, (
            f"README python block {i} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    # The outputs the example promises, where it says they are.
    assert "test_loss" in proc.stdout and "test_acc" in proc.stdout
    predictions = tmp_path / "runs" / "digits" / "predictions" / "best.csv"
    assert predictions.is_file(), proc.stdout[-2000:]
    with predictions.open() as f:
        rows = list(csv.DictReader(f))
    with (tmp_path / "data" / "test.csv").open() as f:
        labels = {int(r["id"]): int(r["label"]) for r in csv.DictReader(f)}
    assert rows and list(rows[0]) == ["row_id", "output_class", "confidence"]
    assert sorted(int(r["row_id"]) for r in rows) == sorted(labels)  # one per predict row
    right = sum(int(r["output_class"]) == labels[int(r["row_id"])] for r in rows)
    assert right / len(rows) > 0.8  # a trained model, not noise
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)
