"""Where objects come from: a folder tree, a .zip, or a .tar / .tar.gz read as a stream.

A source lists its members as :class:`SourceItem` (relative path and size) in a stable, sorted order. Folders and
zip files are *random access*: a worker process reads a member itself from a picklable :class:`SourceSpec`, so only
paths travel between processes. A tar archive is read front to back once per pass and the members' bytes travel
with the tasks; nothing is extracted to disk and only a bounded number of members is held in memory at a time.

Nothing here writes to the source.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deidpipe.errors import InputError

#: Members larger than this are listed and quarantined rather than read into memory (a DICOM object is rarely
#: above a few hundred MB; anything larger is almost always something else).
MAX_MEMBER_BYTES = 2 * 1024**3


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
    """One member of a source. ``data`` is set for streamed (tar) members only."""

    relpath: str
    size: int
    data: bytes | None = None


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


def _clean_relpath(name: str) -> str | None:
    """A member name as a safe relative POSIX path, or None for names that escape the root."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def iter_items(spec: SourceSpec, *, with_data: bool | None = None) -> Iterator[SourceItem]:
    """Every regular file of the source in a stable order; tar members carry their bytes."""
    if spec.kind == "folder":
        yield from _iter_folder(Path(spec.root))
    elif spec.kind == "zip":
        yield from _iter_zip(spec.root)
    elif spec.kind == "tar":
        yield from _iter_tar(spec.root, True if with_data is None else with_data)
    else:  # pragma: no cover - detect() makes only the kinds above
        raise ValueError(spec.kind)


def _iter_folder(root: Path) -> Iterator[SourceItem]:
    """Every regular file below ``root``, by sorted relative path within each folder, a folder's files before
    its subfolders. Links to files are followed; links to folders are not (no loops, no escaping the tree)."""
    yield from _walk(str(root), "")


def _walk(folder: str, rel_dir: str) -> Iterator[SourceItem]:
    # os.scandir rather than os.walk: its entries know whether they are folders without a stat of their own.
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return  # an unreadable folder is passed over, as os.walk does
    subfolders = []
    for entry in entries:
        if entry.is_dir():  # follows links, like os.walk: a linked folder is neither walked nor listed
            if not entry.is_symlink():
                subfolders.append(entry)
            continue
        rel = entry.name if not rel_dir else f"{rel_dir}/{entry.name}"
        try:
            st = entry.stat()
        except OSError:
            yield SourceItem(rel, -1)  # a dangling link or a file that vanished: listed, then quarantined
            continue
        if stat.S_ISREG(st.st_mode):
            yield SourceItem(rel, st.st_size)
    for entry in subfolders:
        yield from _walk(entry.path, entry.name if not rel_dir else f"{rel_dir}/{entry.name}")


def _iter_zip(path: str) -> Iterator[SourceItem]:
    with zipfile.ZipFile(path) as zf:
        infos = sorted((i for i in zf.infolist() if not i.is_dir()), key=lambda i: i.filename)
        for info in infos:
            rel = _clean_relpath(info.filename)
            if rel is not None:
                yield SourceItem(rel, info.file_size)


def _iter_tar(path: str, with_data: bool) -> Iterator[SourceItem]:
    # Stream mode ("r|*"): one sequential pass, works for gzip/bz2/xz without seeking.
    with tarfile.open(path, mode="r|*") as tf:
        for member in tf:
            if not member.isreg():
                continue
            rel = _clean_relpath(member.name)
            if rel is None:
                continue
            data = None
            if with_data and member.size <= MAX_MEMBER_BYTES:
                fh = tf.extractfile(member)
                data = fh.read() if fh is not None else None
            yield SourceItem(rel, member.size, data)


# -- reading a member inside a worker -------------------------------------------------------------------------
_ZIP_CACHE: dict[str, zipfile.ZipFile] = {}


def member_path(spec: SourceSpec, item: SourceItem) -> str | None:
    """The file system path of a folder member, read without going through :func:`read_member`; None for
    archive members and streamed bytes."""
    if spec.kind != "folder" or item.data is not None:
        return None
    return os.path.join(spec.root, item.relpath)


def prefetch(spec: SourceSpec, items: list[SourceItem]) -> None:
    """Ask the kernel to start reading the files of a folder source in the background (POSIX_FADV_WILLNEED),
    so that disk reads overlap with the work on the files before them. Only a hint: errors are ignored."""
    if spec.kind != "folder" or not hasattr(os, "posix_fadvise"):
        return
    for item in items:
        if item.data is not None or not 0 < item.size <= MAX_MEMBER_BYTES:
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
    if item.data is not None:
        return item.data
    if item.size > MAX_MEMBER_BYTES:
        raise InputError(None, "file is too large to be a DICOM object this pipeline handles")
    try:
        if spec.kind == "folder":
            with open(os.path.join(spec.root, item.relpath), "rb") as fh:
                return fh.read()
        if spec.kind == "zip":
            zf = _ZIP_CACHE.get(spec.root)
            if zf is None:
                zf = _ZIP_CACHE[spec.root] = zipfile.ZipFile(spec.root)
            return zf.read(_zip_name(zf, item.relpath))
    except (OSError, zipfile.BadZipFile, KeyError, EOFError) as exc:
        raise InputError(None, f"cannot be read ({type(exc).__name__})") from None
    raise InputError(None, "member bytes were not streamed with the task")


def _zip_name(zf: zipfile.ZipFile, relpath: str) -> str:
    try:
        zf.getinfo(relpath)
        return relpath
    except KeyError:
        # The stored name differs from the cleaned one ("./a", "a\\b"): find it once, by cleaning every name.
        for info in zf.infolist():
            if _clean_relpath(info.filename) == relpath:
                return info.filename
        raise
