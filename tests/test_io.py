"""Atomic writes reach the disk (fsync before and after the rename); stale temporaries go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tacitbayes import io
from tacitbayes.errors import InputError


def test_atomic_write_syncs_the_file_then_renames_then_syncs_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = (
            Path(os.readlink(f"/proc/self/fd/{fd}")) if Path("/proc/self/fd").is_dir() else None
        )
        events.append("fsync-dir" if target is not None and target.is_dir() else "fsync-file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        assert Path(src).name.endswith(io.TMP_SUFFIX) and Path(src).parent == Path(dst).parent
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    io.write_json(tmp_path / "results.json", {"a": 1})
    if Path("/proc/self/fd").is_dir():
        assert events == ["fsync-file", "rename", "fsync-dir"]
    else:
        assert events[1] == "rename" and len(events) >= 2
    assert (tmp_path / "results.json").read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), io.atomic_path(tmp_path / "x.pt") as tmp:
        tmp.write_bytes(b"half")
        raise ZeroDivisionError
    assert not any(tmp_path.iterdir())


def test_check_output_dir_removes_a_killed_runs_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / f".map.pt.k3j1{io.TMP_SUFFIX}", out / f"{io.PROBE_PREFIX}abc"]
    keep = [out / "map.pt", out / "notes.tmp", out / ".hidden"]
    for p in (*stale, *keep):
        p.write_bytes(b"x")
    assert io.check_output_dir(out) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in keep)


def test_check_output_dir_creates_nothing_and_refuses_files(tmp_path: Path) -> None:
    assert io.check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists() and not any(tmp_path.iterdir())
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is an existing file, not a directory"):
        io.check_output_dir(tmp_path / "f")
    with pytest.raises(InputError, match="cannot be created: .*f is a file, not a directory"):
        io.check_output_dir(tmp_path / "f" / "g" / "h")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="not a directory"):
        io.check_output_dir(tmp_path / "dangling")
