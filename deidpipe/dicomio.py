"""Reading and writing DICOM files with typed, value-free errors.

pydicom parses lazily and warns (through ``warnings`` and its logger) with attribute values in the text. Here a
read checks the whole structure (lengths, VRs, every sequence) so that a truncated or malformed file fails at
read time with an :class:`InputError`; values are decoded only where de-identification needs them. pydicom's
own messages are kept out of the logs.

Truncation is judged by byte accounting (:func:`deidpipe.plainread.truncation`): a file that ends inside an
element header or value, or before a delimiter that is due, is a :class:`TruncatedError`, wherever the cut falls
(pydicom alone returns the elements before a cut element header as if the file ended there).
"""

from __future__ import annotations

import copy
import io
import struct
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_has_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset, validate_file_meta
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from deidpipe.errors import InputError, InvalidValueError, NotDicomError, TruncatedError
from deidpipe.inflate import check_read_to_end, read_deflated
from deidpipe.plainread import dictionary_vr, parse_plain, truncation
from deidpipe.quiet import install as install_quiet
from deidpipe.quiet import quiet

# pydicom's warnings and log lines quote values: silenced in any process that reads or writes through here.
install_quiet()

#: Silence pydicom's value-quoting warnings and validation while inside the block (see :mod:`deidpipe.quiet`).
quiet_pydicom = quiet


_KNOWN_VRS = frozenset(v.value for v in pydicom.valuerep.VR)
#: Pixel Data, Float Pixel Data, Double Float Pixel Data.
_PIXEL_VALUE_TAGS = frozenset({BaseTag(0x7FE00010), BaseTag(0x7FE00008), BaseTag(0x7FE00009)})


def _looks_like_dicom(ds: Dataset) -> bool:
    """A forced read of a non-DICOM file yields a handful of nonsense tags; a real data set has known ones."""
    tags = list(ds.keys())
    if len(tags) < 2:
        return False
    known = sum(1 for t in tags if dictionary_has_tag(t) or t.is_private)
    return known / len(tags) >= 0.9 and any(t.group == 0x0008 for t in tags)


def _describe(exc: BaseException) -> str:
    """A reason built from the exception's type only: pydicom's messages can quote values."""
    if isinstance(exc, EOFError | ValueError) and "end of file" in str(exc).lower():
        return "file is truncated"
    return f"cannot be parsed ({type(exc).__name__})"


def _check_structure(ds: Dataset, path: str | Path | None, *, checked: bool = False, top: bool = False) -> None:
    """Check every element's length and VR, and parse every sequence, without decoding other values.

    pydicom reads a value shorter than its announced length without complaint: that is a truncated file,
    caught here. Values themselves are decoded later, only where de-identification changes them; elements
    kept as they are go back to the output byte for byte. ``checked``: the top level's lengths and VRs are
    known to be sound (read by :mod:`deidpipe.plainread`), only its sequences are left to parse. ``top``: ``ds``
    is the object's top level, whose (Float, Double Float) Pixel Data cut short is no structural error but
    incomplete pixel data, judged with the header by :mod:`deidpipe.pixelcheck` (quarantined, unless the
    policy allows incomplete pixel data).
    """
    for tag in list(ds._dict):
        raw = ds._dict[tag]
        if checked and isinstance(raw, RawDataElement):
            vr = raw.VR or dictionary_vr(tag)
        elif isinstance(raw, RawDataElement):
            value, length = raw.value, raw.length
            if (isinstance(value, bytes) and length != 0xFFFFFFFF and len(value) < length
                    and not (top and tag in _PIXEL_VALUE_TAGS)):
                raise TruncatedError(path, f"file is truncated (inside element {tag})")
            if raw.VR is not None and raw.VR not in _KNOWN_VRS:
                raise InvalidValueError(path, f"element {tag} has an unknown VR")
            vr = raw.VR or dictionary_vr(tag)
        else:
            vr = raw.VR
        if vr == "SQ":
            try:
                items = ds[tag].value
            except Exception as exc:  # noqa: BLE001 - any parser failure is an input problem
                raise InvalidValueError(path, f"sequence {tag} {_describe(exc)}") from None
            for item in items:
                _check_structure(item, path)


_SEQUENCE_DELIMITER = BaseTag(0xFFFEE0DD)
def _drop_stray_delimiter(ds: Dataset) -> None:
    """Drop an empty Sequence Delimitation Item found among the top-level elements.

    Some writers put one after native Pixel Data (fo-dicom's GH364 and DIRW0007 samples): pydicom reads it as an
    element (FFFE,E0DD) without a VR, which nothing can decode or write. It delimits nothing and carries no
    value, so the object is read, and written, without it."""
    raw = ds._dict.get(_SEQUENCE_DELIMITER)
    if raw is not None and isinstance(raw, RawDataElement) and not raw.length:
        del ds._dict[_SEQUENCE_DELIMITER]


def read_dataset(
    source: str | Path | BinaryIO | bytes, *, stop_before_pixels: bool = False, name: str | None = None
) -> FileDataset:
    """Read a DICOM file completely or raise a typed :class:`InputError` that names the file and the reason.

    Files without the 128-byte preamble and File Meta Information are accepted when what follows parses as a
    plausible data set. ``source`` may be the file's bytes: a plain file (see :mod:`deidpipe.plainread`) is
    then read without pydicom's per-element reader, to the same data set. A whole read (not
    ``stop_before_pixels``) accounts for the file's bytes first: a file cut inside an element is refused.
    """
    label = name if name is not None else (str(source) if isinstance(source, str | Path) else None)
    if isinstance(source, bytes):
        with quiet_pydicom():  # parse_plain decodes the File Meta and the character set
            ds = None if stop_before_pixels else parse_plain(source)
            if ds is not None:  # its walk accounted for every byte of the top level
                try:
                    _check_structure(ds, label, checked=True)  # its sequences: parse_plain checked the rest
                except InputError:
                    raise
                except Exception as exc:  # noqa: BLE001 - as below
                    raise InputError(label, _describe(exc)) from None
                return ds
        if not stop_before_pixels and (cut := truncation(source)) is not None:
            raise TruncatedError(label, cut)
        return read_dataset(io.BytesIO(source), stop_before_pixels=stop_before_pixels, name=name)
    if isinstance(source, str | Path):
        p = Path(source)
        if p.is_dir():
            raise NotDicomError(label, "is a directory")
        if not p.exists():
            raise InputError(label, "does not exist")
        if p.stat().st_size == 0:
            raise NotDicomError(label, "is empty")
        if not stop_before_pixels:  # as bytes: accounted for, and read by plainread where it is plain
            try:
                data = p.read_bytes()
            except OSError as exc:
                raise InputError(label, f"cannot be read ({type(exc).__name__})") from None
            ds = read_dataset(data, name=label)
            ds.filename = str(p)  # as pydicom's read of the path names it
            return ds
        try:
            fh = open(p, "rb")  # noqa: SIM115 - read below as a file object: where pydicom stopped is asked
        except OSError as exc:
            raise InputError(label, f"cannot be read ({type(exc).__name__})") from None
        with fh:
            return read_dataset(fh, stop_before_pixels=stop_before_pixels, name=label)
    with quiet_pydicom():
        try:
            ds = read_deflated(source, label, stop_before_pixels=stop_before_pixels)  # bounded; None if not deflated
            if ds is None:
                try:
                    ds = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
                except InvalidDicomError:
                    source.seek(0)
                    ds = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels, force=True)
                    if not _looks_like_dicom(ds):
                        raise NotDicomError(label, "is not a DICOM file (no DICM prefix, no data set)") from None
                if not stop_before_pixels:
                    check_read_to_end(source, label, ds)
            _drop_stray_delimiter(ds)
            _check_structure(ds, label, top=True)
            if getattr(ds, "file_meta", None) is not None:
                _check_structure(ds.file_meta, label)
        except InputError:
            raise
        except (EOFError, OSError) as exc:
            if isinstance(exc, EOFError) or "end of file" in str(exc).lower():
                raise TruncatedError(label, "file is truncated") from None
            raise InputError(label, f"cannot be read ({type(exc).__name__})") from None
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for malformed input
            if isinstance(exc, struct.error) or "end of file" in str(exc).lower() or "truncat" in str(exc).lower():
                raise TruncatedError(label, "file is truncated") from None
            raise InputError(label, _describe(exc)) from None
    return ds


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
    if item.original_encoding == (implicit, True) and item.original_character_set == item._character_set:
        return True
    if any(isinstance(e, RawDataElement) or " or " in (e.VR or "") for e in item._dict.values()):
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


def _write_file_meta(fp: DicomBytesIO, ds: Dataset) -> None:
    """``ds``'s File Meta Information as ``save_as(enforce_file_format=True)`` writes it, ``ds`` unchanged: on a
    copy, the SOP Class and Instance UIDs taken from the data set where they differ, pydicom's checks and
    additions, then the group length and the elements."""
    meta = FileMetaDataset()
    for tag, elem in ds.file_meta._dict.items():
        meta._dict[tag] = copy.copy(elem)
    for meta_keyword, keyword in (("MediaStorageSOPClassUID", "SOPClassUID"),
                                  ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        in_meta, in_ds = meta.get(meta_keyword), ds.get(keyword)
        if in_meta is None or (in_ds and in_ds != in_meta):
            setattr(meta, meta_keyword, in_ds)
    validate_file_meta(meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    _write_elements(body, meta, [t for t in sorted(meta._dict) if t != _GROUP_LENGTH], raw=False, ascii_text=True)
    data = body.getvalue()
    meta.FileMetaInformationGroupLength = len(data)
    fp.write(struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(data)))
    fp.write(data)


_GROUP_LENGTH = BaseTag(0x00020000)


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
