"""Durable writes: a file's bytes, and its name, on disk when the call returns (one implementation for the run's
output tree and journal, the node's queue and deliveries, and the HE containers).

A crash or a power cut must never leave a short file under a final name, nor lose a name the journal (or a
C-STORE Success) has already promised. The pattern is always the same:

1. write the bytes to a temporary file on the same file system (:func:`write_synced`) and ``fsync`` it, so
   that the data is on disk before any name points at it;
2. ``os.replace`` it onto the final name (atomic: a reader sees the old file or the new one, never half);
3. ``fsync`` the folder (:func:`fsync_dir`), so that the new name survives too.

:func:`atomic_write` does all three; a caller that renames many files into one folder, or links rather than
replaces (the run's output tree never replaces a finished file), uses the pieces and syncs each folder once.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

#: Errors of a folder ``fsync`` on file systems that cannot sync a folder (some network and FUSE ones): passed
#: over. Any other error is raised, so that nothing records as durable what may not be on disk.
_CANNOT_SYNC_FOLDER = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EBADF})


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (files created, linked, renamed or removed in it) durable. A folder that does not
    exist has nothing to sync; a file system that cannot sync a folder is passed over."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _CANNOT_SYNC_FOLDER:
            raise
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Make the bytes of a file already written (and closed, or appended to by another handle) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: str | Path, parts: Iterable[bytes], *, mode: int | None = None, sync: bool = True) -> None:
    """Write ``parts`` one after the other to a new file ``path`` (replacing any file of that name) and fsync
    it; its name is not synced (see :func:`fsync_dir`). ``mode``: the file's permissions, exactly (the umask does
    not apply), set before a byte is written; by default those of ``open``. ``sync=False``: no fsync, the caller
    makes the file durable later (:class:`GroupCommit`, one sync for many files). On failure the file is removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:  # owns the descriptor from here: closed whatever fails below
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            for part in parts:
                fh.write(part)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise


@cache
def _libc() -> Any:
    """The C library (for ``syncfs``), loaded once per process; None where it cannot be."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


@cache
def _syncfs_reports_errors() -> bool:
    """Whether this kernel's ``syncfs`` reports a write-back error (Linux 5.8 and later; before, it returned 0
    after an I/O error, where an fsync of the file reports it)."""
    import platform

    if platform.system() != "Linux":
        return False
    try:
        major, minor = (int(x) for x in platform.release().split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


def syncfs(path: str | Path) -> bool:
    """``syncfs(2)`` on the file system that holds ``path``: one call makes every file written there durable.
    False where it is not available (not Linux, no libc, a kernel before 5.8, whose ``syncfs`` does not report
    write-back errors), or failed: the caller then fsyncs file by file."""
    libc = _libc()
    if libc is None or not _syncfs_reports_errors():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return bool(libc.syncfs(fd) == 0)
    except AttributeError:
        return False
    finally:
        os.close(fd)


def sync_files(files: Sequence[Path], fs_path: str | Path) -> None:
    """Make ``files`` (written, not yet synced, all on the file system of ``fs_path``) durable: one ``syncfs``
    for two or more where it works (an fsync each is a journal commit each), else an fsync per file."""
    if len(files) > 1 and syncfs(fs_path):
        return
    for f in files:
        fsync_file(f)


def atomic_write(target: str | Path, parts: Iterable[bytes], *, tmp: str | Path | None = None,
                 mode: int | None = None, sync_dir: bool = True) -> Path:
    """Write ``parts`` to ``target`` durably and atomically: a temporary file, fsynced, renamed onto ``target``
    (replacing any file there), then ``target``'s folder fsynced.

    ``tmp``: the temporary file (on ``target``'s file system; a queue keeps its own folder for them, emptied at
    start-up); by default a hidden, unique name beside ``target``. ``mode``: see :func:`write_synced`.
    ``sync_dir=False``: the caller syncs the folder itself (once for many files). The temporary file never
    survives a failure."""
    target = Path(target)
    tmp = Path(tmp) if tmp is not None else target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    write_synced(tmp, parts, mode=mode)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(target.parent)
    return target


@dataclass
class _Batch:
    """The writes that one sync makes durable: (temporary file, final name) pairs, and how their sync ended."""

    items: list[tuple[Path, Path]] = field(default_factory=list)
    done: bool = False
    error: OSError | None = None


class GroupCommit:
    """Atomic durable writes from many threads into one folder, made durable together (group commit).

    :meth:`write` writes its file under ``tmp_dir`` without an fsync and joins the open batch. When no sync is
    running, the first writer of the batch takes it (every writer that joined meanwhile) and makes it durable:
    one ``syncfs`` of the file system (an fsync per file where there is none), each file renamed onto its final
    name, then one fsync of the final folder. Every writer of the batch returns once that is done; if it failed,
    each gets the ``OSError`` (and a file not yet renamed is removed). So when :meth:`write` returns, the
    bytes and the name are on disk, as after :func:`atomic_write`, and writers that arrive together (several
    associations of a node) share one sync instead of paying one file fsync and one folder fsync each.

    ``tmp_dir`` and the final folder must be on one file system. A crash leaves at most files in ``tmp_dir``,
    which its owner empties at start (:meth:`deidpipe.serve.queue.Queue.recover`). A batch that fails after some
    renames (the folder's fsync failed) leaves those files in place, whole; their writers were told it failed, and
    a sender that sends again writes the same name.
    """

    def __init__(self, tmp_dir: str | Path, folder: str | Path) -> None:
        self.tmp_dir, self.folder = Path(tmp_dir), Path(folder)
        self._cond = threading.Condition()
        self._open = _Batch()
        self._syncing = False
        #: Batches made durable so far (the tests read it; a batch holds every writer that joined it).
        self.syncs = 0

    def write(self, name: str, parts: Iterable[bytes]) -> Path:
        """Write ``parts`` to ``folder/name`` atomically and durably (see the class); raises OSError if not."""
        tmp = self.tmp_dir / f"{name}.{uuid.uuid4().hex}"
        write_synced(tmp, parts, sync=False)
        target = self.folder / name
        with self._cond:
            batch = self._open
            batch.items.append((tmp, target))
            while not batch.done and self._syncing:
                self._cond.wait()
            if not batch.done:  # no sync running, and this batch still open: this writer syncs it
                self._syncing, self._open = True, _Batch()
        if not batch.done:
            self._commit(batch)
        if batch.error is not None:
            raise OSError(batch.error.errno, batch.error.strerror)
        return target

    def _sync(self, files: Sequence[Path]) -> None:
        """Make the batch's files durable (:func:`sync_files`)."""
        sync_files(files, self.tmp_dir)

    def _commit(self, batch: _Batch) -> None:
        try:
            self._sync([tmp for tmp, _ in batch.items])
            for tmp, target in batch.items:
                os.replace(tmp, target)
            fsync_dir(self.folder)
        except BaseException as exc:  # noqa: BLE001 - whatever ends the sync, no writer of the batch may succeed
            # The writers are told it failed. Files not yet renamed go; one already renamed was synced first, so it
            # is whole (only its name may not survive a crash), and removing it could remove an earlier copy of
            # the same name that was reported durable.
            batch.error = exc if isinstance(exc, OSError) else OSError(
                errno.EIO, f"group commit failed ({type(exc).__name__})")
            for tmp, _ in batch.items:
                tmp.unlink(missing_ok=True)
        finally:
            with self._cond:
                batch.done, self._syncing = True, False
                self.syncs += 1
                self._cond.notify_all()
