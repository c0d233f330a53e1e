"""Where objects come from: a folder tree, a .zip, or a .tar / .tar.gz read as a stream.

A source lists its members as :class:`SourceItem` (relative path and size) in a stable, sorted order. Every entry
is listed, also those that are not read (links that leave the tree or loop, special files, unreadable folders,
hostile or broken archive members): they carry a fixed ``skip`` reason, so the manifest and the audit account for
each, and a listing never raises for what a source holds.

Folders and zip files are *random access*: a worker process reads a member itself from a picklable
:class:`SourceSpec`, so only paths travel between processes. A tar archive is read front to back once per pass
and the members' bytes travel with the tasks; nothing is extracted to disk and only a bounded number of members
is held in memory at a time.

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
from dataclasses import dataclass
from pathlib import Path
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


def _skipped(relpath: str, reason: str, size: int = 0) -> SourceItem:
    return SourceItem(relpath, max(size, 0), skip=reason)


def _rejected(relpath: str, reason: str, size: int = 0) -> SourceItem:
    return SourceItem(relpath, max(size, 0), skip=reason, quarantine=True)


def _special_reason(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return REASON_FIFO
    if stat.S_ISSOCK(mode):
        return REASON_SOCKET
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return REASON_DEVICE
    return REASON_SPECIAL


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # surrogate escapes of bytes that are not UTF-8
        return False


def _escaped(relpath: str) -> str:
    """A relative path whose bytes are not UTF-8, as text the manifest can hold (backslashes doubled first, so
    that two different names never escape alike)."""
    return os.fsencode(relpath).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def _member_relpath(name: str) -> tuple[str | None, str | None]:
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
    if not _utf8(name):
        return None, REASON_BAD_NAME
    return "/".join(parts), None


def _member_item(index: int, name: str, size: int, problem: tuple[str, bool] | None, seen: set[str],
                 data: bytes | None = None) -> SourceItem:
    """The item for archive member number ``index``: under its cleaned name when it is to be read, else under
    :data:`REJECTED_PREFIX` with the reason (a bad name is quarantined; ``problem`` is (reason, quarantine)).
    A name already ``seen`` is quarantined: the first member of that name is the one read."""
    if problem is None:
        rel, bad_name = _member_relpath(name)
        if rel is not None and rel in seen:
            bad_name = REASON_DUPLICATE
        if bad_name is None and rel is not None:
            seen.add(rel)
            return SourceItem(rel, size, data)
        problem = (bad_name or REASON_NO_NAME, True)
    reason, quarantine = problem
    return SourceItem(f"{REJECTED_PREFIX}{index}", max(size, 0), skip=reason, quarantine=quarantine)


def iter_items(spec: SourceSpec, *, with_data: bool | None = None) -> Iterator[SourceItem]:
    """Every entry of the source in a stable order; tar members carry their bytes. Never raises for what the
    source holds: an entry that is not read (a link, a special file, a hostile or broken member) is listed
    with ``skip`` set, so that the manifest and the audit account for it."""
    if spec.kind == "folder":
        yield from _iter_folder(Path(spec.root))
    elif spec.kind == "zip":
        yield from _iter_zip(spec.root)
    elif spec.kind == "tar":
        yield from _iter_tar(spec.root, True if with_data is None else with_data)
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
        if not _utf8(item.relpath):
            item = _rejected(_escaped(item.relpath), REASON_BAD_NAME, item.size)
        yield item


def _walk(real_root: str, folder: str, rel_dir: str) -> Iterator[SourceItem]:
    # os.scandir rather than os.walk: its entries know whether they are folders or links without a stat.
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        yield _rejected(rel_dir or ".", REASON_UNREADABLE_FOLDER)
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
            yield _rejected(rel, REASON_UNINSPECTABLE)
            continue
        if stat.S_ISREG(st.st_mode):
            yield SourceItem(rel, st.st_size)
        else:
            yield _skipped(rel, _special_reason(st.st_mode))
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
            return _skipped(rel, REASON_LINK_LOOP)
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # an input that went missing: reported as a failure
            return _rejected(rel, REASON_LINK_DANGLING)
        return _rejected(rel, REASON_LINK_BROKEN)
    target = os.path.realpath(path)
    if stat.S_ISDIR(st.st_mode):
        if _inside(folder, target):  # the link names a folder it is in
            return _skipped(rel, REASON_LINK_LOOP)
        return _skipped(rel, REASON_LINK_FOLDER if _inside(target, real_root) else REASON_LINK_OUTSIDE)
    if not stat.S_ISREG(st.st_mode):
        return _skipped(rel, _special_reason(st.st_mode))
    if not _inside(target, real_root):
        return _rejected(rel, REASON_LINK_OUTSIDE, st.st_size)  # a file the steward may have meant: reported
    return SourceItem(rel, st.st_size)


def _zip_problem(info: zipfile.ZipInfo, overlapping: bool) -> tuple[str, bool] | None:
    """Why a zip member is not read, as (reason, quarantine), from its directory entry alone; None to read it."""
    mode = info.external_attr >> 16 if info.create_system == 3 else 0  # Unix mode, where a Unix tool made it
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return REASON_SYMLINK_MEMBER, False
    if kind not in (0, stat.S_IFREG):
        return _special_reason(mode), False
    if info.flag_bits & 0x1:
        return REASON_ENCRYPTED, True
    if info.file_size > MAX_MEMBER_BYTES:
        return REASON_TOO_LARGE, True
    if info.file_size > BOMB_RATIO_FLOOR and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
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
        yield _member_item(index, info.filename, info.file_size, problem, seen), info


def _iter_zip(path: str) -> Iterator[SourceItem]:
    try:
        with zipfile.ZipFile(path) as zf:
            items = [item for item, _ in _zip_members(zf)]
    except Exception:  # noqa: BLE001 - a central directory zipfile cannot parse: the archive is one failure
        yield _rejected(f"{REJECTED_PREFIX}0", REASON_BROKEN_ARCHIVE)
        return
    yield from sorted(items, key=lambda i: i.relpath)


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
    if member.size > MAX_MEMBER_BYTES:
        return REASON_TOO_LARGE, True
    return None


def _iter_tar(path: str, with_data: bool) -> Iterator[SourceItem]:
    # Stream mode ("r|*"): one sequential pass, works for gzip/bz2/xz without seeking. The size in a member's
    # header is exact (a member cannot inflate beyond it) and gzip is inflated in bounded chunks.
    seen: set[str] = set()
    index = 0  # the position of the member at hand: where the stream broke, if it breaks
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                if not member.isdir():
                    problem = _tar_problem(member)
                    data = None
                    if problem is None and with_data:
                        fh = tf.extractfile(member)
                        data = fh.read() if fh is not None else None
                        if data is not None and len(data) != member.size:
                            data = None  # not streamed: the index quarantines the member
                    yield _member_item(index, member.name, member.size, problem, seen, data)
                index += 1
    except Exception:  # noqa: BLE001 - a truncated or corrupt stream: the rest of the archive is one failure
        yield _rejected(f"{REJECTED_PREFIX}{index}", REASON_BROKEN_ARCHIVE)


# -- reading a member inside a worker -------------------------------------------------------------------------
#: Per process: each zip archive opened once, with its readable members by relative path (the listing's own rules,
#: so a duplicate name reads the member the listing kept).
_ZIP_CACHE: dict[str, tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]] = {}


def member_path(spec: SourceSpec, item: SourceItem) -> str | None:
    """The file system path of a folder member, read without going through :func:`read_member`; None for
    archive members, streamed bytes and entries that are not read."""
    if spec.kind != "folder" or item.data is not None or item.skip is not None:
        return None
    return os.path.join(spec.root, item.relpath)


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


def prefetch(spec: SourceSpec, items: list[SourceItem]) -> None:
    """Ask the kernel to start reading the files of a folder source in the background (POSIX_FADV_WILLNEED),
    so that disk reads overlap with the work on the files before them. Only a hint: errors are ignored."""
    if spec.kind != "folder" or not hasattr(os, "posix_fadvise"):
        return
    for item in items:
        if item.data is not None or item.skip is not None or not 0 < item.size <= MAX_MEMBER_BYTES:
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
    if item.size > MAX_MEMBER_BYTES:
        raise InputError(None, "file is too large to be a DICOM object this pipeline handles")
    try:
        if spec.kind == "folder":
            with open_regular(os.path.join(spec.root, item.relpath)) as fh:
                return fh.read()
        if spec.kind == "zip":
            return _read_zip_member(spec.root, item.relpath)
    except (OSError, zipfile.BadZipFile, KeyError, EOFError, NotImplementedError, RuntimeError, zlib.error) as exc:
        raise InputError(None, f"cannot be read ({type(exc).__name__})") from None
    raise InputError(None, "member bytes were not streamed with the task")


def _read_zip_member(root: str, relpath: str) -> bytes:
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
    try:
        with zf.open(info) as fh:
            data = fh.read(info.file_size + 1)
    except zipfile.BadZipFile:
        raise InputError(None, REASON_CORRUPT_MEMBER) from None
    if len(data) != info.file_size:
        raise InputError(None, REASON_CORRUPT_MEMBER)
    return data
