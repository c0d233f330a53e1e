"""Writing DICOM Part 10 files: the one writer, File Meta Information included.

:func:`write_dataset` is pydicom's ``save_as(enforce_file_format=True)``. :func:`encode_dataset` gives the same
bytes faster: elements kept as they were read are copied raw, plain ASCII strings, single integers and sequences
of such items are packed here, and only the rest goes through pydicom's per-element writer.
:func:`file_meta_bytes` writes the preamble and File Meta Information (0002,xxxx) of a data set received by the
node (``deidpipe serve``), from its three UIDs, with the same element packing.

The Implementation Class UID (0002,0012) and Implementation Version Name (0002,0013) of every file deidpipe writes,
and of the node's associations, are stated here once.
"""

from __future__ import annotations

import copy
import io
import struct
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from deidpipe.dicomio.quiet import quiet as quiet_pydicom
from deidpipe.version import __version__

#: Implementation Class UID (0002,0012) of files written by deidpipe: 2.25 + a fixed 128-bit number.
IMPLEMENTATION_CLASS_UID = "2.25.215806209617355374052498211498738711649"
#: Implementation Version Name (0002,0013): at most 16 characters.
IMPLEMENTATION_VERSION_NAME = f"DEIDPIPE_{__version__.replace('.', '_')}"[:16]


def write_dataset(ds: Dataset, target: str | Path | BinaryIO) -> None:
    """Write ``ds`` as a DICOM Part 10 file (preamble and File Meta Information always present)."""
    with quiet_pydicom():
        ds.save_as(target, enforce_file_format=True)


_PIXEL_DATA = BaseTag(0x7FE00010)


def _native_pixel_tail(ds: Dataset) -> tuple[bytes, bytes] | None:
    """(encoded element header, value) of native Pixel Data that is the last element of ``ds``, when pydicom
    would write it as exactly those bytes (little endian, uncompressed, defined even length); else None."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or not ds._dict:
        return None
    elem = ds._dict.get(_PIXEL_DATA)
    if elem is None or max(ds._dict, key=int) != _PIXEL_DATA:
        return None
    value = elem.value
    if not isinstance(value, bytes) or len(value) % 2 or len(value) >= 0xFFFFFFFF:
        return None
    if isinstance(elem, RawDataElement):
        if elem.length != len(value) or not elem.is_little_endian:
            return None
    elif elem.is_undefined_length:
        return None
    if ts == ImplicitVRLittleEndian:
        return struct.pack("<HHI", 0x7FE0, 0x0010, len(value)), value
    if elem.VR not in ("OB", "OW"):
        return None
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, elem.VR.encode(), 0, len(value)), value


_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


def _raw_header(tag: int, vr: str | None, length: int, implicit: bool) -> bytes | None:
    """The element header pydicom writes before a raw value (little endian), or None where pydicom does more
    than write the raw bytes (undefined length, a long value in a short VR, no VR)."""
    if length == 0xFFFFFFFF:
        return None
    if implicit:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)
    if vr is None or len(vr) != 2:
        return None
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    if length > 0xFFFF:
        return None
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


#: VRs pydicom writes as the string in the default encoding whatever the character set (``write_string``).
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
#: VRs pydicom writes in the data set's character set (``write_text``; PN has a writer of its own).
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
#: Character sets in which ASCII text is encoded as ASCII (none of them switches code sets with escapes).
_ASCII_CHARSETS = frozenset({default_encoding, "", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})


#: Struct formats of the integer VRs pydicom's ``write_numbers`` packs.
_INT_FORMATS = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i"}


def _plain_value(value: object, vr: str, ascii_text: bool) -> bytes | None:
    """The bytes pydicom writes for a plain value: one ``int`` of an integer VR, or see :func:`_string_value`."""
    fmt = _INT_FORMATS.get(vr)
    if fmt is None:
        return _string_value(value, vr, ascii_text)
    if type(value) is not int:
        return None  # several values, another type, or empty: pydicom's writer
    try:
        return struct.pack(fmt, value)
    except struct.error:
        return None  # out of range: pydicom's writer reports it


def _string_value(value: object, vr: str, ascii_text: bool) -> bytes | None:
    """The bytes pydicom writes for a string element whose value is ASCII ``str`` (one value or several), or
    None where its writer would do more (another type, other characters, a character set with escapes)."""
    if vr not in _STRING_VRS and not (ascii_text and vr in _TEXT_VRS):
        return None
    if value is None:
        return b""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list | tuple | MultiValue) and all(isinstance(v, str) for v in value):
        text = "\\".join(value)
    else:
        return None
    if not text.isascii():
        return None
    if len(text) % 2:
        text += "\0" if vr == "UI" else " "
    return text.encode("ascii")


def _write_elements(fp: DicomBytesIO, ds: Dataset, tags: list[BaseTag], raw: bool, ascii_text: bool,
                    encoding: Any = None) -> None:
    """Write ``ds``'s elements ``tags`` as pydicom's ``write_data_element`` would.

    Raw elements (when ``raw``: the data set keeps the encoding it was read with), plain ASCII strings, single
    integers and sequences of such items skip its per-element machinery: their header is packed here and their
    bytes written. Everything else goes through pydicom. ``encoding``: the character set in force (a sequence
    item inherits its parent's); by default the data set's own."""
    implicit = fp.is_implicit_VR
    if encoding is None:
        encoding = ds.get("SpecificCharacterSet", default_encoding)
    for tag in tags:
        elem = ds._dict[tag]
        value = None
        if isinstance(elem, RawDataElement):
            # Odd-length Pixel Data is not copied: pydicom decodes it before writing, and pads it.
            if (raw and isinstance(elem.value, bytes) and elem.VR != "SQ" and elem.length == len(elem.value)
                    and not (tag == _PIXEL_DATA and len(elem.value) % 2)):
                value = elem.value
        elif elem.VR == "SQ":
            if _write_sequence(fp, elem, encoding):
                continue
        elif not elem.is_undefined_length:
            value = _plain_value(elem.value, elem.VR, ascii_text)
        if value is not None:
            header = _raw_header(tag, elem.VR, len(value), implicit)
            if header is not None:
                fp.write(header)
                fp.write(value)
                continue
        # Pixel Data decoded, as pydicom's dcmwrite has it (it pads an odd length); the rest as stored.
        write_data_element(fp, ds[tag] if tag == _PIXEL_DATA else ds.get_item(tag), encoding)


_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _item_is_plain(item: Dataset, implicit: bool) -> bool | None:
    """How a sequence item can be written by :func:`_write_elements`: True (its raw elements as they are: it keeps
    the encoding it was read with), False (made here: no raw element), None (pydicom must write it: it would
    re-encode the item, or correct an ambiguous VR)."""
    if any(" or " in (e.VR or "") for e in item._dict.values() if not isinstance(e, RawDataElement)):
        return None  # pydicom's writer resolves an ambiguous VR first (correct_ambiguous_vr)
    if item.original_encoding == (implicit, True) and item.original_character_set == item._character_set:
        return True
    if any(isinstance(e, RawDataElement) for e in item._dict.values()):
        return None
    return False


def _write_sequence(fp: DicomBytesIO, elem: Any, encoding: Any) -> bool:
    """Write a sequence (a DataElement of VR SQ) as pydicom's ``write_data_element`` / ``write_sequence_item``
    would: items of defined length (unless read with undefined length), the sequence's own length as it was.
    Returns False, having written nothing, where an item needs pydicom (see :func:`_item_is_plain`).

    Every object gets at least the De-identification Method Code Sequence: pydicom's writer spends about half a
    millisecond an object on sequences of a few elements."""
    implicit = fp.is_implicit_VR
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, implicit
    for item in elem.value:
        raw = _item_is_plain(item, implicit)
        if raw is None:
            return False
        item_encoding = item.get("SpecificCharacterSet", encoding)
        item_fp = DicomBytesIO()
        item_fp.is_little_endian, item_fp.is_implicit_VR = True, implicit
        _write_elements(item_fp, item, _body_tags(item), raw=raw, ascii_text=_is_ascii_charset(item_encoding),
                        encoding=item_encoding)
        data = item_fp.getvalue()
        if getattr(item, "is_undefined_length_sequence_item", False):
            body.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + data + _ITEM_END)
        else:
            body.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(data)) + data)
    value = body.getvalue()
    tag = int(elem.tag)
    if elem.is_undefined_length:
        fp.write(struct.pack("<HHI", tag >> 16, tag & 0xFFFF, 0xFFFFFFFF) if implicit
                 else struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF))
        fp.write(value + _SEQUENCE_END)
    else:
        fp.write(_raw_header(tag, "SQ", len(value), implicit) or b"")
        fp.write(value)
    return True


def _is_ascii_charset(charset: Any) -> bool:
    """Whether text in ``charset`` (a Specific Character Set value) is written as plain ASCII bytes."""
    return charset is None or (isinstance(charset, str) and charset in _ASCII_CHARSETS)


def _body_tags(ds: Dataset) -> list[BaseTag]:
    """``ds``'s tags in the order pydicom writes them; retired group lengths (but the File Meta's) dropped."""
    return [tag for tag in sorted(ds._dict, key=int) if tag.element != 0 or tag.group <= 6]


def _write_body(fp: DicomBytesIO, ds: Dataset) -> bool:
    """Write ``ds``'s elements as pydicom's ``write_dataset`` would (see :func:`_write_elements`). Returns False
    (and writes nothing) where pydicom would re-encode the kept elements: another encoding than the one read,
    or another character set."""
    implicit, little = fp.is_implicit_VR, fp.is_little_endian
    if not little or ds.original_encoding != (implicit, little):
        return False
    if ds.original_character_set != ds._character_set:
        return False
    _write_elements(fp, ds, _body_tags(ds), raw=True, ascii_text=_is_ascii_charset(ds.get("SpecificCharacterSet")))
    return True


#: The File Meta elements the header engine gives every output, with their VRs: written by
#: :func:`file_meta_bytes` where they are all there is (see :func:`_own_file_meta`).
_OWN_META = {0x00020002: "UI", 0x00020003: "UI", 0x00020010: "UI", 0x00020012: "UI", 0x00020013: "SH"}
_SOP_UIDS = (("MediaStorageSOPClassUID", "SOPClassUID", 0x00020002),
             ("MediaStorageSOPInstanceUID", "SOPInstanceUID", 0x00020003))


def _meta_uid(in_meta: Any, in_ds: Any) -> Any:
    """The SOP Class or Instance UID the File Meta is written with: the data set's where it has one that differs
    from the File Meta's (or the File Meta has none), else the File Meta's, as ``save_as`` takes it."""
    return in_ds if in_meta is None or (in_ds and in_ds != in_meta) else in_meta


def _own_file_meta(ds: Dataset) -> bytes | None:
    """What :func:`_write_file_meta` writes, packed by :func:`file_meta_bytes` (no copy of the File Meta, no
    pydicom validation: a fifth of an object's encoding), where the File Meta is the header engine's own: these
    five elements as decoded ASCII text of their VRs, this writer's implementation UID and version name. pydicom's
    check adds only the File Meta Information Version then, which :func:`file_meta_bytes` writes. None otherwise,
    and where a UID is empty or cannot be an element (pydicom's check and writer judge those)."""
    meta = ds.file_meta._dict
    if len(meta) != len(_OWN_META):
        return None
    for tag, vr in _OWN_META.items():
        elem = meta.get(tag)
        if elem is None or isinstance(elem, RawDataElement) or elem.VR != vr or not isinstance(elem.value, str):
            return None
    if meta[0x00020012].value != IMPLEMENTATION_CLASS_UID or meta[0x00020013].value != IMPLEMENTATION_VERSION_NAME:
        return None
    uids = []
    for _, keyword, tag in _SOP_UIDS:
        uid = _meta_uid(meta[tag].value, ds.get(keyword))
        if not isinstance(uid, UID):
            return None  # below it becomes a pydicom UID on the way in (surrounding spaces go): pydicom's to write
        uids.append(uid)
    syntax = meta[0x00020010].value
    if not all(uids) or not syntax or not all(isinstance(u, str) for u in uids):
        return None
    try:
        return file_meta_bytes(uids[0], uids[1], syntax)[132:]
    except ValueError:
        return None


def _write_file_meta(fp: DicomBytesIO, ds: Dataset) -> None:
    """``ds``'s File Meta Information as ``save_as(enforce_file_format=True)`` writes it, ``ds`` unchanged: on a
    copy, the SOP Class and Instance UIDs taken from the data set where they differ, pydicom's checks and
    additions, then the group length and the elements."""
    if (own := _own_file_meta(ds)) is not None:
        fp.write(own)
        return
    meta = FileMetaDataset()
    for tag, elem in ds.file_meta._dict.items():
        meta._dict[tag] = copy.copy(elem)
    for meta_keyword, keyword, _ in _SOP_UIDS:
        in_meta = meta.get(meta_keyword)
        if (uid := _meta_uid(in_meta, ds.get(keyword))) is not in_meta:
            setattr(meta, meta_keyword, uid)
    validate_file_meta(meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    _write_elements(body, meta, [t for t in sorted(meta._dict) if t != _GROUP_LENGTH], raw=False, ascii_text=True)
    data = body.getvalue()
    fp.write(_group_length(len(data)))
    fp.write(data)


_GROUP_LENGTH = BaseTag(0x00020000)


def _group_length(length: int) -> bytes:
    """File Meta Information Group Length (0002,0000), UL, explicit VR little endian: ``length`` bytes follow."""
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, length)


def _meta_element(tag: int, vr: str, text: str) -> bytes:
    """One File Meta element of a string VR (UI, SH), encoded as :func:`_write_elements` encodes it: an ASCII
    value padded to an even length. Raises ValueError where it cannot be (not ASCII, too long)."""
    value = _string_value(text, vr, ascii_text=True)
    if value is None:
        raise ValueError("a File Meta UID is not ASCII text")
    header = _raw_header(tag, vr, len(value), implicit=False)
    if header is None:
        raise ValueError("a File Meta UID is too long")
    return header + value


#: File Meta Information Version (0002,0001), then (0002,0002), (0002,0003), (0002,0010) per object, then these.
_META_VERSION = _raw_header(0x00020001, "OB", 2, implicit=False) + b"\x00\x01"  # type: ignore[operator]
_META_IMPLEMENTATION = (_meta_element(0x00020012, "UI", IMPLEMENTATION_CLASS_UID)
                        + _meta_element(0x00020013, "SH", IMPLEMENTATION_VERSION_NAME))


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and File Meta Information for a data set received by the node (PS3.10 section 7.1):
    File Meta Information Version (0002,0001), Media Storage SOP Class and Instance UIDs (0002,0002-0003),
    Transfer Syntax UID (0002,0010) and this writer's Implementation Class UID and Version Name (0002,0012-0013).

    The same bytes as pydicom's ``write_file_meta_info`` (``tests/serve/test_pdu.py`` compares them), packed by
    this module's element writer instead of pydicom's (1.3 ms an object, on the path every sender waits on).
    Raises ValueError for a UID that is not ASCII or too long for an element."""
    body = b"".join((_META_VERSION, _meta_element(0x00020002, "UI", sop_class),
                     _meta_element(0x00020003, "UI", sop_instance), _meta_element(0x00020010, "UI", transfer_syntax),
                     _META_IMPLEMENTATION))
    return b"\x00" * 128 + b"DICM" + _group_length(len(body)) + body


def _encode(ds: Dataset) -> bytes:
    """The Part 10 file of ``ds``: pydicom's preamble and File Meta Information, then the body (fast for raw
    elements when the data set keeps the encoding it was read with; pydicom's writer otherwise)."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        with quiet_pydicom():
            fp = DicomBytesIO()
            fp.write(getattr(ds, "preamble", None) or b"\0" * 128)
            fp.write(b"DICM")
            _write_file_meta(fp, ds)
            fp.is_little_endian, fp.is_implicit_VR = True, ts == ImplicitVRLittleEndian
            if _write_body(fp, ds):
                return fp.getvalue()
    buf = io.BytesIO()
    write_dataset(ds, buf)
    return buf.getvalue()


def encode_dataset(ds: Dataset) -> list[bytes]:
    """The Part 10 file :func:`write_dataset` writes, as pieces to be written one after the other.

    Native Pixel Data at the end goes out as its own piece, uncopied (pydicom would copy it through two
    buffers); every other element, and any other Pixel Data, is encoded by pydicom. The bytes are the same.
    """
    tail = _native_pixel_tail(ds)
    if tail is None:
        return [_encode(ds)]
    elem = ds._dict.pop(_PIXEL_DATA)
    try:
        head = _encode(ds)
    finally:
        ds._dict[_PIXEL_DATA] = elem
    return [head, *tail]
