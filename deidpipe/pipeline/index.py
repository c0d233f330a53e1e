"""The index pass: every file hashed, its header read, one manifest row per input file, written to Parquet in chunks.

A row holds the input's relative path (the steward's own data: the manifest lives in the run's state folder, outside
DST, and is never part of a release), the file's size and modification time, a keyed content hash, and the facts the
plan needs: SOP class, modality, study / series / instance UIDs *as pseudonyms* (``key.uid``, the mapping the header
engine uses), transfer syntax, rows / columns / frames and BurnedInAnnotation. No text of the file goes in as it is:
SOP class and transfer syntax only when they are UIDs of the standard (else their pseudonyms), Modality and
BurnedInAnnotation only as defined terms (else ``invalid``). A file that is not DICOM, or whose header cannot be
read, is listed with a fixed reason and no other values.

A folder member is streamed through the content hash with a reused buffer (never held whole), and only its header
is parsed, up to the last tag the manifest needs; the rest of the structure is checked when the object is read in
full by the execute pass.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import UID_dictionary

from deidpipe.deface.select import DESCRIPTION_KEYWORDS, dataset_head_hint, head_hint
from deidpipe.dicomio import quiet_pydicom, read_dataset
from deidpipe.dicomio.deflate import read_partial_bounded
from deidpipe.dicomio.plainread import GiveUp, scan_elements
from deidpipe.errors import InputError
from deidpipe.header.values import MODALITY_TERMS, YES_NO
from deidpipe.keys import ProjectKey
from deidpipe.pipeline.source import (
    MAX_MEMBER_BYTES,
    SourceItem,
    SourceSpec,
    member_path,
    open_regular,
    prefetch,
    read_member,
)
from deidpipe.pipeline.tables import polars_schema

#: Media Storage Directory Storage: a DICOMDIR.
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Directory Record Sequence (0004,1220): only a DICOMDIR has one.
DIRECTORY_RECORD_SEQUENCE = 0x00041220

KIND_DICOM = "dicom"
KIND_DICOMDIR = "dicomdir"
KIND_INVALID = "invalid"
#: Listed by the source but not read (``SourceItem.skip``): not an object at all (a link, a special file)...
KIND_SKIPPED = "skipped"
#: ... or an input refused as it stands (a hostile or broken archive member, an unreadable folder).
KIND_REJECTED = "rejected"
#: A readable file that is not DICOM and does not look like DICOM (a sidecar: text, JSON, PNG, PDF): skipped,
#: never copied. A file that looks like DICOM (:func:`looks_like_dicom`) and cannot be read is KIND_INVALID.
KIND_NOT_DICOM = "not_dicom"
REASON_NOT_DICOM = "not DICOM"

#: Column -> polars type name (see :mod:`deidpipe.pipeline.tables`).
MANIFEST_SCHEMA: dict[str, str] = {
    "path": "String",
    "object_id": "String",
    "size": "Int64",
    "mtime_ns": "Int64",
    "content_hash": "String",
    "kind": "String",
    "reason": "String",
    "sop_class_uid": "String",
    "modality": "String",
    "study_uid": "String",
    "series_uid": "String",
    "instance_uid": "String",
    "transfer_syntax": "String",
    "rows": "Int32",
    "columns": "Int32",
    "frames": "Int32",
    "burned_in_annotation": "String",
    #: ``head``, ``other`` or null: what Body Part Examined and the descriptions say of the region
    #: (:func:`deidpipe.deface.select.head_hint`); the texts themselves are never stored.
    "head_hint": "String",
}

_HEADER_TAGS = [
    "SOPClassUID",
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BurnedInAnnotation",
    "DirectoryRecordSequence",
    # for the head hint only (deidpipe.deface.select); all lie before BurnedInAnnotation (0028,0301)
    "BodyPartExamined",
    "SeriesDescription",
    "ProtocolName",
    "StudyDescription",
]
_HINT_TAGS = ("BodyPartExamined", *DESCRIPTION_KEYWORDS)
_HEADER_TAG_NUMBERS = [Tag(keyword) for keyword in _HEADER_TAGS]
_TAG_OF = {keyword: int(Tag(keyword)) for keyword in _HEADER_TAGS}
#: The header is parsed up to this tag (BurnedInAnnotation, the last one above) and no further.
_LAST_HEADER_TAG = max(_HEADER_TAG_NUMBERS)
#: Read size when streaming a file through the content hash (one buffer per process, reused).
_HASH_CHUNK = 1 << 20
_hash_buffer: bytearray | None = None


def object_id(key: ProjectKey, relpath: str) -> str:
    """An object's id, read from a source: the keyed hash of its relative path.

    The object id is the one name under which the manifest, the journal, the audit table and the quarantine
    records (``run``'s and ``serve``'s alike) track one input object; it holds no original value. An object that
    came over the network has no path: its id is :func:`received_object_id`."""
    return key.digest("input-path", relpath).hex()[:32]


def received_object_id(key: ProjectKey, sop_instance_uid: str) -> str:
    """The id of an object ``deidpipe serve`` received (see :func:`object_id`): a keyed hash of its SOP Instance
    UID (0008,0018), trailing padding ignored."""
    return key.digest("serve-instance", sop_instance_uid.strip().rstrip("\x00")).hex()[:32]


def content_hash(key: ProjectKey, data: bytes) -> str:
    """A keyed hash of a file's bytes (keyed, so it cannot confirm that a known file is in the archive)."""
    return key.digest("input-content", data).hex()[:32]


def _stop_after_header(tag: int, vr: str | None, length: int) -> bool:
    return int.__gt__(tag, _LAST_HEADER_TAG)  # int's comparison: pydicom's Tag compares in Python


def _read_header(fp: BinaryIO, part10: bool) -> pydicom.Dataset:
    """Header only, from ``fp`` at its start. Part 10 files (``part10``: DICM at offset 128) take the fast path:
    elements up to :data:`_LAST_HEADER_TAG`, only the tags the manifest needs kept; anything else goes through
    :func:`read_dataset`, which accepts preamble-less data sets and rejects non-DICOM."""
    if part10:
        with quiet_pydicom():
            try:
                # pydicom's read_partial, but a deflated data set is inflated within bounds (deflate bombs)
                ds = read_partial_bounded(fp, _stop_after_header, specific_tags=_HEADER_TAG_NUMBERS)
                meta = getattr(ds, "file_meta", None)
                if "SOPClassUID" in ds or (meta is not None and "MediaStorageSOPClassUID" in meta):
                    return ds
                # Nothing that identifies a storable object: let the full reader judge it.
            except InvalidDicomError:
                pass
            except InputError:
                raise  # a fixed reason already (a deflated data set over its bound)
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed input
                text = str(exc).lower()
                if isinstance(exc, EOFError) or "end of file" in text or "truncat" in text:
                    raise InputError(None, "file is truncated") from None
                raise InputError(None, f"header cannot be parsed ({type(exc).__name__})") from None
        fp.seek(0)
    return read_dataset(fp, stop_before_pixels=True)


def _is_part10(head: bytes | bytearray | memoryview) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


_SCAN_TAGS = frozenset(int(t) for t in _HEADER_TAG_NUMBERS)


#: Printable ASCII but the backslash (the value delimiter).
_PRINTABLE_SINGLE = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")


def text_value(raw: bytes) -> str:
    """A single-valued string as pydicom gives it after ``str(value).strip()`` (trailing NUL and space padding
    removed, then spaces); GiveUp where pydicom's decoding could differ (control characters, several values,
    anything but printable ASCII)."""
    text = raw.rstrip(b"\0 ").strip()
    if not _PRINTABLE_SINGLE.fullmatch(text):
        raise GiveUp
    return text.decode("ascii")


def _header_facts(data: bytes | memoryview, complete: bool) -> dict[str, Any] | None:
    """The facts from a byte scan of the header (:func:`deidpipe.dicomio.plainread.scan_elements`); None where pydicom
    must parse it."""
    scan = scan_elements(data, _SCAN_TAGS, int(_LAST_HEADER_TAG), complete=complete)
    if scan is None:
        return None
    meta, found = scan
    try:
        return _facts_from_scan(meta, found)
    except GiveUp:
        return None


#: Bytes of a file's start that :func:`looks_like_dicom` judges.
HEAD_BYTES = 512
_VR_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def looks_like_dicom(head: bytes) -> bool:
    """Whether a file whose header could not be read was meant to be DICOM (then it is a broken object,
    quarantined) rather than something else (a sidecar, skipped): "DICM" at offset 128; a preamble of NULs cut
    before or inside "DICM"; or, without a preamble, a first element of group 0002 or 0008 (File Meta, or the
    identifying group every data set starts with) with an explicit VR's two capitals or a plausible implicit
    length."""
    if len(head) >= 132:
        if head[128:132] == b"DICM":
            return True
    elif not head[:128].strip(b"\0") and b"DICM".startswith(head[128:]):
        return True
    if len(head) < 8 or int.from_bytes(head[0:2], "little") not in (0x0002, 0x0008):
        return False
    if head[4] in _VR_LETTERS and head[5] in _VR_LETTERS:
        return True
    length = int.from_bytes(head[4:8], "little")
    return length == 0xFFFFFFFF or length < (1 << 24)


def _hash_and_header(spec: SourceSpec, key: ProjectKey, item: SourceItem, row: dict[str, Any],
                     head_out: bytearray) -> dict[str, Any]:
    """Fill in size, mtime and content hash; return the header facts. A folder member is streamed. Once the
    whole file was read, its first :data:`HEAD_BYTES` are put in ``head_out`` (for :func:`looks_like_dicom`)."""
    path = member_path(spec, item)
    if path is None:
        data = read_member(spec, item)
        row["size"] = len(data)
        row["content_hash"] = content_hash(key, data)
        if not data:
            raise InputError(None, "is empty")
        head_out[:] = data[:HEAD_BYTES]
        return _header_facts(data, complete=True) or _facts_from_dataset(_read_header(io.BytesIO(data),
                                                                                      _is_part10(data)))
    global _hash_buffer
    if item.size > MAX_MEMBER_BYTES:
        raise InputError(None, "file is too large to be a DICOM object this pipeline handles")
    try:
        fh = open_regular(path, buffering=65536)  # never blocks on a FIFO; closed below
    except OSError as exc:
        raise InputError(None, f"cannot be read ({type(exc).__name__})") from None
    with fh:
        try:
            row["mtime_ns"] = os.fstat(fh.fileno()).st_mtime_ns
            if _hash_buffer is None:
                _hash_buffer = bytearray(_HASH_CHUNK)
            view = memoryview(_hash_buffer)
            h = key.hasher("input-content")
            size = 0
            part10 = False
            head = b""
            facts = None
            while n := fh.readinto(view):
                if size == 0:
                    first = bytes(view[:min(n, HEAD_BYTES)])
                    part10 = _is_part10(view[:n])
                    # The header is read from the first chunk while it is in the buffer.
                    facts = _header_facts(view[:n], complete=False) if part10 else None
                    if item.size <= _HASH_CHUNK:  # the whole file: kept for pydicom, if it must parse
                        head = bytes(view[:n])
                h.update(view[:n])
                size += n
                if size > MAX_MEMBER_BYTES:
                    raise InputError(None, "file is too large to be a DICOM object this pipeline handles")
            row["size"] = size
            row["content_hash"] = h.digest().hex()[:32]
            if not size:
                raise InputError(None, "is empty")
            head_out[:] = first
            if facts is None and part10 and len(head) == size:  # the header may end where the file ends
                facts = _header_facts(head, complete=True)
            if facts is not None:
                return facts
            fh.seek(0)
        except OSError as exc:
            raise InputError(None, f"cannot be read ({type(exc).__name__})") from None
        # A file that fit in the first chunk is parsed from memory (on a file object pydicom's position checks
        # cost a system call per element); a larger one from the file.
        return _facts_from_dataset(_read_header(io.BytesIO(head) if len(head) == size else fh, part10))


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _facts_from_dataset(ds: pydicom.Dataset) -> dict[str, Any]:
    """The manifest's facts from a header pydicom parsed (original UIDs: the row gets their pseudonyms)."""
    meta = getattr(ds, "file_meta", None)
    return {
        "sop_class_uid": _text(ds, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta else None),
        "transfer_syntax": _text(meta, "TransferSyntaxUID") if meta else None,
        "directory": "DirectoryRecordSequence" in ds,
        "study_uid": _text(ds, "StudyInstanceUID"),
        "series_uid": _text(ds, "SeriesInstanceUID"),
        "instance_uid": _text(ds, "SOPInstanceUID"),
        "modality": _text(ds, "Modality"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "frames": _int(ds, "NumberOfFrames"),
        "burned_in_annotation": _text(ds, "BurnedInAnnotation"),
        "head_hint": dataset_head_hint(ds),
    }


def _facts_from_scan(meta: dict[int, bytes], found: dict[int, tuple[bytes | None, bytes | None]]) -> dict[str, Any]:
    """The same facts from a byte scan; raises :class:`GiveUp` where a value is not the plain kind (another VR
    than the dictionary's, several values, a number pydicom would have to interpret)."""

    def raw(keyword: str, vr: bytes) -> bytes | None:
        entry = found.get(_TAG_OF[keyword])
        if entry is None:
            return None
        if (entry[0] is not None and entry[0] != vr) or entry[1] is None:
            raise GiveUp  # another VR than the dictionary's, or a sequence where a value belongs
        return entry[1]

    def text(keyword: str, vr: bytes) -> str | None:
        value = raw(keyword, vr)
        return (text_value(value) or None) if value is not None else None

    def us(keyword: str) -> int | None:
        value = raw(keyword, b"US")
        if not value:
            return None
        if len(value) != 2:
            raise GiveUp
        return int.from_bytes(value, "little")

    frames_text = text("NumberOfFrames", b"IS")
    if frames_text is not None and not frames_text.isdigit():
        raise GiveUp
    sop_class = text("SOPClassUID", b"UI") or text_value(meta.get(0x00020002, b"")) or None
    if sop_class is None:
        raise GiveUp  # nothing names a storable object: the full reader judges
    return {
        "sop_class_uid": sop_class,
        "transfer_syntax": text_value(meta.get(0x00020010, b"")) or None,
        "directory": DIRECTORY_RECORD_SEQUENCE in found,
        "study_uid": text("StudyInstanceUID", b"UI"),
        "series_uid": text("SeriesInstanceUID", b"UI"),
        "instance_uid": text("SOPInstanceUID", b"UI"),
        "modality": text("Modality", b"CS"),
        "rows": us("Rows"),
        "columns": us("Columns"),
        "frames": int(frames_text) if frames_text is not None else None,
        "burned_in_annotation": text("BurnedInAnnotation", b"CS"),
        # read leniently (any character set, any VR): the texts only feed a yes/no keyword match
        "head_hint": head_hint(*_hint_texts(found)),
    }


def _hint_texts(found: dict[int, tuple[bytes | None, bytes | None]]) -> tuple[bytes | None, list[bytes | None]]:
    """(body part, descriptions) as raw bytes from a byte scan, for :func:`head_hint`."""
    values = [found.get(_TAG_OF[k], (None, None))[1] for k in _HINT_TAGS]
    return values[0], values[1:]


#: pydicom's UID dictionary types (PS3.6 Table A-1) that the manifest's two UID columns may hold as they are.
SOP_CLASS_TYPES = frozenset({"SOP Class", "Meta SOP Class"})
TRANSFER_SYNTAX_TYPES = frozenset({"Transfer Syntax"})
#: What the manifest holds for a Modality or Burned In Annotation outside its defined terms.
INVALID_TERM = "invalid"


def public_uid(key: ProjectKey, value: str | None, types: frozenset[str]) -> str | None:
    """A SOP class or transfer syntax as the manifest may hold it: a UID of the standard (pydicom's dictionary,
    of one of ``types``) as it is, anything else as its pseudonym (``key.uid``). A file can put any text in a UI
    element, a name or an ID included; only the standard's own UIDs are known to carry nothing of the patient."""
    if value is None:
        return None
    entry = UID_dictionary.get(value)
    return value if entry is not None and entry[1] in types else key.uid(value)


def defined_term(value: str | None, terms: frozenset[str]) -> str | None:
    """A coded string as the manifest may hold it: one of ``terms``, or :data:`INVALID_TERM` (never the text)."""
    if value is None:
        return None
    return value if value in terms else INVALID_TERM


def index_item(spec: SourceSpec, key: ProjectKey, item: SourceItem, oid: str | None = None) -> dict[str, Any]:
    """One manifest row for one source member (never raises for a bad input: the row says why). ``oid``: the
    object's id where the caller has one (:func:`received_object_id`), else :func:`object_id` of its path."""
    row: dict[str, Any] = dict.fromkeys(MANIFEST_SCHEMA)
    row.update(path=item.relpath, object_id=oid or object_id(key, item.relpath), size=item.size)
    if item.skip is not None:
        row.update(kind=KIND_REJECTED if item.quarantine else KIND_SKIPPED, reason=item.skip)
        return row
    head = bytearray()
    try:
        facts = _hash_and_header(spec, key, item, row, head)
    except Exception as exc:  # noqa: BLE001 - fail closed: any surprise is a reason, never a crash
        if head and not looks_like_dicom(bytes(head)):  # read in full, and never meant to be DICOM
            row.update(kind=KIND_NOT_DICOM, reason=REASON_NOT_DICOM)
        elif isinstance(exc, InputError):
            row.update(kind=KIND_INVALID, reason=exc.reason)
        else:
            row.update(kind=KIND_INVALID, reason=f"header cannot be read ({type(exc).__name__})")
        return row
    sop_class = facts["sop_class_uid"]
    row["sop_class_uid"] = public_uid(key, sop_class, SOP_CLASS_TYPES)
    row["transfer_syntax"] = public_uid(key, facts["transfer_syntax"], TRANSFER_SYNTAX_TYPES)
    if sop_class == DICOMDIR_SOP_CLASS or facts["directory"]:
        row.update(kind=KIND_DICOMDIR, reason="DICOMDIR: not carried over (its file references and "
                   "patient records do not apply to the pseudonymised tree)")
        return row
    for column in ("study_uid", "series_uid", "instance_uid"):
        value = facts[column]
        row[column] = key.uid(value) if value else None
    rows, frames = facts["rows"], facts["frames"]
    row.update(
        kind=KIND_DICOM,
        modality=defined_term(facts["modality"], MODALITY_TERMS),
        rows=rows,
        columns=facts["columns"],
        frames=frames if frames is not None else (1 if rows else None),
        burned_in_annotation=defined_term(facts["burned_in_annotation"], YES_NO),
        head_hint=facts["head_hint"],
    )
    return row


def index_batch(spec: SourceSpec, key: ProjectKey, items: list[SourceItem],
                oids: list[str] | None = None) -> list[dict[str, Any]]:
    """Manifest rows for ``items``; ``oids``: their object ids where the caller has them (see :func:`index_item`)."""
    prefetch(spec, items)
    return [index_item(spec, key, item, oids[n] if oids else None) for n, item in enumerate(items)]


class ManifestWriter:
    """Collects rows and writes them as Parquet parts of ``chunk_rows``; :meth:`close` joins them into one file."""

    def __init__(self, path: Path, chunk_rows: int = 5000) -> None:
        self.path = path
        self.parts_dir = path.with_name(path.stem + "-parts")
        self.chunk_rows = chunk_rows
        self._rows: list[dict[str, Any]] = []
        self._parts: list[Path] = []
        self.count = 0
        if self.parts_dir.exists():
            for old in self.parts_dir.iterdir():
                old.unlink()
        self.parts_dir.mkdir(parents=True, exist_ok=True)

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self._rows.append(row)
            self.count += 1
        if len(self._rows) >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        part = self.parts_dir / f"part-{len(self._parts):06d}.parquet"
        import polars as pl

        pl.DataFrame(self._rows, schema=polars_schema(MANIFEST_SCHEMA), orient="row").write_parquet(part)
        self._parts.append(part)
        self._rows = []

    def close(self) -> Path:
        self._flush()
        import polars as pl

        tmp = self.path.with_suffix(".parquet.tmp")
        if self._parts:
            pl.scan_parquet(self._parts).sort("path").sink_parquet(tmp)
        else:
            pl.DataFrame(schema=polars_schema(MANIFEST_SCHEMA)).write_parquet(tmp)
        tmp.replace(self.path)
        for part in self._parts:
            part.unlink()
        self.parts_dir.rmdir()
        return self.path
