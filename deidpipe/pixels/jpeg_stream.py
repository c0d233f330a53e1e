"""Metadata segments of one JPEG frame (ISO/IEC 10918-1 baseline, extended and lossless; ISO/IEC 14495-1 JPEG-LS).

A JPEG stream is a list of marker segments (``FF xx`` and a 16-bit length that counts itself) with entropy-coded
data after each SOS. :func:`strip_jpeg_metadata` walks it and rewrites it without the segments that carry text
and are not needed to decode:

* COM (``FFFE``): dropped.
* APP0 JFIF: kept with its standard fields only (version, density units, X/Y density; thumbnail size set to 0
  and the thumbnail dropped); any other APP0 (JFXX thumbnails, vendor data) is dropped.
* APP2 ``ICC_PROFILE``: kept with the profile's text blanked (:mod:`deidpipe.pixels.icc`: a colour profile, not
  used by DICOM decoders, but it belongs to the colours); dropped when split over several segments.
* APP14 ``Adobe``: kept, cut to its standard 12 bytes (version, flags, colour transform: tells RGB from YCbCr).
* APP8 ``mrfx``: kept, cut to its 5 bytes (the HP colour transform of JPEG-LS, which CharLS decodes).
* every other APPn (EXIF and XMP in APP1, FlashPix/MPF in APP2, SPIFF in APP8, Photoshop IRB in APP13, ...):
  dropped.
* bytes after EOI other than zero padding: dropped.

Tables, frame and scan headers (DQT, DHT, DAC, DRI, DNL, DHP, EXP, SOFn, SOS; SOF55 and LSE in JPEG-LS) and the
entropy-coded data are copied byte for byte: the pixels decode identically. A marker this module does not know,
a segment that runs past the end of the data, or a stream that does not start with SOI or never reaches EOI
raises :class:`StreamError`: the object is quarantined rather than released unchecked.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from deidpipe.errors import DeidError


class StreamError(DeidError):
    """A compressed frame cannot be parsed into segments, so its metadata cannot be removed (quarantine)."""


class Stripped(NamedTuple):
    """A frame's stream after the metadata was removed.

    Attributes:
        data: the rewritten stream; the very input object when nothing was removed (the fast path).
        removed: how many segments or boxes were dropped or cut to their standard fields.
    """

    data: bytes
    removed: int


_U16 = struct.Struct(">H")
SOI, EOI, SOS, COM = 0xD8, 0xD9, 0xDA, 0xFE
SOF55, LSE = 0xF7, 0xF8
#: Segments copied as they are: SOF0-15 (but C4, C8, CC), DHT, DAC, DQT, DNL, DRI, DHP, EXP; JPEG-LS SOF55, LSE.
_DECODING = frozenset({*range(0xC0, 0xD0), 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, SOF55, LSE}) - {0xC8}
#: Standalone markers (no length): TEM and RST0-7 (between scans they carry nothing).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
#: The next marker inside entropy-coded data. JPEG stuffs FF 00 (and RSTn sits between intervals); fill bytes
#: FF FF may precede a marker. JPEG-LS stuffs a zero bit after FF, so a marker's second byte is 80-FF.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")
_NEXT_MARKER_LS = re.compile(rb"\xff(?=[\x80-\xcf\xd8-\xfe])")

JFIF_ID, ICC_ID, ADOBE_ID, MRFX_ID = b"JFIF\x00", b"ICC_PROFILE\x00", b"Adobe", b"mrfx"
JFIF_SIZE, ADOBE_SIZE, MRFX_SIZE = 14, 12, 5


def _kept_app(marker: int, payload: bytes) -> bytes | None:
    """The payload an APPn segment keeps (possibly cut to its standard fields), or None to drop it."""
    if marker == 0xE0 and payload.startswith(JFIF_ID):
        if len(payload) < JFIF_SIZE:  # short (malformed) but no room for text: as it is
            return payload
        return payload[:JFIF_SIZE - 2] + b"\x00\x00"  # no thumbnail (its width and height, then its pixels)
    if marker == 0xE2 and payload.startswith(ICC_ID):
        return _kept_icc(payload)
    # Cut to their standard size, but never dropped: a short Adobe segment (some encoders write 10 bytes) still
    # tells a decoder that three components are RGB, not YCbCr.
    if marker == 0xEE and payload.startswith(ADOBE_ID):
        return payload[:ADOBE_SIZE]
    if marker == 0xE8 and payload.startswith(MRFX_ID):
        return payload[:MRFX_SIZE]
    return None


def _kept_icc(payload: bytes) -> bytes | None:
    """An APP2 ``ICC_PROFILE`` segment (identifier, sequence number, count, profile) with the profile's text
    blanked (:func:`deidpipe.pixels.icc.blank_icc_text`); None (dropped) for a profile split over several segments
    or one whose tags do not add up: the header's ICC Profile (0028,2000) is the one DICOM decoders read."""
    from deidpipe.pixels.icc import ICCError, blank_icc_text

    head = len(ICC_ID) + 2
    if len(payload) < head or payload[head - 1] != 1:
        return None
    chunk = payload[head:]
    try:
        profile = blank_icc_text(chunk)
    except ICCError:
        return None
    return payload if profile is chunk else payload[:head] + profile


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + _U16.pack(len(payload) + 2) + payload


def strip_jpeg_metadata(frame: bytes) -> Stripped:
    """Remove COM and text-bearing APPn segments (and trailing bytes) from one JPEG or JPEG-LS frame.

    Returns :class:`Stripped` whose ``data`` is ``frame`` itself when there was nothing to remove. Raises
    :class:`StreamError` (fixed words, no stream content) when the frame is not a well-formed JPEG stream.
    """
    data = bytes(frame)
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != SOI:
        raise StreamError("JPEG frame does not start with SOI")
    out: list[bytes] = []
    kept_from = 0  # data[kept_from:pos] is still to be copied as it is
    removed = 0
    next_marker = _NEXT_MARKER
    pos = 2
    while True:
        if pos >= n or data[pos] != 0xFF:
            raise StreamError("JPEG frame has no marker where one is expected")
        mark = pos
        while pos < n and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= n:
            raise StreamError("JPEG frame ends before EOI")
        marker = data[pos]
        pos += 1
        if marker == EOI:
            break
        if marker in _STANDALONE:
            continue
        if pos + 2 > n:
            raise StreamError("JPEG frame ends inside a marker segment")
        length = _U16.unpack_from(data, pos)[0]
        end = pos + length
        if length < 2 or end > n:
            raise StreamError("JPEG marker segment runs past the end of the frame")
        if marker in _DECODING:
            if marker == SOF55:
                next_marker = _NEXT_MARKER_LS
        elif marker == COM or 0xE0 <= marker <= 0xEF:
            payload = data[pos + 2:end]
            kept = None if marker == COM else _kept_app(marker, payload)
            if kept != payload:  # dropped or cut: copy what came before, then the cut segment (if any)
                out.append(data[kept_from:mark])
                if kept is not None:
                    out.append(_segment(marker, kept))
                kept_from = end
                removed += 1
        elif marker != SOS:
            raise StreamError(f"JPEG frame holds an unknown marker FF{marker:02X}")
        pos = end
        if marker == SOS:  # entropy-coded data up to the next marker, copied as it is
            found = next_marker.search(data, pos)
            if found is None:
                raise StreamError("JPEG frame ends inside entropy-coded data")
            pos = found.start()
    end = pos
    trailing = data[end:]
    if trailing.strip(b"\x00\xff"):  # zero (or FF) padding after EOI is no content; anything else is dropped
        removed += 1
    if not removed:
        return Stripped(frame, 0)
    out.append(data[kept_from:end])
    return Stripped(b"".join(out), removed)
