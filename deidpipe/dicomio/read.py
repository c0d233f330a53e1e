"""Reading DICOM files completely, with typed, value-free errors.

pydicom parses lazily and warns (through ``warnings`` and its logger) with attribute values in the text. Here a
read checks the whole structure (lengths, VRs, every sequence) so that a truncated or malformed file fails at
read time with an :class:`InputError`; values are decoded only where de-identification needs them. pydicom's
own messages are kept out of the logs (:mod:`deidpipe.dicomio.quiet`, installed by the package).

Truncation is judged by byte accounting (:func:`deidpipe.dicomio.plainread.truncation`): a file that ends inside
an element header or value, or before a delimiter that is due, is a :class:`TruncatedError`, wherever the cut
falls (pydicom alone returns the elements before a cut element header as if the file ended there).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.datadict import dictionary_has_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag

from deidpipe.dicomio.deflate import check_read_to_end, read_deflated
from deidpipe.dicomio.plainread import UNDEFINED, dictionary_vr, parse_plain, sequence_is_plain, truncation
from deidpipe.dicomio.quiet import quiet as quiet_pydicom
from deidpipe.errors import InputError, InvalidValueError, NotDicomError, TruncatedError

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


def _walked(raw: object) -> bool:
    """Whether ``raw`` is a sequence of defined length in Explicit VR Little Endian whose items the length walker
    accounts for (:func:`deidpipe.dicomio.plainread.sequence_is_plain`): pydicom would parse it without error."""
    return (isinstance(raw, RawDataElement) and raw.VR == "SQ" and not raw.is_implicit_VR and raw.is_little_endian
            and raw.length != UNDEFINED and isinstance(raw.value, bytes) and sequence_is_plain(raw.value))


def _check_structure(ds: Dataset, path: str | Path | None, *, checked: bool = False, top: bool = False,
                     walk_sequences: bool = False) -> None:
    """Check every element's length and VR, and parse every sequence, without decoding other values.

    pydicom reads a value shorter than its announced length without complaint: that is a truncated file,
    caught here. Values themselves are decoded later, only where de-identification changes them; elements
    kept as they are go back to the output byte for byte. ``checked``: the top level's lengths and VRs are
    known to be sound (read by :mod:`deidpipe.dicomio.plainread`), only its sequences are left to parse. ``top``: ``ds``
    is the object's top level, whose (Float, Double Float) Pixel Data cut short is no structural error but
    incomplete pixel data, judged with the header by :mod:`deidpipe.dicomio.completeness` (quarantined, unless the
    policy allows incomplete pixel data). ``walk_sequences``: a sequence the length walker accounts for is left
    raw instead of parsed (:func:`_walked`); the answer is the same.
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
            if walk_sequences and _walked(raw):
                continue
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
    source: str | Path | BinaryIO | bytes, *, stop_before_pixels: bool = False, name: str | None = None,
    walk_sequences: bool = False, leave_out_private: bool = False,
) -> FileDataset:
    """Read a DICOM file completely or raise a typed :class:`InputError` that names the file and the reason.

    Files without the 128-byte preamble and File Meta Information are accepted when what follows parses as a
    plausible data set. ``source`` may be the file's bytes: a plain file (see :mod:`deidpipe.dicomio.plainread`) is
    then read without pydicom's per-element reader, to the same data set. A whole read (not
    ``stop_before_pixels``) accounts for the file's bytes first: a file cut inside an element is refused.

    ``walk_sequences`` (with bytes): the top-level sequences of a plain file that the length walker accounts for
    are left raw, not parsed by pydicom; the read refuses exactly what it refuses otherwise. For a caller that
    reads top-level attributes only (``serve``'s check before Success): parsing sequences was a third of it.

    ``leave_out_private`` (with bytes): a plain file's top-level private elements are judged but not built, but
    person names and sequences (see :func:`~deidpipe.dicomio.plainread.parse_plain`); the data set's
    ``private_left_out`` lists them. Only for the header stage, which removes them unread: the data set is not the
    whole object.
    """
    label = name if name is not None else (str(source) if isinstance(source, str | Path) else None)
    if isinstance(source, bytes):
        with quiet_pydicom():  # parse_plain decodes the File Meta and the character set
            ds = None if stop_before_pixels else parse_plain(source, leave_out_private=leave_out_private)
            if ds is not None:  # its walk accounted for every byte of the top level
                try:
                    # its sequences: parse_plain checked the rest
                    _check_structure(ds, label, checked=True, walk_sequences=walk_sequences)
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
