"""Zip and tar archives: listed member by member within bounds, and read by a worker; archives inside a source.

Every member is listed, read, skipped or quarantined with a fixed reason (links, special files, names that escape,
duplicates, encrypted members, declared sizes over :data:`deidpipe.pipeline.items.MAX_MEMBER_BYTES`, zip-bomb
ratios and overlapping entries, corrupt members, a stream broken from some point on).

A zip or tar found in a folder tree is opened like a top-level one, and so is an archive inside an archive, one
level deep: a source archive (or an archive found in a folder) is depth 1, an archive among its members depth 2.
An archive deeper than :data:`MAX_ARCHIVE_DEPTH` is listed as skipped with :data:`REASON_NESTED_TOO_DEEP` and
never opened. The members of an archive inside a source are listed under the archive's own relative path, then
:data:`NEST_SEP`, then the member's cleaned name (``scans/Doe.zip//IMG0001``): the empty path component cannot
occur in a cleaned member name or below a folder, so such a name never collides with a real file.

An archive is recognised by its first bytes, never by its name: a zip's local or end-of-directory signature, a
tar's ``ustar`` magic at offset 257, or a gzip / bzip2 / xz stream (a *candidate*: it is an archive only if a tar
member can be read from it; a compressed single file is not, and is judged as any other file). A file with
"DICM" at offset 128 is DICOM whatever its preamble holds.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from deidpipe.errors import InputError
from deidpipe.pipeline import items as _items
from deidpipe.pipeline.items import (
    REASON_BROKEN_ARCHIVE,
    REASON_CORRUPT_MEMBER,
    REASON_DEVICE,
    REASON_ENCRYPTED,
    REASON_FIFO,
    REASON_HARDLINK_MEMBER,
    REASON_OVERLAP,
    REASON_RATIO,
    REASON_SPECIAL,
    REASON_SYMLINK_MEMBER,
    REASON_TOO_LARGE,
    REJECTED_PREFIX,
    SourceItem,
    SourceSpec,
    member_item,
    open_regular,
    rejected_item,
    skipped_item,
    special_reason,
)

#: Separates an archive's relative path from its member's name in a listed relative path.
NEST_SEP = "//"
#: A source archive or an archive in a folder is depth 1; an archive among its members, depth 2.
MAX_ARCHIVE_DEPTH = 2
REASON_NESTED_TOO_DEEP = "archive nested too deep (not opened)"
#: How many leading bytes :func:`archive_kind` needs (the tar magic ends at 262).
ARCHIVE_HEAD_BYTES = 512

KIND_ZIP = "zip"
KIND_TAR = "tar"
#: A compressed stream that may hold a tar (gzip, bzip2, xz): opened, and an archive only if a member is read.
KIND_TAR_CANDIDATE = "tar?"

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def archive_kind(head: bytes) -> str | None:
    """:data:`KIND_ZIP`, :data:`KIND_TAR`, :data:`KIND_TAR_CANDIDATE` or None, from a file's first bytes."""
    if head[128:132] == b"DICM":
        return None
    if head[:4] in _ZIP_MAGIC:
        return KIND_ZIP
    if head[257:262] == b"ustar":
        return KIND_TAR
    if head.startswith(_COMPRESSED_MAGIC):
        return KIND_TAR_CANDIDATE
    return None


class ArchiveCache:
    """Opened archives by key, the least recently used closed beyond ``size`` (an archive inside an archive is
    held in memory, up to the size bound of one member: a worker keeps only a few)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._open: OrderedDict[tuple[str, ...], Any] = OrderedDict()

    def get(self, key: tuple[str, ...], opener: Callable[[], Any]) -> Any:
        found = self._open.get(key)
        if found is not None:
            self._open.move_to_end(key)
            return found
        opened = opener()
        self._open[key] = opened
        while len(self._open) > self.size:
            _, old = self._open.popitem(last=False)
            close = getattr(old, "close", None)
            if close is not None:
                close()
        return opened


# -- listing -----------------------------------------------------------------------------------------------------
def _zip_problem(info: zipfile.ZipInfo, overlapping: bool) -> tuple[str, bool] | None:
    """Why a zip member is not read, as (reason, quarantine), from its directory entry alone; None to read it."""
    mode = info.external_attr >> 16 if info.create_system == 3 else 0  # Unix mode, where a Unix tool made it
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return REASON_SYMLINK_MEMBER, False
    if kind not in (0, stat.S_IFREG):
        return special_reason(mode), False
    if info.flag_bits & 0x1:
        return REASON_ENCRYPTED, True
    if info.file_size > _items.MAX_MEMBER_BYTES:
        return REASON_TOO_LARGE, True
    ratio_bound = _items.MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
    if info.file_size > _items.BOMB_RATIO_FLOOR and info.file_size > ratio_bound:
        return REASON_RATIO, True
    if overlapping:
        return REASON_OVERLAP, True
    return None


def _overlapping(infos: list[zipfile.ZipInfo]) -> set[int]:
    """Positions of members whose compressed data runs into the next member's header: the overlapping entries
    of a non-recursive zip bomb (each small, all sharing one huge stream). A lower bound of the data's end (the
    local header's own length is not counted), so an honest archive is never flagged."""
    order = sorted(range(len(infos)), key=lambda i: infos[i].header_offset)
    flagged: set[int] = set()
    for a, b in zip(order, order[1:], strict=False):
        if infos[a].header_offset + infos[a].compress_size > infos[b].header_offset:
            flagged.update((a, b))
    return flagged


def _zip_members(zf: zipfile.ZipFile) -> Iterator[tuple[SourceItem, zipfile.ZipInfo]]:
    """Every member but folder entries, in the archive's order, with the item that lists it."""
    infos = zf.infolist()
    overlapping = _overlapping(infos)
    seen: set[str] = set()
    for index, info in enumerate(infos):
        if info.is_dir():
            continue
        problem = _zip_problem(info, index in overlapping)
        yield member_item(index, info.filename, info.file_size, problem, seen), info


def _zip_file(src: str | bytes) -> zipfile.ZipFile:
    return zipfile.ZipFile(src if isinstance(src, str) else io.BytesIO(src))


def iter_zip(src: str | bytes, prefix: str, depth: int, with_data: bool) -> Iterator[SourceItem]:
    """A zip's members (at ``depth``, under ``prefix``), sorted; an archive among them is opened one level."""
    try:
        with _zip_file(src) as zf:
            listed: list[SourceItem] = []
            for item, info in _zip_members(zf):
                listed += _member_or_archive(item, prefix, depth, with_data, lambda info=info: _zip_head(zf, info),
                                         lambda info=info: zip_read(zf, info))
    except Exception:  # noqa: BLE001 - a central directory zipfile cannot parse: the archive is one failure
        yield rejected_item(f"{prefix}{REJECTED_PREFIX}0", REASON_BROKEN_ARCHIVE)
        return
    yield from sorted(listed, key=lambda i: i.relpath)


def _zip_head(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with zf.open(info) as fh:
        return fh.read(ARCHIVE_HEAD_BYTES)


def _tar_problem(member: tarfile.TarInfo) -> tuple[str, bool] | None:
    """Why a tar member is not read, as (reason, quarantine); None to read it."""
    if member.issym():
        return REASON_SYMLINK_MEMBER, False
    if member.islnk():
        return REASON_HARDLINK_MEMBER, False
    if member.isfifo():
        return REASON_FIFO, False
    if member.ischr() or member.isblk():
        return REASON_DEVICE, False
    if not member.isreg():
        return REASON_SPECIAL, False
    if member.size > _items.MAX_MEMBER_BYTES:
        return REASON_TOO_LARGE, True
    return None


class _TarStreamMember:
    """A member of a tar read as a stream: its first bytes, then the rest only if asked, before the stream moves
    on. Short data (a member cut by the end of the stream) is not loaded: the index quarantines the member."""

    def __init__(self, fh: BinaryIO | None, size: int) -> None:
        self.fh, self.size, self.first = fh, size, b""

    def head(self) -> bytes:
        self.first = self.fh.read(ARCHIVE_HEAD_BYTES) if self.fh is not None else b""
        return self.first

    def load(self) -> bytes | None:
        if self.fh is None:
            return None
        data = self.first + self.fh.read(self.size - len(self.first))
        return data if len(data) == self.size else None


def _tar_file(src: str | bytes, mode: str) -> tarfile.TarFile:
    if isinstance(src, str):
        return tarfile.open(src, mode=mode)
    return tarfile.open(fileobj=io.BytesIO(src), mode=mode)


def iter_tar(src: str | bytes, with_data: bool, prefix: str, depth: int,
             fallback: SourceItem | None = None) -> Iterator[SourceItem]:
    """A tar's members in stream order (at ``depth``, under ``prefix``); an archive among them is opened one
    level. ``fallback``: what to list instead when the stream is a compressed file that holds no tar."""
    # Stream mode ("r|*"): one sequential pass, works for gzip/bz2/xz without seeking. The size in a member's
    # header is exact (a member cannot inflate beyond it) and gzip is inflated in bounded chunks.
    seen: set[str] = set()
    index = 0  # the position of the member at hand: where the stream broke, if it breaks
    try:
        with _tar_file(src, "r|*") as tf:
            for member in tf:
                if not member.isdir():
                    problem = _tar_problem(member)
                    item = member_item(index, member.name, member.size, problem, seen)
                    part = _TarStreamMember(tf.extractfile(member) if item.skip is None else None, member.size)
                    yield from _member_or_archive(item, prefix, depth, with_data, part.head, part.load, stream=True)
                index += 1
    except Exception:  # noqa: BLE001 - a truncated or corrupt stream: the rest of the archive is one failure
        if fallback is not None and index == 0:
            yield fallback  # a compressed file, not a tar: listed like any other file
            return
        yield rejected_item(f"{prefix}{REJECTED_PREFIX}{index}", REASON_BROKEN_ARCHIVE)


def expand_archive(kind: str, src: str | bytes, prefix: str, depth: int, with_data: bool,
                   fallback: SourceItem) -> Iterator[SourceItem]:
    """The members of an archive (a path, or its bytes) at ``depth``, listed under ``prefix``. ``fallback`` is
    what a compressed stream that holds no tar is listed as (a file like any other)."""
    if kind == KIND_ZIP:
        yield from iter_zip(src, prefix, depth, with_data)
    else:
        yield from iter_tar(src, with_data, prefix, depth, fallback if kind == KIND_TAR_CANDIDATE else None)


def _member_or_archive(item: SourceItem, prefix: str, depth: int, with_data: bool, head: Callable[[], bytes],
                       load: Callable[[], bytes | None], stream: bool = False) -> list[SourceItem]:
    """An archive member as listed: its item under ``prefix`` (with its bytes when ``with_data``), or, if it is
    an archive itself, its members one level down, or skipped when that level is too deep. ``head`` and
    ``load`` read the member's first bytes and all of it (bounded by the checks the item has passed); a member
    that cannot be read is listed as it is, for the index to report."""
    item = dataclasses.replace(item, relpath=prefix + item.relpath)
    if item.skip is not None:
        return [item]
    try:
        kind = archive_kind(head())
        if kind is not None and depth >= MAX_ARCHIVE_DEPTH:
            return [skipped_item(item.relpath, REASON_NESTED_TOO_DEEP, item.size)]  # never read further
        data = load() if with_data or kind is not None else None
    except Exception:  # noqa: BLE001 - a corrupt zip member: the index reads it again and says so
        if stream:
            raise  # a tar stream broken here: the rest of the archive is one failure (see iter_tar)
        return [item]
    if kind is None:
        return [dataclasses.replace(item, data=data)]
    if data is None:
        return [item]
    return list(expand_archive(kind, data, item.relpath + NEST_SEP, depth + 1, with_data,
                               dataclasses.replace(item, data=data if with_data else None)))


# -- reading a member inside a worker ------------------------------------------------------------------------
#: Per process: each zip archive opened once, with its readable members by relative path (the listing's own rules,
#: so a duplicate name reads the member the listing kept).
_ZIP_CACHE: dict[str, tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]] = {}
#: Per process: the archives inside a source that a worker has opened (see :func:`read_nested`).
_NESTED = ArchiveCache()


class _Opened:
    """An archive inside a source, opened for reading members by their listed names (the listing's rules)."""

    def __init__(self, src: str | bytes) -> None:
        if isinstance(src, str):
            with open_regular(src) as fh:
                head = fh.read(ARCHIVE_HEAD_BYTES)
        else:
            head = src[:ARCHIVE_HEAD_BYTES]
        kind = archive_kind(head)
        if kind is None:
            raise InputError(None, "archive member is not in the archive")
        self.zip = _zip_file(src) if kind == KIND_ZIP else None
        self.tar = _tar_file(src, "r:*") if kind != KIND_ZIP else None
        self.members: dict[str, Any] = {}
        if self.zip is not None:
            self.members = {item.relpath: info for item, info in _zip_members(self.zip) if item.skip is None}
        else:
            seen: set[str] = set()
            try:
                for index, member in enumerate(self.tar):  # type: ignore[arg-type]
                    if not member.isdir():
                        item = member_item(index, member.name, member.size, _tar_problem(member), seen)
                        if item.skip is None:
                            self.members[item.relpath] = member
            except Exception:  # noqa: BLE001 - the members before a cut are read, as the listing listed them
                pass

    def read(self, name: str) -> bytes:
        info = self.members.get(name)
        if info is None:
            raise InputError(None, "archive member is not in the archive")
        if self.zip is not None:
            return zip_read(self.zip, info)
        assert self.tar is not None
        fh = self.tar.extractfile(info)
        data = fh.read(info.size + 1) if fh is not None else b""
        if len(data) != info.size:
            raise InputError(None, REASON_CORRUPT_MEMBER)
        return data

    def close(self) -> None:
        for handle in (self.zip, self.tar):
            if handle is not None:
                handle.close()


def read_nested(spec: SourceSpec, relpath: str) -> bytes:
    """A member of an archive inside a random-access source: ``a.zip//m`` (``a.zip`` a folder file, or a
    member of the source zip), ``a.zip//b.tar//m`` one level further; never deeper (the listing never lists a
    readable member there). Each archive on the way is opened once per process (:class:`ArchiveCache`)."""
    parts = relpath.split(NEST_SEP)
    if spec.kind == "folder":
        first = os.path.join(spec.root, parts[0])
        archive = _NESTED.get((spec.root, parts[0]), lambda: _Opened(first))
        chain = parts[1:]
    else:
        archive = _NESTED.get((spec.root,), lambda: _Opened(spec.root))
        chain = parts
    if not chain or len(chain) > MAX_ARCHIVE_DEPTH:
        raise InputError(None, "archive member is not in the archive")
    for depth, name in enumerate(chain[:-1]):
        outer = archive
        archive = _NESTED.get((spec.root, *parts[:len(parts) - len(chain) + depth + 1]),
                              lambda outer=outer, name=name: _Opened(outer.read(name)))
    return archive.read(chain[-1])


def read_zip_member(root: str, relpath: str) -> bytes:
    """A zip member read with a bound: never more than one byte over its declared size (checked by the listing),
    and any difference from it, or a bad checksum, is a corrupt member."""
    entry = _ZIP_CACHE.get(root)
    if entry is None:
        zf = zipfile.ZipFile(root)
        entry = _ZIP_CACHE[root] = (zf, {item.relpath: info for item, info in _zip_members(zf) if item.skip is None})
    zf, members = entry
    info = members.get(relpath)
    if info is None:
        raise InputError(None, "archive member is not in the archive")
    return zip_read(zf, info)


def zip_read(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, never more than one byte over its declared size; a difference, or a bad checksum, is a
    corrupt member."""
    try:
        with zf.open(info) as fh:
            data = fh.read(info.file_size + 1)
    except zipfile.BadZipFile:
        raise InputError(None, REASON_CORRUPT_MEMBER) from None
    if len(data) != info.file_size:
        raise InputError(None, REASON_CORRUPT_MEMBER)
    return data
