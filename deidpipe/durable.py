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
import uuid
from collections.abc import Iterable
from pathlib import Path

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


def write_synced(path: str | Path, parts: Iterable[bytes], *, mode: int | None = None) -> None:
    """Write ``parts`` one after the other to a new file ``path`` (replacing any file of that name) and fsync
    it; its name is not synced (see :func:`fsync_dir`). ``mode``: the file's permissions, exactly (the umask does
    not apply), set before a byte is written; by default those of ``open``. On failure the file is removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:  # owns the descriptor from here: closed whatever fails below
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            for part in parts:
                fh.write(part)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise


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
