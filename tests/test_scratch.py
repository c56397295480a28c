"""NOTE [ scratch folders ]: a scratch folder goes when its process exits, and a killed
process's folder goes at the next start of the same kind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cerebro._scratch import private_dir

MAKE = """
import os, signal, sys
from cerebro._scratch import private_dir
print(private_dir("cerebro-test-", sys.argv[1]), flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _made(root: Path, how: str) -> Path:
    out = subprocess.run(
        [sys.executable, "-c", MAKE, str(root), how], capture_output=True, text=True, timeout=60
    )
    return Path(out.stdout.strip())


def test_a_folder_goes_with_its_process_and_a_killed_ones_at_the_next_start(
    tmp_path: Path,
) -> None:
    ended = _made(tmp_path, "exit")
    assert ended.name.startswith("cerebro-test-") and not ended.exists()
    killed = _made(tmp_path, "kill")
    assert killed.is_dir()  # SIGKILL: nothing could remove it
    other = tmp_path / "cerebro-other-1-x"  # another kind: not ours to sweep
    other.mkdir()
    mine = private_dir("cerebro-test-", str(tmp_path))
    assert not killed.exists()
    assert Path(mine).name.startswith(f"cerebro-test-{os.getpid()}-") and other.is_dir()
    again = private_dir("cerebro-test-", str(tmp_path))
    assert Path(mine).is_dir() and Path(again).is_dir()  # a live process keeps its own
