"""Metadata of one JPEG 2000 frame (ISO/IEC 15444-1 codestream or JP2 file; Part 2 and HTJ2K, 15444-15, too).

A codestream is SOC, a main header of marker segments (``FF xx`` and a 16-bit length that counts itself), then
tile-parts (SOT, a tile-part header of marker segments, SOD, the tile-part's bit stream), then EOC. SOT's Psot is
the tile-part's length from SOT on (0 for a last tile-part that runs to EOC). :func:`strip_j2k_metadata`
drops every COM segment (``FF64``: free text or binary, in the main and the tile-part headers), fixes Psot of
every tile-part that got shorter, and drops TLM (``FF55``, an optional index of tile-part lengths) when a length
changed: it would point into the wrong places. Everything else, the bit streams included, is copied byte for
byte.

A JP2 file wraps the codestream in boxes (length, type, contents). Only what a decoder reads is kept: the
signature (``jP``), ``ftyp`` (brands other than JPEG 2000's replaced, minor version 0), the ``jp2h`` header
(``ihdr``, ``bpcc``, ``colr`` with an ICC profile's text blanked, ``pclr``, ``cmap``, ``cdef``, ``res ``) and the
codestream box ``jp2c`` (cleaned as above); ``xml ``, ``uuid``, ``uinf``, ``jp2i`` and any other box are
dropped. A marker or box this module does not know to be harmless, or a length that does not add up, raises
:class:`StreamError` (the object is quarantined).
"""

from __future__ import annotations

import struct

from deidpipe.pixels.jpeg_stream import StreamError, Stripped

_U16, _U32, _U64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")
SOC, SOT, SOD, EOC, COM, TLM = 0x4F, 0x90, 0x93, 0xD9, 0x64, 0x55
#: Main header segments: CAP, SIZ, COD, COC, TLM, PRF, PLM, CPF, QCD, QCC, RGN, POC, PPM, CRG and the Part 2 ones
#: (DFS, ADS, MCT, MCC, NLT, MCO, CBD, ATK).
_MAIN = frozenset({0x50, 0x51, 0x52, 0x53, 0x55, 0x56, 0x57, 0x59, 0x5C, 0x5D, 0x5E, 0x5F, 0x60, 0x63,
                   *range(0x72, 0x7A)})
#: Tile-part header segments: COD, COC, QCD, QCC, RGN, POC, PPT, PLT and the Part 2 ones.
_TILE = frozenset({0x52, 0x53, 0x58, 0x5C, 0x5D, 0x5E, 0x5F, 0x61, *range(0x72, 0x7A)})

JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_JP2_TOP = (b"jP  ", b"ftyp", b"jp2h", b"jp2c")
_JP2_HEADER = frozenset({b"ihdr", b"bpcc", b"colr", b"pclr", b"cmap", b"cdef", b"res "})
#: File type brands of JPEG 2000 (Part 1, Part 2, HTJ2K): the only ones a file type box keeps.
_JP2_BRANDS = frozenset({b"jp2 ", b"jpx ", b"jpxb", b"jph "})


def _marker(data: bytes, pos: int) -> int:
    if pos + 2 > len(data) or data[pos] != 0xFF:
        raise StreamError("JPEG 2000 codestream has no marker where one is expected")
    return data[pos + 1]


def _segment_end(data: bytes, pos: int) -> int:
    if pos + 4 > len(data):
        raise StreamError("JPEG 2000 codestream ends inside a marker segment")
    end = pos + 2 + _U16.unpack_from(data, pos + 2)[0]
    if end > len(data) or end < pos + 4:
        raise StreamError("JPEG 2000 marker segment runs past the end of the codestream")
    return end


def _codestream_end(data: bytes) -> int:
    """Where a codestream whose last tile-part runs to EOC (Psot 0) ends: after the last EOC, which only
    padding (zero or FF bytes) may follow."""
    end = data.rfind(b"\xff\xd9")
    if end < 0 or data[end + 2:].strip(b"\x00\xff"):
        raise StreamError("JPEG 2000 codestream does not end with EOC")
    return end + 2


def strip_j2k_codestream(data: bytes) -> Stripped:
    """Drop the COM segments of a JPEG 2000 codestream (main and tile-part headers), fixing Psot and TLM."""
    data = bytes(data)
    if len(data) < 4 or data[:2] != b"\xff\x4f" or data[2:4] != b"\xff\x51":
        raise StreamError("JPEG 2000 codestream does not start with SOC, SIZ")
    main: list[bytes] = [data[:2]]
    removed = 0
    pos = 2
    while (marker := _marker(data, pos)) != SOT:
        if marker not in _MAIN and marker != COM:
            raise StreamError(f"JPEG 2000 main header holds an unknown marker FF{marker:02X}")
        end = _segment_end(data, pos)
        if marker == COM:
            removed += 1
        else:
            main.append(data[pos:end])
        pos = end
    parts: list[bytes] = []
    shortened = False
    last = len(data)
    while pos < len(data) and _marker(data, pos) == SOT:
        end = _segment_end(data, pos)
        if end - pos != 12:
            raise StreamError("JPEG 2000 SOT segment has the wrong length")
        psot = _U32.unpack_from(data, pos + 6)[0]
        if psot == 0:
            last = _codestream_end(data) - 2
        part_end = pos + psot if psot else last
        if part_end > len(data) or part_end < end + 2:
            raise StreamError("JPEG 2000 tile-part runs past the end of the codestream")
        header, cut = [], 0
        hpos = end
        while (marker := _marker(data, hpos)) != SOD:
            if marker not in _TILE and marker != COM:
                raise StreamError(f"JPEG 2000 tile-part header holds an unknown marker FF{marker:02X}")
            hend = _segment_end(data, hpos)
            if hend > part_end:
                raise StreamError("JPEG 2000 tile-part header runs past its tile-part")
            if marker == COM:
                cut += hend - hpos
                removed += 1
            else:
                header.append(data[hpos:hend])
            hpos = hend
        sot = data[pos:end]
        if cut:
            shortened = True
            sot = sot[:6] + _U32.pack(psot - cut if psot else 0) + sot[10:]
        parts.append(b"".join([sot, *header, data[hpos:part_end]]))
        pos = part_end
    if data[pos:pos + 2] == b"\xff\xd9":
        tail = data[pos:pos + 2]
        if data[pos + 2:].strip(b"\x00\xff"):
            removed += 1  # bytes after EOC other than padding: dropped
    elif pos == len(data) and parts:
        tail = b""  # no EOC after the last tile-part: decoders accept it, and so is it written
    else:
        raise StreamError("JPEG 2000 codestream does not end with EOC after its tile-parts")
    if not removed:
        return Stripped(data, 0)
    if shortened:
        kept = [seg for seg in main if seg[:2] != b"\xff\x55"]
        removed += len(main) - len(kept)
        main = kept
    return Stripped(b"".join([*main, *parts, tail]), removed)


def _boxes(data: bytes, start: int, stop: int) -> list[tuple[bytes, int, int, int]]:
    """(type, box start, contents start, box end) of the boxes in ``data[start:stop]``."""
    out = []
    pos = start
    while pos < stop:
        if pos + 8 > stop:
            raise StreamError("JP2 box header runs past the end of the file")
        length, kind = _U32.unpack_from(data, pos)[0], data[pos + 4:pos + 8]
        body = pos + 8
        if length == 1:
            if pos + 16 > stop:
                raise StreamError("JP2 box header runs past the end of the file")
            length, body = _U64.unpack_from(data, pos + 8)[0], pos + 16
        elif length == 0:
            length = stop - pos
        end = pos + length
        if end > stop or end < body:
            raise StreamError("JP2 box runs past the end of the file")
        out.append((kind, pos, body, end))
        pos = end
    return out


def _box(kind: bytes, contents: bytes) -> bytes:
    if len(contents) + 8 <= 0xFFFFFFFF:
        return _U32.pack(len(contents) + 8) + kind + contents
    return _U32.pack(1) + kind + _U64.pack(len(contents) + 16) + contents


def _clean_ftyp(contents: bytes) -> bytes:
    """The file type box's brand, minor version and compatibility list are 4-byte fields any writer may fill
    (text included): brands other than the JPEG 2000 ones become ``jp2 ``, the minor version 0."""
    if len(contents) < 8 or len(contents) % 4:
        raise StreamError("JP2 file type box is malformed")
    brands = [contents[i:i + 4] for i in range(0, len(contents), 4)]
    brands[1] = bytes(4)
    return b"".join(b if i == 1 or b in _JP2_BRANDS else b"jp2 " for i, b in enumerate(brands))


def _clean_colr(contents: bytes) -> bytes:
    """A colour specification box (method, precedence, approximation, then an enumerated colour space or, for
    methods 2 and 3, an ICC profile) with the profile's text blanked (:mod:`deidpipe.pixels.icc`)."""
    from deidpipe.pixels.icc import ICCError, blank_icc_text

    if len(contents) < 3 or contents[0] not in (2, 3):
        return contents
    try:
        return contents[:3] + blank_icc_text(contents[3:])
    except ICCError:
        raise StreamError("JP2 colour profile is malformed") from None


def strip_jp2(data: bytes) -> Stripped:
    """Keep only the boxes of a JP2 file that a decoder reads, with the codestream inside cleaned."""
    data = bytes(data)
    stop = len(data.rstrip(b"\x00")) if data.endswith(b"\x00") else len(data)
    try:
        top = _boxes(data, 0, len(data))
    except StreamError:  # zero padding after the last box (even-length DICOM items)
        top = _boxes(data, 0, stop)
    out: list[bytes] = []
    removed = 0
    changed = False
    for kind, start, body, end in top:
        if kind not in _JP2_TOP:
            removed += 1
            changed = True
            continue
        if kind == b"ftyp":
            contents = _clean_ftyp(data[body:end])
            if contents != data[body:end]:
                removed += 1
                changed = True
                out.append(_box(kind, contents))
                continue
        elif kind == b"jp2h":
            inner = _boxes(data, body, end)
            kept, dropped = [], 0
            for k, s, b, e in inner:
                if k not in _JP2_HEADER:
                    dropped += 1
                elif k == b"colr" and (colr := _clean_colr(data[b:e])) != data[b:e]:
                    kept.append(_box(k, colr))
                    dropped += 1  # counted as a box cut
                else:
                    kept.append(data[s:e])
            if dropped:
                removed += dropped
                changed = True
                out.append(_box(kind, b"".join(kept)))
                continue
        elif kind == b"jp2c":
            cleaned = strip_j2k_codestream(data[body:end])
            if cleaned.removed:
                removed += cleaned.removed
                changed = True
                out.append(_box(kind, cleaned.data))
                continue
        out.append(data[start:end])
    if [k for k, *_ in top if k in _JP2_TOP][:1] != [b"jP  "] or b"jp2c" not in [k for k, *_ in top]:
        raise StreamError("JP2 file has no signature box or no codestream box")
    if not changed:
        return Stripped(data, 0)
    return Stripped(b"".join(out), removed)


def strip_j2k_metadata(frame: bytes) -> Stripped:
    """Remove the metadata of one JPEG 2000 frame, a bare codestream or a JP2 file (see the module's text).

    Returns :class:`Stripped` whose ``data`` is ``frame`` itself when there was nothing to remove; raises
    :class:`StreamError` when the frame is neither a well-formed codestream nor a JP2 file."""
    if bytes(frame[:12]) == JP2_SIGNATURE:
        result = strip_jp2(frame)
    else:
        result = strip_j2k_codestream(frame)
    return result if result.removed else Stripped(frame, 0)
