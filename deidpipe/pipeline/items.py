"""What a source lists: :class:`SourceSpec`, :class:`SourceItem`, the bounds on one member, and the fixed reasons
for entries that are listed but not read. Shared by :mod:`deidpipe.pipeline.source` (folders, the listing) and
:mod:`deidpipe.pipeline.archives` (zip and tar, nested ones included); the bounds are read from this module when
they are applied, so a test can lower them here.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

from deidpipe.errors import InputError

#: Members larger than this are listed and quarantined rather than read into memory (a DICOM object is rarely
#: above a few hundred MB; anything larger is almost always something else).
MAX_MEMBER_BYTES = 2 * 1024**3
#: A zip member that declares more than this many bytes, and more than MAX_COMPRESSION_RATIO times its compressed
#: size, is a zip bomb, not an image: deflate cannot do better than about 1030:1, and only on nothing but zeros.
BOMB_RATIO_FLOOR = 8 * 1024**2
MAX_COMPRESSION_RATIO = 1000


@dataclass(frozen=True)
class SourceSpec:
    """A picklable description of a source: enough for a worker to open members by relative path."""

    kind: str  # "folder" | "zip" | "tar"
    root: str  # absolute path of the folder or archive

    @property
    def random_access(self) -> bool:
        return self.kind in ("folder", "zip")


@dataclass(frozen=True)
class SourceItem:
    """One member of a source. ``data`` is set for streamed (tar) members only.

    ``skip`` is a fixed reason for an entry that is listed but never read; ``quarantine`` says whether it is an
    input that should have been processed (reported as quarantined, a failure of the run) or something that is
    not an object at all (reported as skipped)."""

    relpath: str
    size: int
    data: bytes | None = None
    skip: str | None = None
    quarantine: bool = False


# -- fixed reasons for entries that are listed but not read ----------------------------------------------------
# Entries that are not objects at all are *skipped*; entries that should have been inputs but cannot be read
# safely are *quarantined* (``SourceItem.quarantine``), so that the run reports them as failures.
REASON_LINK_LOOP = "symbolic link loop"
REASON_LINK_DANGLING = "dangling symbolic link"
REASON_LINK_FOLDER = "symbolic link to a folder (not followed)"
REASON_LINK_OUTSIDE = "symbolic link out of the source tree (not followed)"
REASON_LINK_BROKEN = "symbolic link cannot be followed"
REASON_FIFO = "named pipe (FIFO)"
REASON_SOCKET = "socket"
REASON_DEVICE = "device file"
REASON_SPECIAL = "not a regular file"
REASON_UNREADABLE_FOLDER = "unreadable folder"
REASON_UNINSPECTABLE = "cannot be inspected"
REASON_BAD_NAME = "name is not valid UTF-8"
REASON_TRAVERSAL = "archive member name escapes the archive (path traversal)"
REASON_ABSOLUTE = "archive member name is an absolute path"
REASON_NO_NAME = "archive member has no name"
REASON_DUPLICATE = "archive member name occurs more than once"
REASON_SYMLINK_MEMBER = "symbolic link member (not followed)"
REASON_HARDLINK_MEMBER = "hard link member (not followed)"
REASON_ENCRYPTED = "encrypted archive member"
REASON_TOO_LARGE = "declared size is over the limit for one object"
REASON_RATIO = "compression ratio of a zip bomb"
REASON_OVERLAP = "archive member overlaps another (zip bomb)"
REASON_CORRUPT_MEMBER = "archive member is corrupt (checksum or size mismatch)"
REASON_BROKEN_ARCHIVE = "archive cannot be read from here on (truncated or corrupt)"

#: A rejected archive member is listed as ``!member//<n>``, n its position (from 0) in the archive's own listing
#: (``unzip -l``, ``tar tv``). The empty component makes the name one that no cleaned member name and no file
#: below a folder can have, so it never collides with a real input (the object id is a keyed hash of it), and a
#: member name that was refused never reaches anything that builds a path from it.
REJECTED_PREFIX = "!member//"


def skipped_item(relpath: str, reason: str, size: int = 0) -> SourceItem:
    return SourceItem(relpath, max(size, 0), skip=reason)


def rejected_item(relpath: str, reason: str, size: int = 0) -> SourceItem:
    return SourceItem(relpath, max(size, 0), skip=reason, quarantine=True)


def special_reason(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return REASON_FIFO
    if stat.S_ISSOCK(mode):
        return REASON_SOCKET
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return REASON_DEVICE
    return REASON_SPECIAL


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # surrogate escapes of bytes that are not UTF-8
        return False


def member_relpath(name: str) -> tuple[str | None, str | None]:
    """(cleaned relative POSIX path, None), or (None, reason) for a name that is absolute or escapes the root.
    Backslashes count as separators: a Windows-made archive uses them, and ``..\\x`` must not slip through."""
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) >= 2 and text[1] == ":" and text[0].isalpha()):
        return None, REASON_ABSOLUTE
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None, REASON_TRAVERSAL
    if not parts:
        return None, REASON_NO_NAME
    if not is_utf8(name):
        return None, REASON_BAD_NAME
    return "/".join(parts), None


def member_item(index: int, name: str, size: int, problem: tuple[str, bool] | None, seen: set[str],
                 data: bytes | None = None) -> SourceItem:
    """The item for archive member number ``index``: under its cleaned name when it is to be read, else under
    :data:`REJECTED_PREFIX` with the reason (a bad name is quarantined; ``problem`` is (reason, quarantine)).
    A name already ``seen`` is quarantined: the first member of that name is the one read."""
    if problem is None:
        rel, bad_name = member_relpath(name)
        if rel is not None and rel in seen:
            bad_name = REASON_DUPLICATE
        if bad_name is None and rel is not None:
            seen.add(rel)
            return SourceItem(rel, size, data)
        problem = (bad_name or REASON_NO_NAME, True)
    reason, quarantine = problem
    return SourceItem(f"{REJECTED_PREFIX}{index}", max(size, 0), skip=reason, quarantine=quarantine)


def open_regular(path: str, buffering: int = -1) -> BinaryIO:
    """``path`` opened for reading if it is a regular file; :class:`InputError` otherwise. Opened non-blocking,
    so that a FIFO put in place of a listed file after the listing cannot hang the open."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(None, REASON_SPECIAL)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise
