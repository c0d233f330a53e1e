"""Is an object's pixel data all there? Judged from lengths and the Image Pixel attributes, nothing decoded.

A file cut inside Pixel Data reads without error: pydicom stops at the end of the file and returns the data set
read so far (without Pixel Data when the cut is in its header or in encapsulated fragments), or a native value
shorter than Rows x Columns x frames x samples x bits. De-identifying that header and writing it would hand a
steward an image without its image. :func:`pixel_data_problem` names what is missing, in fixed words, so that
the object is quarantined (or, by the policy's ``allow_incomplete_pixels``, written with the reason counted).

"An image is expected" when the data set has Rows, Columns and Bits Allocated at its top level: those are the
Image Pixel module's (and the Floating Point Image Pixel module's) Type 1 attributes, present only where the IOD
has pixel data. Objects that legitimately have none (structured reports, presentation states, waveforms,
encapsulated documents, RT plans and structure sets, an RT Dose with only DVHs) carry none of the three.
"""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pydicom.uid import UID

#: The audit's action code for an object written with incomplete pixel data (policy ``allow_incomplete_pixels``).
INCOMPLETE_ACTION = "incomplete_pixels"
PIXELS_MISSING = "pixel data is missing though the header describes an image"
PIXELS_SHORT = "pixel data is shorter than its header declares"
FRAGMENTS_CUT = "encapsulated pixel data fragments do not end"
FRAMES_MISSING = "encapsulated pixel data has fewer fragments than frames"
FRAMES_UNCOUNTED = "Number of Frames is not a number: the pixel data's frames cannot be counted"

_PIXEL_DATA, _FLOAT_PIXEL_DATA, _DOUBLE_PIXEL_DATA = 0x7FE00010, 0x7FE00008, 0x7FE00009
_ROWS, _COLUMNS, _BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280100
_ITEM = b"\xfe\xff\x00\xe0"
_UINT32 = struct.Struct("<I")
_NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"})


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """A single non-negative integer attribute, or ``default`` when absent, empty, several or not a number."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number >= 0 else default


def number_of_frames(ds: Dataset) -> int | None:
    """Number of Frames (0028,0008): 1 when absent or empty (a single frame), the number when it is one, None when
    it is not a number (pydicom reads "1A" without error and leaves it to ``int()`` to fail later)."""
    try:
        value = ds.get("NumberOfFrames")
        return 1 if value is None or value == "" else max(int(value), 1)
    except (TypeError, ValueError):
        return None


def declared_native_size(ds: Dataset) -> int | None:
    """The bytes native pixel data must hold by the header (Rows x Columns x frames x samples x bits, packed
    bits for Bits Allocated 1, two samples a pixel for YBR_FULL_422), or None when an attribute needed is missing
    or not a number."""
    rows, columns, bits = _int(ds, "Rows"), _int(ds, "Columns"), _int(ds, "BitsAllocated")
    frames, samples = _int(ds, "NumberOfFrames", 1), _int(ds, "SamplesPerPixel", 1)
    if None in (rows, columns, bits, frames, samples):
        return None
    assert rows is not None and columns is not None and bits is not None and frames is not None
    assert samples is not None
    if samples == 3 and str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2  # native 4:2:2: two luminance and one pair of chrominance values per two pixels
    total_bits = rows * columns * max(frames, 1) * samples * bits
    return (total_bits + 7) // 8


def _fragments(value: bytes | bytearray) -> int | None:
    """The number of fragments after the Basic Offset Table in encapsulated Pixel Data (as read: up to, not
    including, the Sequence Delimitation Item), or None when an item is cut or the items do not follow."""
    pos, count, size = 0, -1, len(value)
    while pos < size:
        if pos + 8 > size or value[pos:pos + 4] != _ITEM:
            return None
        pos += 8 + _UINT32.unpack_from(value, pos + 4)[0]
        if pos > size:
            return None
        count += 1
    return count


def _transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return None if ts is None else str(UID(ts))


def pixel_data_problem(ds: Dataset) -> str | None:
    """Why ``ds``'s pixel data is incomplete (one of the fixed reasons above), or None when it is whole or there
    is none to expect. Longer native data than declared is fine (a trailing pad byte, or more)."""
    d = ds._dict
    if not (_ROWS in d and _COLUMNS in d and _BITS_ALLOCATED in d):
        return None
    present = [tag for tag in (_PIXEL_DATA, _FLOAT_PIXEL_DATA, _DOUBLE_PIXEL_DATA) if tag in d]
    if not present:
        return PIXELS_MISSING
    elem = d[present[0]]
    value = elem.value
    if value is None:
        return None  # deferred by the caller's read: not ours to judge
    if number_of_frames(ds) is None:
        # Neither a decoder nor this check can tell which bytes are which frame; the header stage would replace
        # the value by a dummy ("0") and write an object that claims no frame (pydicom's badVR.dcm).
        return FRAMES_UNCOUNTED
    if not isinstance(value, bytes | bytearray):
        return None  # set by the caller as an array or the like: its length is the caller's
    ts = _transfer_syntax(ds)
    undefined = elem.length == 0xFFFFFFFF if hasattr(elem, "length") else elem.is_undefined_length
    if present[0] == _PIXEL_DATA and undefined and (ts is None or ts not in _NATIVE):
        fragments = _fragments(value)
        if fragments is None:
            return FRAGMENTS_CUT
        if fragments < max(_int(ds, "NumberOfFrames", 1) or 1, 1):
            return FRAMES_MISSING
        return None
    if ts is not None and ts not in _NATIVE:
        return None  # compressed data of a defined length: a decoder's to judge
    declared = declared_native_size(ds)
    if declared is not None and len(value) < declared:
        return PIXELS_SHORT
    return None
