"""Where objects come from: a folder tree, a .zip, or a .tar / .tar.gz read as a stream.

A source lists its members as :class:`SourceItem` (relative path and size) in a stable, sorted order. Every entry
is listed, also those that are not read (links that leave the tree or loop, special files, unreadable folders,
hostile or broken archive members): they carry a fixed ``skip`` reason, so the manifest and the audit account for
each, and a listing never raises for what a source holds.

Folders and zip files are *random access*: a worker process reads a member itself from a picklable
:class:`SourceSpec`, so only paths travel between processes. A tar archive is read front to back once per pass
and the members' bytes travel with the tasks; nothing is extracted to disk and only a bounded number of members
is held in memory at a time.

A zip or tar inside a folder, and an archive inside an archive (one level), is listed as its members
(:mod:`deidpipe.pipeline.archives`); the types, bounds and reasons are in :mod:`deidpipe.pipeline.items`.

Nothing here writes to the source.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from deidpipe.errors import InputError
from deidpipe.pipeline import items as _items
from deidpipe.pipeline.archives import (
    ARCHIVE_HEAD_BYTES,
    NEST_SEP,
    archive_kind,
    expand_archive,
    iter_tar,
    iter_zip,
    read_nested,
    read_zip_member,
)
from deidpipe.pipeline.items import (  # re-exported: the names every caller of the source knows
    BOMB_RATIO_FLOOR,
    MAX_COMPRESSION_RATIO,
    MAX_MEMBER_BYTES,
    REASON_ABSOLUTE,
    REASON_BAD_NAME,
    REASON_BROKEN_ARCHIVE,
    REASON_CORRUPT_MEMBER,
    REASON_DEVICE,
    REASON_DUPLICATE,
    REASON_ENCRYPTED,
    REASON_FIFO,
    REASON_HARDLINK_MEMBER,
    REASON_LINK_BROKEN,
    REASON_LINK_DANGLING,
    REASON_LINK_FOLDER,
    REASON_LINK_LOOP,
    REASON_LINK_OUTSIDE,
    REASON_NO_NAME,
    REASON_OVERLAP,
    REASON_RATIO,
    REASON_SOCKET,
    REASON_SPECIAL,
    REASON_SYMLINK_MEMBER,
    REASON_TOO_LARGE,
    REASON_TRAVERSAL,
    REASON_UNINSPECTABLE,
    REASON_UNREADABLE_FOLDER,
    REJECTED_PREFIX,
    SourceItem,
    SourceSpec,
    is_utf8,
    open_regular,
    rejected_item,
    skipped_item,
    special_reason,
)

__all__ = [
    "BOMB_RATIO_FLOOR", "MAX_COMPRESSION_RATIO", "MAX_MEMBER_BYTES", "REASON_ABSOLUTE", "REASON_BAD_NAME",
    "REASON_BROKEN_ARCHIVE", "REASON_CORRUPT_MEMBER", "REASON_DEVICE", "REASON_DUPLICATE", "REASON_ENCRYPTED",
    "REASON_FIFO", "REASON_HARDLINK_MEMBER", "REASON_LINK_BROKEN", "REASON_LINK_DANGLING", "REASON_LINK_FOLDER",
    "REASON_LINK_LOOP", "REASON_LINK_OUTSIDE", "REASON_NO_NAME", "REASON_OVERLAP", "REASON_RATIO", "REASON_SOCKET",
    "REASON_SPECIAL", "REASON_SYMLINK_MEMBER", "REASON_TOO_LARGE", "REASON_TRAVERSAL", "REASON_UNINSPECTABLE",
    "REASON_UNREADABLE_FOLDER", "REJECTED_PREFIX", "SourceItem", "SourceSpec", "detect", "iter_items",
    "member_path", "open_regular", "prefetch", "read_member",
]


def detect(src: str | Path) -> SourceSpec:
    """Decide what kind of source ``src`` is, or raise :class:`InputError`."""
    p = Path(src).resolve()
    if p.is_dir():
        return SourceSpec("folder", str(p))
    if not p.exists():
        raise InputError(str(src), "source does not exist")
    if zipfile.is_zipfile(p):
        return SourceSpec("zip", str(p))
    try:
        if tarfile.is_tarfile(p):
            return SourceSpec("tar", str(p))
    except OSError:
        pass
    raise InputError(str(src), "source is neither a folder, a .zip nor a .tar(.gz) archive")


def _escaped(relpath: str) -> str:
    """A relative path whose bytes are not UTF-8, as text the manifest can hold (backslashes doubled first, so
    that two different names never escape alike)."""
    return os.fsencode(relpath).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def iter_items(spec: SourceSpec, *, with_data: bool | None = None) -> Iterator[SourceItem]:
    """Every entry of the source in a stable order; tar members carry their bytes (and so do the members of an
    archive inside a tar). Never raises for what the source holds: an entry that is not read (a link, a special
    file, a hostile or broken member, an archive nested too deep) is listed with ``skip`` set, so that the
    manifest and the audit account for it. An archive inside the source is listed as its members (see
    :mod:`deidpipe.pipeline.archives`)."""
    if spec.kind == "folder":
        yield from _iter_folder(Path(spec.root))
    elif spec.kind == "zip":
        yield from iter_zip(spec.root, "", 1, False)
    elif spec.kind == "tar":
        yield from iter_tar(spec.root, True if with_data is None else with_data, "", 1)
    else:  # pragma: no cover - detect() makes only the kinds above
        raise ValueError(spec.kind)


def _iter_folder(root: Path) -> Iterator[SourceItem]:
    """Every entry below ``root``, by sorted relative path within each folder, a folder's files before its
    subfolders. Regular files are listed to be read, and so are links to regular files inside the tree; links
    are never followed out of the tree or into a folder (no loops); special files are listed as skipped and
    never opened (opening a FIFO blocks); an unreadable folder is listed, quarantined, as itself (``.`` for the
    root)."""
    real_root = os.path.realpath(root)
    for item in _walk(real_root, real_root, ""):
        if not is_utf8(item.relpath):
            yield rejected_item(_escaped(item.relpath), REASON_BAD_NAME, item.size)
        elif item.skip is None:
            yield from _file_or_archive(os.path.join(real_root, item.relpath), item)
        else:
            yield item


def _file_or_archive(path: str, item: SourceItem) -> Iterator[SourceItem]:
    """A readable file of a folder source as it is listed, or, if it is a zip or tar, the members of that
    archive (depth 1), read from the file itself when a worker needs them."""
    try:  # os-level calls: a buffered file object per file cost 4x more, on every file of every folder source
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            head = os.read(fd, ARCHIVE_HEAD_BYTES)  # a FIFO swapped in since the walk gives nothing, never blocks
        finally:
            os.close(fd)
    except OSError:
        head = b""  # the index reports what cannot be read
    kind = archive_kind(head)
    if kind is None:
        yield item
    else:
        yield from expand_archive(kind, path, item.relpath + NEST_SEP, 1, False, item)


def _walk(real_root: str, folder: str, rel_dir: str) -> Iterator[SourceItem]:
    # os.scandir rather than os.walk: its entries know whether they are folders or links without a stat.
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        yield rejected_item(rel_dir or ".", REASON_UNREADABLE_FOLDER)
        return
    subfolders = []
    for entry in entries:
        rel = entry.name if not rel_dir else f"{rel_dir}/{entry.name}"
        try:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append((entry.path, rel))
                continue
            if entry.is_symlink():
                yield _link_item(real_root, folder, entry.path, rel)
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            yield rejected_item(rel, REASON_UNINSPECTABLE)
            continue
        if stat.S_ISREG(st.st_mode):
            yield SourceItem(rel, st.st_size)
        else:
            yield skipped_item(rel, special_reason(st.st_mode))
    for path, rel in subfolders:
        yield from _walk(real_root, path, rel)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _link_item(real_root: str, folder: str, path: str, rel: str) -> SourceItem:
    """A symbolic link in the walked ``folder`` (a real path): a regular file inside the tree is listed to be
    read; anything else is listed with its reason and is never opened."""
    try:
        st = os.stat(path)  # follows the link, without opening anything
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return skipped_item(rel, REASON_LINK_LOOP)
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # an input that went missing: reported as a failure
            return rejected_item(rel, REASON_LINK_DANGLING)
        return rejected_item(rel, REASON_LINK_BROKEN)
    target = os.path.realpath(path)
    if stat.S_ISDIR(st.st_mode):
        if _inside(folder, target):  # the link names a folder it is in
            return skipped_item(rel, REASON_LINK_LOOP)
        return skipped_item(rel, REASON_LINK_FOLDER if _inside(target, real_root) else REASON_LINK_OUTSIDE)
    if not stat.S_ISREG(st.st_mode):
        return skipped_item(rel, special_reason(st.st_mode))
    if not _inside(target, real_root):
        return rejected_item(rel, REASON_LINK_OUTSIDE, st.st_size)  # a file the steward may have meant: reported
    return SourceItem(rel, st.st_size)


def member_path(spec: SourceSpec, item: SourceItem) -> str | None:
    """The file system path of a folder member, read without going through :func:`read_member`; None for
    archive members (an archive inside the folder included), streamed bytes and entries that are not read."""
    if spec.kind != "folder" or item.data is not None or item.skip is not None or NEST_SEP in item.relpath:
        return None
    return os.path.join(spec.root, item.relpath)


def prefetch(spec: SourceSpec, items: list[SourceItem]) -> None:
    """Ask the kernel to start reading the files of a folder source in the background (POSIX_FADV_WILLNEED),
    so that disk reads overlap with the work on the files before them. Only a hint: errors are ignored."""
    if spec.kind != "folder" or not hasattr(os, "posix_fadvise"):
        return
    for item in items:
        if (item.data is not None or item.skip is not None or not 0 < item.size <= _items.MAX_MEMBER_BYTES
                or NEST_SEP in item.relpath):
            continue
        try:
            fd = os.open(os.path.join(spec.root, item.relpath), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def read_member(spec: SourceSpec, item: SourceItem) -> bytes:
    """The bytes of one member; raises :class:`InputError` (with a fixed reason) when it cannot be read."""
    if item.skip is not None:
        raise InputError(None, item.skip)
    if item.data is not None:
        return item.data
    if item.size > _items.MAX_MEMBER_BYTES:
        raise InputError(None, "file is too large to be a DICOM object this pipeline handles")
    try:
        if NEST_SEP in item.relpath and spec.random_access:
            return read_nested(spec, item.relpath)
        if spec.kind == "folder":
            with open_regular(os.path.join(spec.root, item.relpath)) as fh:
                return fh.read()
        if spec.kind == "zip":
            return read_zip_member(spec.root, item.relpath)
    except (OSError, zipfile.BadZipFile, tarfile.TarError, KeyError, EOFError, NotImplementedError, RuntimeError,
            zlib.error) as exc:
        raise InputError(None, f"cannot be read ({type(exc).__name__})") from None
    raise InputError(None, "member bytes were not streamed with the task")
