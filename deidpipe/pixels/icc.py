"""The free text of an ICC colour profile (ICC.1, versions 2 and 4), blanked.

A colour profile travels with the pixels: in a JPEG stream's APP2 ``ICC_PROFILE`` segments, in a JP2 file's
``colr`` box, and in the header's ICC Profile (0028,2000). Its colour data (the header's colour spaces, the
tone curves, matrices and look-up tables) is what a viewer uses; its text tags (profile description ``desc``,
copyright ``cprt``, device manufacturer and model descriptions ``dmnd`` and ``dmdd``, and any private tag of a
text type) are free text a device or a person wrote, and can hold a name. :func:`blank_icc_text` overwrites the
characters of every tag of the types ``text``, ``desc`` (textDescriptionType, version 2) and ``mluc``
(multiLocalizedUnicodeType, version 4) with spaces, keeping every length and offset, and zeroes the contents of
every other tag that is not colour data (sequences of descriptions, dictionaries, named colours, vendor XML), so
the profile stays well-formed and its colours the same. The creation date (header bytes 24-35) becomes 2000-01-01
and, since the bytes changed, the Profile ID (an MD5 of the profile, bytes 84-99; zero means "not computed") zero.

Written here rather than taken from a library: Pillow's ``ImageCms`` (LittleCMS) reads profiles but writes back
only the whole profile it parsed, and nothing on PyPI edits tags in place; the layout is 128 header bytes, a tag
count and 12-byte (signature, offset, size) entries, all big endian.
"""

from __future__ import annotations

import struct

_U32 = struct.Struct(">I")
_HEADER = 128
_DATE = slice(24, 36)
#: The creation date every profile is given: a valid date (Pillow's reader refuses year 0), the same for all.
_FIXED_DATE = struct.pack(">6H", 2000, 1, 1, 0, 0, 0)
_PROFILE_ID = slice(84, 100)
_TEXT, _DESC, _MLUC = b"text", b"desc", b"mluc"
#: Tag types that hold colour data only (numbers, curves, tables, signatures): left byte for byte. Every other
#: type (sequences of descriptions ``pseq``, dictionaries ``dict``, named colours ``ncl2``, colorant tables
#: ``clrt``, ``data``, date-times ``dtim``, vendor XML, ...) may hold text, and its contents are zeroed.
_COLOUR_TYPES = frozenset({b"XYZ ", b"curv", b"para", b"sf32", b"uf32", b"ui08", b"ui16", b"ui32", b"ui64",
                           b"mft1", b"mft2", b"mAB ", b"mBA ", b"mpet", b"chrm", b"sig ", b"view", b"meas",
                           b"clro", b"vcgt", b"cicp"})


class ICCError(ValueError):
    """The profile's tag table runs past its end: its tags cannot be found, so it cannot be kept."""


def blank_icc_text(profile: bytes) -> bytes:
    """``profile`` with the characters of its text tags blanked and every other non-colour tag zeroed (see the
    module's text); the very ``profile`` object when there was nothing to change. A tag that runs past the
    profile is cleaned as far as it is there. Raises :class:`ICCError` when the tag table runs past the profile."""
    data = bytearray(profile)
    n = len(data)
    if n < _HEADER + 4:
        raise ICCError("ICC profile is shorter than its header")
    count = _U32.unpack_from(data, _HEADER)[0]
    if _HEADER + 4 + 12 * count > n:
        raise ICCError("ICC profile's tag table runs past its end")
    for k in range(count):
        _, offset, size = struct.unpack_from(">4sII", data, _HEADER + 4 + 12 * k)
        end = min(offset + size, n)
        if offset + 8 > end:
            continue  # no contents (or none within the profile): nothing to clean
        kind = bytes(data[offset:offset + 4])
        if kind in _COLOUR_TYPES:
            continue
        try:
            if kind == _TEXT:
                _blank(data, offset + 8, end, 1)
            elif kind == _DESC:
                _blank_desc(data, offset, end)
            elif kind == _MLUC:
                _blank_mluc(data, offset, end)
            else:
                data[offset + 8:end] = bytes(end - offset - 8)
        except ICCError:  # a text tag whose counts do not add up: its contents go whole
            data[offset + 8:end] = bytes(end - offset - 8)
    data[_DATE] = _FIXED_DATE
    if data == profile:
        return profile
    data[_PROFILE_ID] = bytes(16)
    return bytes(data)
def _blank(data: bytearray, start: int, stop: int, width: int) -> None:
    """Characters of ``width`` bytes (1: ASCII, 2: UTF-16BE) in ``data[start:stop]`` become spaces; the NULs that
    end a string stay."""
    for pos in range(start, stop - width + 1, width):
        if any(data[pos:pos + width]):
            data[pos:pos + width] = b" " if width == 1 else b"\x00 "


def _blank_desc(data: bytearray, tag: int, end: int) -> None:
    """textDescriptionType: an ASCII string (count at +8), a Unicode one (code and count after it, UTF-16BE),
    and a 67-byte ScriptCode string (code, count, then the bytes)."""
    if tag + 12 > end:
        raise ICCError("ICC profile's description tag is cut")
    ascii_count = _U32.unpack_from(data, tag + 8)[0]
    pos = tag + 12 + ascii_count
    if pos > end:
        raise ICCError("ICC profile's description runs past its tag")
    _blank(data, tag + 12, pos, 1)
    if pos + 8 <= end:
        unicode_count = _U32.unpack_from(data, pos + 4)[0]
        text_end = pos + 8 + 2 * unicode_count
        if text_end > end:
            raise ICCError("ICC profile's description runs past its tag")
        _blank(data, pos + 8, text_end, 2)
        if text_end + 3 <= end:
            _blank(data, text_end + 3, min(text_end + 3 + 67, end), 1)


def _blank_mluc(data: bytearray, tag: int, end: int) -> None:
    """multiLocalizedUnicodeType: records (language, country, length, offset from the tag) of UTF-16BE strings."""
    if tag + 16 > end:
        raise ICCError("ICC profile's localized text tag is cut")
    records, record_size = _U32.unpack_from(data, tag + 8)[0], _U32.unpack_from(data, tag + 12)[0]
    if record_size < 12 or tag + 16 + records * record_size > end:
        raise ICCError("ICC profile's localized text records run past their tag")
    for k in range(records):
        length, offset = struct.unpack_from(">II", data, tag + 16 + k * record_size + 4)
        if tag + offset + length > end:
            raise ICCError("ICC profile's localized text runs past its tag")
        _blank(data, tag + offset, tag + offset + length, 2)
