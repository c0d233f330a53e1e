"""Reading and writing DICOM files with typed, value-free errors.

pydicom parses lazily and warns (through ``warnings`` and its logger) with attribute values in the text. Here a
read checks the whole structure (lengths, VRs, every sequence) so that a truncated or malformed file fails at
read time with an :class:`InputError`; values are decoded only where de-identification needs them. pydicom's
own messages are kept out of the logs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from deidpipe.errors import InputError, InvalidValueError, NotDicomError, TruncatedError

# pydicom's log lines quote values; nothing below WARNING of ours goes through, and pydicom's are silenced.
logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's value-quoting warnings and validation while inside the block."""
    settings = pydicom_config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = pydicom_config.IGNORE
    settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


_KNOWN_VRS = frozenset(v.value for v in pydicom.valuerep.VR)


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


def _check_structure(ds: Dataset, path: str | Path | None) -> None:
    """Check every element's length and VR, and parse every sequence, without decoding other values.

    pydicom reads a value shorter than its announced length without complaint: that is a truncated file,
    caught here. Values themselves are decoded later, only where de-identification changes them; elements
    kept as they are go back to the output byte for byte.
    """
    for tag in list(ds._dict):
        raw = ds._dict[tag]
        if isinstance(raw, RawDataElement):
            value, length = raw.value, raw.length
            if isinstance(value, bytes) and length != 0xFFFFFFFF and len(value) < length:
                raise TruncatedError(path, f"file is truncated (inside element {tag})")
            if raw.VR is not None and raw.VR not in _KNOWN_VRS:
                raise InvalidValueError(path, f"element {tag} has an unknown VR")
            vr = raw.VR or _dictionary_vr(tag)
        else:
            vr = raw.VR
        if vr == "SQ":
            try:
                items = ds[tag].value
            except Exception as exc:  # noqa: BLE001 - any parser failure is an input problem
                raise InvalidValueError(path, f"sequence {tag} {_describe(exc)}") from None
            for item in items:
                _check_structure(item, path)


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def read_dataset(
    source: str | Path | BinaryIO, *, stop_before_pixels: bool = False, name: str | None = None
) -> FileDataset:
    """Read a DICOM file completely or raise a typed :class:`InputError` that names the file and the reason.

    Files without the 128-byte preamble and File Meta Information are accepted when what follows parses as a
    plausible data set.
    """
    label = name if name is not None else (str(source) if isinstance(source, str | Path) else None)
    if isinstance(source, str | Path):
        p = Path(source)
        if p.is_dir():
            raise NotDicomError(label, "is a directory")
        if not p.exists():
            raise InputError(label, "does not exist")
        if p.stat().st_size == 0:
            raise NotDicomError(label, "is empty")
    with quiet_pydicom():
        try:
            try:
                ds = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                if not isinstance(source, str | Path):
                    source.seek(0)
                ds = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels, force=True)
                if not _looks_like_dicom(ds):
                    raise NotDicomError(label, "is not a DICOM file (no DICM prefix, no data set)") from None
            _check_structure(ds, label)
            if getattr(ds, "file_meta", None) is not None:
                _check_structure(ds.file_meta, label)
        except InputError:
            raise
        except (EOFError, OSError) as exc:
            if isinstance(exc, EOFError) or "end of file" in str(exc).lower():
                raise TruncatedError(label, "file is truncated") from None
            raise InputError(label, f"cannot be read ({type(exc).__name__})") from None
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for malformed input
            if "end of file" in str(exc).lower() or "truncat" in str(exc).lower():
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
    if elem is None or max(ds._dict) != _PIXEL_DATA:
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


def encode_dataset(ds: Dataset) -> list[bytes]:
    """The Part 10 file :func:`write_dataset` writes, as pieces to be written one after the other.

    Native Pixel Data at the end goes out as its own piece, uncopied (pydicom would copy it through two
    buffers); every other element, and any other Pixel Data, is encoded by pydicom. The bytes are the same.
    """
    tail = _native_pixel_tail(ds)
    buf = io.BytesIO()
    if tail is None:
        write_dataset(ds, buf)
        return [buf.getvalue()]
    elem = ds._dict.pop(_PIXEL_DATA)
    try:
        write_dataset(ds, buf)
    finally:
        ds._dict[_PIXEL_DATA] = elem
    return [buf.getvalue(), *tail]
