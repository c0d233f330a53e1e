"""Search every byte under a folder for planted values: what a steward's share would expose.

:func:`search_tree` looks at each file's and folder's name, each file's raw bytes, and what those bytes
unpack to: the Flate streams of a PDF (also one encapsulated in a DICOM object), the members of zip and tar
files (and of archives inside them, recursively), gzip data, the body of a Deflated Explicit VR Little Endian
DICOM file, and the columns of a Parquet file read as text.  Matching is case-insensitive (ASCII letters).
A hit names where it was found and which pattern matched; callers print labels, never the pattern itself.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from deidpipe.synth.answer_key import MEMBER_SEP

#: How deep archives inside archives (and streams inside them) are opened.
MAX_DEPTH = 4
#: Bounds on what one unpacking step may produce (a zip bomb must not take the search down).
MAX_UNPACKED = 256 * 1024 * 1024

_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\n?endstream", re.S)
_DEFLATED_TS = b"1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class Hit:
    """A pattern found at ``where``: a path relative to the root (``a.zip!/b.dcm`` for a member), with
    ``part`` one of ``name`` (the path itself), ``bytes``, ``flate`` (an inflated PDF stream), ``inflated``
    (a deflated DICOM body or gzip data) or ``parquet`` (a column read as text)."""

    where: str
    part: str
    pattern: bytes


@dataclass
class SearchStats:
    """What a search looked at: entries (files and folders), files, bytes, and views by kind."""

    entries: int = 0
    files: int = 0
    bytes: int = 0
    members: int = 0  # members of zip/tar files (any depth)
    flate: int = 0  # PDF streams inflated
    inflated: int = 0  # deflated DICOM bodies and gzip data
    parquet: int = 0  # Parquet files read as text

    def count(self, suffix: str, part: str) -> None:
        if part == "bytes" and suffix:
            self.members += 1
        elif part in {"flate", "inflated", "parquet"}:
            setattr(self, part, getattr(self, part) + 1)


def _views(data: bytes, depth: int) -> Iterator[tuple[str, str, bytes]]:
    """(member suffix, part, bytes) for ``data`` and everything it unpacks to."""
    yield "", "bytes", data
    if depth >= MAX_DEPTH:
        return
    if b"endstream" in data:  # a PDF, alone or inside an Encapsulated Document
        for m in _STREAM.finditer(data):
            inflated = _inflate(m[1], zlib.MAX_WBITS)
            if inflated is not None:
                yield "", "flate", inflated
    if data[128:132] == b"DICM" and _DEFLATED_TS in data[132:600]:
        body = _inflate(data[_meta_end(data):], -zlib.MAX_WBITS)
        if body is not None:
            yield "", "inflated", body
    if data[:2] == b"\x1f\x8b":
        try:
            unpacked = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            unpacked = None
        if unpacked is not None and len(unpacked) <= MAX_UNPACKED:
            yield from ((s, "inflated" if p == "bytes" and not s else p, b)
                        for s, p, b in _views(unpacked, depth + 1))
    if data[:4] == b"PAR1" and data[-4:] == b"PAR1":
        text = _parquet_text(data)
        if text is not None:
            yield "", "parquet", text
    for name, member in _members(data):
        for suffix, part, view in _views(member, depth + 1):
            yield MEMBER_SEP + name + suffix, part, view


def _meta_end(data: bytes) -> int:
    """End of the File Meta group: (0002,0000) UL group length follows the preamble and 'DICM'."""
    if data[132:136] == b"\x02\x00\x00\x00" and data[136:138] == b"UL":
        return 144 + int.from_bytes(data[140:144], "little")
    return 132


def _inflate(data: bytes, wbits: int) -> bytes | None:
    try:
        obj = zlib.decompressobj(wbits)
        out = obj.decompress(data, MAX_UNPACKED)
    except zlib.error:
        return None
    return out or None


def _members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular member of a zip or tar held in ``data``; nothing for other data."""
    buf = io.BytesIO(data)
    if data[:4] == b"PK\x03\x04" or (zipfile.is_zipfile(buf) and data[:4] != b"PAR1"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and info.file_size <= MAX_UNPACKED:
                        yield info.filename, zf.read(info)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, zlib.error):
            return
        return
    if len(data) >= 512 and data[257:262] == b"ustar":  # gzip-compressed tar: inflated first, see _views
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tf:
                for info in tf:
                    if info.isfile() and info.size <= MAX_UNPACKED:
                        fh = tf.extractfile(info)
                        if fh is not None:
                            yield info.name, fh.read()
        except (tarfile.TarError, OSError, EOFError, zlib.error):
            return


def _parquet_text(data: bytes) -> bytes | None:
    """Every column of a Parquet file as text (UTF-8, one value a line), or None when it cannot be read."""
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - unreadable parquet is still searched as raw bytes
        return None
    lines = [*table.column_names]
    for column in table.columns:
        lines.extend(str(v) for v in column.to_pylist())
    return "\n".join(lines).encode("utf-8")


def search_bytes(data: bytes, patterns: Iterable[bytes], where: str = "",
                 stats: SearchStats | None = None) -> list[Hit]:
    """Hits of ``patterns`` in ``data`` and everything it unpacks to (names of members included)."""
    wanted = {p.lower(): p for p in patterns if p}
    hits: list[Hit] = []
    for suffix, part, view in _views(data, 0):
        if stats is not None:
            stats.count(suffix, part)
        low = view.lower()
        label = where + suffix
        if suffix:
            name = suffix.rsplit(MEMBER_SEP, 1)[-1].encode("utf-8", "surrogateescape").lower()
            hits += [Hit(label, "name", p) for lp, p in wanted.items() if lp in name]
        hits += [Hit(label, part, p) for lp, p in wanted.items() if lp in low]
    return sorted(set(hits), key=lambda h: (h.where, h.part, h.pattern))


def read_member(root: Path, path: str) -> bytes:
    """The bytes at an archive path of the answer key: a file under ``root``, or ``a.zip!/b.zip!/c.dcm``."""
    outer, *inner = path.split(MEMBER_SEP)
    data = (Path(root) / outer).read_bytes()
    for name in inner:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            data = zf.read(name)
    return data


def search_tree(root: Path, patterns: Iterable[bytes], stats: SearchStats | None = None) -> list[Hit]:
    """Every hit of ``patterns`` under ``root``: in each file's and folder's name (UTF-8, as the file system
    stores it), in each file's bytes and in everything they unpack to (see module docstring).  ``stats``, when
    given, is filled with what was looked at."""
    root = Path(root)
    wanted = [p for p in set(patterns) if p]
    lowered = [(p.lower(), p) for p in wanted]
    hits: list[Hit] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        name = path.name.encode("utf-8", "surrogateescape").lower()
        hits += [Hit(rel, "name", p) for lp, p in lowered if lp in name]
        if stats is not None:
            stats.entries += 1
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if stats is not None:
                stats.files += 1
                stats.bytes += len(data)
            hits += search_bytes(data, wanted, rel, stats)
    return hits
