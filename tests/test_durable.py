"""deidpipe.durable: the one atomic, durable write (temporary file, fsync, rename, folder fsync), and its group
commit (writers from several threads made durable by one sync)."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time

import pytest

from deidpipe.durable import GroupCommit, atomic_write, fsync_dir, fsync_file, write_synced


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


class _HeldSync(GroupCommit):
    """A group commit whose first sync waits for ``release``: the writers that come meanwhile join the next batch
    (as objects arriving on other associations while one sync runs). ``fail``: every sync raises it."""

    def __init__(self, *args, fail: BaseException | None = None) -> None:
        super().__init__(*args)
        self.release, self.held, self.fail = threading.Event(), threading.Event(), fail

    def _sync(self, files):
        if not self.held.is_set():
            self.held.set()
            assert self.release.wait(30)
        if self.fail is not None:
            raise self.fail
        super()._sync(files)


def _writers(gc: GroupCommit, names: list[str]) -> tuple[list[threading.Thread], dict[str, BaseException]]:
    errors: dict[str, BaseException] = {}

    def write(name: str) -> None:
        try:
            gc.write(name, [name.encode(), b"-bytes"])
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors[name] = exc

    threads = [threading.Thread(target=write, args=(n,)) for n in names]
    return threads, errors


def _start_while_held(gc: _HeldSync, first: str, others: list[str]):
    threads, errors = _writers(gc, [first, *others])
    threads[0].start()
    assert gc.held.wait(30)  # the first writer syncs its batch, alone
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 30
    while len(gc._open.items) < len(others) and time.monotonic() < deadline:  # the others joined the next batch
        time.sleep(0.005)
    gc.release.set()
    for t in threads:
        t.join(30)
    return errors


def test_group_commit_writers_that_come_together_share_one_sync(tmp_path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "in").mkdir()
    gc = _HeldSync(tmp_path / "tmp", tmp_path / "in")
    errors = _start_while_held(gc, "a", ["b", "c", "d", "e"])
    assert not errors
    assert gc.syncs == 2  # five durable writes, two syncs: the first alone, the four that came meanwhile together
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == {
        n: n.encode() + b"-bytes" for n in "abcde"}
    assert not any((tmp_path / "tmp").iterdir())
    assert gc.write("f", [b"alone"]) == tmp_path / "in" / "f" and gc.syncs == 3


@pytest.mark.parametrize("failure", [OSError(errno.EIO, "Input/output error"), RuntimeError("not an OSError")],
                         ids=["oserror", "other"])
def test_group_commit_failed_sync_fails_every_writer_of_the_batch(tmp_path, failure):
    """Whatever ends a sync, every writer of its batch gets an OSError (EIO where the failure was no OSError):
    none is told its object is durable."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "in").mkdir()
    GroupCommit(tmp_path / "tmp", tmp_path / "in").write("b", [b"earlier copy"])
    gc = _HeldSync(tmp_path / "tmp", tmp_path / "in", fail=failure)
    errors = _start_while_held(gc, "a", ["b", "c"])
    assert sorted(errors) == ["a", "b", "c"]
    assert all(isinstance(e, OSError) and e.errno == errno.EIO for e in errors.values())
    # nothing of the failed batches got a name; the copy reported durable earlier is still there
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == {"b": b"earlier copy"}
    assert not any((tmp_path / "tmp").iterdir())
