"""A byte-level scan of a Part 10 header for the few facts the index needs, without building a pydicom Dataset.

The index pass reads every file's header to plan the run, and pydicom's parser costs about half a millisecond
per object for a header's couple of hundred elements, most of which the index does not need. This scan walks the
elements of the common encodings (Explicit and Implicit VR Little Endian, and the encapsulated transfer
syntaxes, whose data sets are Explicit VR Little Endian) by their lengths, skipping values, and keeps the raw
bytes of the top-level tags it is asked for, up to a last tag.

It gives up (returns None) wherever pydicom would judge more than lengths: no preamble, another transfer syntax
(big endian, deflate, private), an invalid VR, a value that runs past the bytes given, an element that is not
plainly encoded. The caller then parses with pydicom, so an odd file costs the old price and is never guessed
at. Tests compare both ways on every file pydicom bundles.
"""

from __future__ import annotations

import struct

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
#: Transfer syntaxes with encapsulated pixel data: the data set is Explicit VR Little Endian (PS3.5 A.4).
_ENCAPSULATED_PREFIXES = ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TAG = struct.Struct("<HH")
_EXPLICIT = struct.Struct("<HH2sH")
_UINT32 = struct.Struct("<I")


class GiveUp(Exception):
    """The bytes are not plain enough for this scan (or a value for :func:`text_value`): use pydicom."""


def _header(data: bytes | memoryview, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, position of the value) of the element at ``pos``."""
    if pos + 8 > len(data):
        raise GiveUp
    if implicit:
        group, element = _TAG.unpack_from(data, pos)
        return group << 16 | element, None, _UINT32.unpack_from(data, pos + 4)[0], pos + 8
    group, element, vr, length = _EXPLICIT.unpack_from(data, pos)
    tag = group << 16 | element
    if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):  # item tags have no VR in either encoding
        return tag, None, _UINT32.unpack_from(data, pos + 4)[0], pos + 8
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise GiveUp  # not a VR: pydicom would switch to implicit VR here
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise GiveUp
        return tag, vr, _UINT32.unpack_from(data, pos + 8)[0], pos + 12
    return tag, vr, length, pos + 8


def _skip_undefined(data: bytes | memoryview, pos: int, implicit: bool) -> int:
    """The position after an undefined-length sequence whose first item starts at ``pos``."""
    while True:
        tag, _, length, pos = _header(data, pos, implicit)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise GiveUp  # encapsulated fragments or a broken sequence: not for this scan
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an item of undefined length: its elements up to the item delimiter
            tag, _, length, pos = _header(data, pos, implicit)
            if tag == _ITEM_END:
                break
            pos = _skip_undefined(data, pos, implicit) if length == _UNDEFINED else pos + length


def _meta(data: bytes | memoryview) -> tuple[dict[int, bytes], int]:
    """The File Meta elements' raw values (always Explicit VR Little Endian) and where the data set starts."""
    values: dict[int, bytes] = {}
    pos = 132
    while pos + 8 <= len(data) and _TAG.unpack_from(data, pos)[0] == 0x0002:
        tag, _, length, value_pos = _header(data, pos, implicit=False)
        if length == _UNDEFINED or value_pos + length > len(data):
            raise GiveUp
        values[tag] = bytes(data[value_pos:value_pos + length])
        pos = value_pos + length
    return values, pos


def text_value(raw: bytes) -> str:
    """A single-valued string as pydicom gives it after ``str(value).strip()`` (trailing NUL and space padding
    removed, then spaces); raises where pydicom's decoding could differ (control characters, several values,
    anything but printable ASCII)."""
    text = raw.rstrip(b"\0 ").strip()
    if not text.isascii() or b"\\" in text or any(c < 0x20 or c == 0x7F for c in text):
        raise GiveUp
    return text.decode("ascii")


def scan_header(data: bytes | memoryview, wanted: frozenset[int], last: int, *, complete: bool,
                ) -> tuple[dict[int, str], dict[int, tuple[bytes | None, bytes]]] | None:
    """The File Meta's Media Storage SOP Class UID and Transfer Syntax UID as text, and the (VR, raw value)
    of the ``wanted`` top-level tags (VR None in Implicit VR), scanning no further than ``last``.

    ``complete`` says whether ``data`` is the whole file (else its first bytes: running out of them is not
    the end of the header). None where pydicom has to judge the bytes (see the module docstring).
    """
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        return None
    try:
        meta_raw, pos = _meta(data)
        meta = {tag: text_value(value) for tag, value in meta_raw.items() if tag in (0x00020002, 0x00020010)}
        syntax = meta.get(0x00020010, "")
        if syntax == IMPLICIT_VR_LITTLE_ENDIAN:
            implicit = True
        elif syntax == EXPLICIT_VR_LITTLE_ENDIAN or syntax.startswith(_ENCAPSULATED_PREFIXES):
            implicit = False
        else:
            return None
        found: dict[int, tuple[bytes | None, bytes]] = {}
        while True:
            if pos == len(data) and complete:
                break  # the file ends before ``last``
            tag, vr, length, value_pos = _header(data, pos, implicit)
            if tag > last:
                break
            if tag in (_ITEM, _ITEM_END, _SEQUENCE_END) or tag >> 16 == 0x0002:
                return None  # a delimiter or File Meta element in the data set: malformed
            if length == _UNDEFINED:
                if tag in wanted or (vr is not None and vr != b"SQ"):
                    return None
                pos = _skip_undefined(data, value_pos, implicit)
                continue
            if value_pos + length > len(data):
                return None
            if tag in wanted:
                found[tag] = (vr, bytes(data[value_pos:value_pos + length]))
            pos = value_pos + length
        return meta, found
    except (GiveUp, struct.error):
        return None

