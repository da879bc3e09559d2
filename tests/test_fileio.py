"""Atomic writes: the target appears whole or not at all, and no temporary file is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from dentalmim.fileio import atomic_open, atomic_write_bytes, atomic_write_text


@pytest.mark.parametrize("fsync", [False, True])
def test_write_leaves_only_the_target(tmp_path: Path, fsync: bool) -> None:
    target = tmp_path / "out.bin"
    assert atomic_write_bytes(target, b"\x00\x01data", fsync=fsync) == target
    assert target.read_bytes() == b"\x00\x01data"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]
    assert target.stat().st_mode & 0o077 == 0  # private, like every stored scan


def test_shared_files_get_the_mode_open_would_give(tmp_path: Path) -> None:
    plain = tmp_path / "plain.html"
    plain.write_bytes(b"x")
    shared = atomic_write_bytes(tmp_path / "report.html", b"x", private=False)
    assert shared.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_text_is_utf8_and_replaces_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    target.write_text("old")
    atomic_write_text(target, "Zahnkaries – ü\n")
    assert target.read_bytes() == "Zahnkaries – ü\n".encode()


def test_an_error_inside_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("complete old report")
    with pytest.raises(RuntimeError, match="renderer failed"):
        with atomic_open(target, "w") as fh:
            fh.write("half a new rep")
            raise RuntimeError("renderer failed")
    assert target.read_text() == "complete old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_a_missing_folder_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "nowhere" / "x.bin", b"")
    assert not (tmp_path / "nowhere").exists()


def test_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode should be 'wb' or 'w'"):
        with atomic_open(tmp_path / "f", "a"):
            pass
