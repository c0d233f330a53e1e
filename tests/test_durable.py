"""deidpipe.durable: the one atomic, durable write (temporary file, fsync, rename, folder fsync)."""

from __future__ import annotations

import os
import stat

import pytest

from deidpipe.durable import atomic_write, fsync_dir, fsync_file, write_synced


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    assert atomic_write(target, [b"new ", b"bytes"]) == target
    assert target.read_bytes() == b"new bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_write_through_a_given_temporary(tmp_path):
    (tmp_path / "tmp").mkdir()
    target = tmp_path / "a.json"
    atomic_write(target, [b"{}"], tmp=tmp_path / "tmp" / "a.part", sync_dir=False)
    assert target.read_bytes() == b"{}" and not any((tmp_path / "tmp").iterdir())


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "public", [b"x"], mode=0o644)
        write_synced(tmp_path / "secret", [b"k"], mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    def parts():
        yield b"half"
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out", parts())
    assert not any(tmp_path.iterdir())


def test_fsync_of_folders_and_files(tmp_path):
    (tmp_path / "f").write_bytes(b"1")
    fsync_file(tmp_path / "f")
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "missing")  # nothing to sync: passed over
