"""Metadata inside compressed pixel data: removed from every frame's stream, the encapsulation rebuilt.

    removed = clean_encapsulated(ds)   # ds (a de-identified FileDataset) is changed in place when removed > 0

JPEG and JPEG-LS frames can carry COM and APPn segments (EXIF, XMP, vendor text), JPEG 2000 codestreams COM
segments and JP2 files xml/uuid boxes: a name there survives a header-only de-identification. Every frame of
encapsulated Pixel Data (7FE0,0010) is rewritten at the segment level by :func:`strip_jpeg_metadata` or
:func:`strip_j2k_metadata` (the entropy-coded data is copied byte for byte, so the pixels decode identically);
when any frame changed, the Pixel Data is re-encapsulated one fragment per frame (even item lengths, zero
padding), with a Basic Offset Table when the input had one, and the Extended Offset Table (7FE0,0001) and its
Lengths (7FE0,0002) rewritten when the input had them.

Transfer syntaxes (see ``docs/pixels.md``):
  * JPEG baseline/extended/lossless (1.2.840.10008.1.2.4.50-.70, retired processes included) and JPEG-LS
    (.80, .81): :func:`strip_jpeg_metadata`;
  * JPEG 2000 (.90-.93) and HTJ2K (.201-.203): :func:`strip_j2k_metadata`;
  * RLE Lossless (1.2.840.10008.1.2.5), Encapsulated Uncompressed (1.2.840.10008.1.2.1.98) and Deflated Image
    Frame Compression (1.2.840.10008.1.2.8.1): their frames hold only pixel values (RLE: a 64-byte header of
    segment offsets and run-length coded bytes), no text: left as they are;
  * native syntaxes: nothing to do, at the cost of one look-up;
  * anything else encapsulated (MPEG-2, MPEG-4/H.264, HEVC video, which carry user data in their streams; private
    or unknown syntaxes): :class:`StreamUnsupportedError`, the object is quarantined.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from deidpipe.errors import DeidError
from deidpipe.pixels.j2k_stream import strip_j2k_metadata
from deidpipe.pixels.jpeg_stream import StreamError, Stripped, strip_jpeg_metadata

__all__ = ["ACTION", "StreamError", "StreamUnsupportedError", "Stripped", "clean_encapsulated",
           "strip_j2k_metadata", "strip_jpeg_metadata", "stream_kind"]

#: The audit's action code: metadata segments and boxes removed from compressed frames.
ACTION = "stream_metadata_removed"

_PIXEL_DATA = BaseTag(0x7FE00010)
_EOT, _EOT_LENGTHS = BaseTag(0x7FE00001), BaseTag(0x7FE00002)
_NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"})
_JPEG = frozenset({*(f"1.2.840.10008.1.2.4.{n}" for n in range(50, 67)), "1.2.840.10008.1.2.4.70",
                   "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
_J2K = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
                  "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                  "1.2.840.10008.1.2.4.203"})
#: Encapsulated syntaxes whose frames hold pixel values only.
_NO_TEXT = frozenset({"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.98", "1.2.840.10008.1.2.8.1"})
_STRIP = {"jpeg": strip_jpeg_metadata, "j2k": strip_j2k_metadata}
_U32 = struct.Struct("<I")


class StreamUnsupportedError(DeidError):
    """Encapsulated pixel data of a transfer syntax whose streams cannot be checked for metadata (quarantine)."""


def stream_kind(transfer_syntax: str | None) -> str | None:
    """``jpeg`` or ``j2k`` for a transfer syntax whose frames are cleaned, None for one whose frames carry no
    text (native, RLE, ...); raises :class:`StreamUnsupportedError` for any other (video, private, unknown)."""
    ts = str(transfer_syntax or "").strip().rstrip("\0")
    if ts in _JPEG:
        return "jpeg"
    if ts in _J2K:
        return "j2k"
    if ts in _NATIVE or ts in _NO_TEXT:
        return None
    raise StreamUnsupportedError("compressed pixel data of this transfer syntax cannot be checked for metadata")


def _is_encapsulated(elem: object) -> bool:
    length = getattr(elem, "length", None)  # a raw element as read
    if length is not None and not isinstance(elem, DataElement):
        return length == 0xFFFFFFFF
    return bool(getattr(elem, "is_undefined_length", False))


def _frames(value: bytes, n_frames: int, extended: tuple[bytes, bytes] | None, incomplete: bool) -> list[bytes]:
    """Every frame of encapsulated ``value`` (fragments joined), by pydicom's offset-table rules. Where the
    object is known to miss frames (``incomplete``, written under the policy's ``allow_incomplete_pixels``) and
    fewer fragments than frames are there, each fragment is taken as one frame."""
    from pydicom.encaps import generate_fragments, generate_frames

    try:
        frames = list(generate_frames(value, number_of_frames=n_frames, extended_offsets=extended))
        if extended is not None and sum(len(f) + (len(f) & 1) for f in frames) != _fragment_bytes(value):
            # The Extended Offset Table names only part of the fragments' bytes (beyond each frame's pad byte):
            # the rest (a fragment outside every frame, text after a frame's end) would go out unparsed. Split as
            # if it were absent.
            frames = list(generate_frames(value, number_of_frames=n_frames))
    except Exception:  # noqa: BLE001 - any malformed encapsulation: the object cannot be checked (below)
        frames = []
    if len(frames) != n_frames and incomplete:
        try:
            fragments = list(generate_fragments(value))[1:]  # the first item is the Basic Offset Table
        except Exception:  # noqa: BLE001
            fragments = []
        if 0 < len(fragments) < n_frames:
            return fragments
    if len(frames) != n_frames:
        raise StreamError("encapsulated pixel data cannot be split into its frames")
    return frames


def _fragment_bytes(value: bytes) -> int:
    """The bytes of every fragment of encapsulated ``value`` after the Basic Offset Table."""
    from pydicom.encaps import generate_fragments

    fragments = generate_fragments(value)  # one at a time: the pixel data of a slide may be gigabytes
    next(fragments, b"")  # the Basic Offset Table
    return sum(len(f) for f in fragments)


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        raise StreamError("NumberOfFrames is not a number") from None


def _value(ds: Dataset, tag: BaseTag) -> bytes | None:
    elem = ds._dict.get(tag)
    value = None if elem is None else elem.value
    return bytes(value) if isinstance(value, bytes | bytearray) else None


def clean_encapsulated(ds: Dataset, transfer_syntax: str | None = None, *, incomplete: bool = False) -> int:
    """Remove the metadata segments from every frame of ``ds``'s encapsulated Pixel Data (in place).

    ``transfer_syntax`` defaults to ``ds.file_meta.TransferSyntaxUID``. Returns how many segments and boxes
    were removed: 0 leaves ``ds`` untouched (native pixel data returns at once; a compressed object with
    nothing to remove costs one walk over its segment headers). Raises :class:`StreamError` when a frame
    cannot be parsed, :class:`StreamUnsupportedError` for an encapsulated syntax whose streams are not
    understood: the object must then be quarantined. ``incomplete``: the object is known to miss frames (see
    :func:`_frames`).
    """
    elem = ds._dict.get(_PIXEL_DATA)
    if elem is None:
        return 0
    if transfer_syntax is None:
        meta = getattr(ds, "file_meta", None)
        transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if str(transfer_syntax) in _NATIVE:
        return 0
    kind = stream_kind(transfer_syntax)
    if kind is None:
        return 0
    if not _is_encapsulated(elem):  # a stream written as one value: no decoder reads it, nor does this module
        raise StreamError("compressed pixel data is not encapsulated")
    value = _value(ds, _PIXEL_DATA)
    if value is None:
        raise StreamError("encapsulated pixel data is not held as bytes")
    eot, eot_lengths = _value(ds, _EOT), _value(ds, _EOT_LENGTHS)
    extended = (eot, eot_lengths) if eot and eot_lengths else None
    n_frames = _number_of_frames(ds)
    frames = _frames(value, n_frames, extended, incomplete)
    strip = _STRIP[kind]
    results = [strip(f) for f in frames]
    removed = sum(r.removed for r in results)
    if removed:
        had_bot = len(value) >= 8 and _U32.unpack_from(value, 4)[0] > 0 and len(frames) == n_frames
        _store(ds, [r.data for r in results], had_bot, extended is not None)
    return removed


def _store(ds: Dataset, frames: Iterable[bytes], had_bot: bool, had_eot: bool) -> None:
    """Encapsulate ``frames`` one fragment each as ``ds``'s Pixel Data (new elements: the source data set the
    old ones may be shared with is not touched), with the offset tables the input had."""
    from pydicom.encaps import encapsulate, encapsulate_extended

    frames = list(frames)
    if had_eot:
        value, eot, lengths = encapsulate_extended(frames)
        ds[_EOT] = DataElement(_EOT, "OV", eot)
        ds[_EOT_LENGTHS] = DataElement(_EOT_LENGTHS, "OV", lengths)
    else:
        # A Basic Offset Table holds 32-bit offsets: past 4 GiB of frames it is left empty (as the standard allows).
        total = sum(len(f) + (len(f) & 1) + 8 for f in frames[:-1])
        value = encapsulate(frames, has_bot=had_bot and total <= 0xFFFFFFFF)
    ds[_PIXEL_DATA] = DataElement(_PIXEL_DATA, "OB", value, is_undefined_length=True)
