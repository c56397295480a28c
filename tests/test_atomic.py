"""Write-to-temp-then-rename (NOTE [ atomic renames ]): a reader sees the old content or the
new, a failed write leaves the old file and no temporary behind."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cerebro._atomic import replacing, swap_dir, write_atomic


def test_write_atomic_text_and_bytes_and_creates_the_folder(tmp_path: Path) -> None:
    out = write_atomic(tmp_path / "a" / "b.txt", "héllo")
    assert out.read_text(encoding="utf-8") == "héllo"
    write_atomic(out, b"\x00\x01")
    assert out.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    out = write_atomic(tmp_path / "state.bin", b"old")
    with pytest.raises(RuntimeError, match="disk full"), replacing(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_threads_writing_one_file_never_share_a_temporary(tmp_path: Path) -> None:
    out = tmp_path / "f.txt"
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(50):
                write_atomic(out, str(i) * 1000)
        except BaseException as e:  # pragma: no cover - the failure this test looks for
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    text = out.read_text()
    assert len(text) == 1000 and len(set(text)) == 1  # one writer's whole content
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_swap_dir_replaces_a_folder_that_has_files(tmp_path: Path) -> None:
    path, new = tmp_path / "part", tmp_path / ".part.tmp"
    path.mkdir()
    (path / "old.npy").write_text("old")
    new.mkdir()
    (new / "new.npy").write_text("new")
    assert swap_dir(new, path) == path
    assert [p.name for p in path.iterdir()] == ["new.npy"]
    assert [p.name for p in tmp_path.iterdir()] == ["part"]
    newer = tmp_path / ".part.tmp2"
    newer.mkdir()
    swap_dir(newer, tmp_path / "fresh")  # nothing there before
    assert (tmp_path / "fresh").is_dir()
