"""Plain Part 10 files read by their lengths: faster than pydicom's reader, to the same result, or not at all.

pydicom's reader spends a few microseconds of Python per element, which at a couple of hundred elements per
header is most of the cost of reading a CT slice. Most files are plain: a preamble, File Meta Information, and a
data set in Explicit or Implicit VR Little Endian (the encapsulated transfer syntaxes included, whose data sets
are Explicit VR Little Endian) whose top-level elements all have a defined length and a VR pydicom knows, but
for encapsulated Pixel Data, whose items are walked by their lengths as pydicom does. For
those this module walks the elements with one ``struct`` call each.

Two uses:

* :func:`parse_plain`: the :class:`~pydicom.dataset.FileDataset` that ``pydicom.dcmread`` builds from the same
  bytes (raw elements with the same fields, the same File Meta, encoding and character set);
* :func:`scan_elements`: the raw values of a few top-level tags up to a last one, for the index pass, where
  undefined-length sequences are skipped rather than parsed.

Both give up (None) wherever pydicom would judge more than lengths: no preamble, another transfer syntax (big
endian, deflate, private), an unknown VR or a switch between implicit and explicit VR, a value running past the
bytes given, a group 0000 command set. The caller then uses pydicom, so an odd file costs the old price and is
never guessed at. Tests compare both ways on every file pydicom bundles.

A third use is byte accounting (:func:`truncation`): the same walk, sequences of undefined length, their items
and encapsulated Pixel Data followed to their delimiters, says whether a whole file ends on an element boundary
with everything closed, or where it was cut (inside an element header, inside a value, before a delimiter that
is due). pydicom stops silently at a file that ends inside an element header, and returns the elements read so
far: without this, a file cut before its image attributes read as a complete header-only object.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from functools import cache

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.tag import BaseTag

from deidpipe.dicomio.completeness import FRAGMENTS_CUT

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
#: Transfer syntaxes with encapsulated pixel data: the data set is Explicit VR Little Endian (PS3.5 A.4).
_ENCAPSULATED_PREFIXES = ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_VR_TEXT = {vr: vr.decode() for vr in _LONG_VRS | _SHORT_VRS}
UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_ITEM_BYTES, _SEQUENCE_END_BYTES = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
_PIXEL_DATA = 0x7FE00010
#: Pixel Data, Float Pixel Data, Double Float Pixel Data: a value cut short there is short pixels, not a cut header.
_PIXEL_VALUE_TAGS = frozenset({_PIXEL_DATA, 0x7FE00008, 0x7FE00009})
_HEADER = struct.Struct("<HH2sH")
_UINT32 = struct.Struct("<I")

#: One element: tag, VR as read (None in Implicit VR), value length, offset of the value.
Element = tuple[int, bytes | None, int, int]


class GiveUp(Exception):
    """The bytes are not plain enough for this module: use pydicom."""


#: Why a file's bytes do not account for a whole data set (:func:`truncation`): fixed words, never a value.
TRUNCATED_IN_HEADER = "file is truncated (it ends inside an element header)"
TRUNCATED_IN_VALUE = "file is truncated (it ends inside an element value)"
TRUNCATED_UNDELIMITED = "file is truncated (a sequence or item of undefined length does not end)"
TRUNCATED_IN_META = "file is truncated (it ends inside the File Meta Information)"
TRUNCATED_NO_DATA_SET = "file is truncated (no data set after the File Meta Information)"


class Truncated(GiveUp):
    """The bytes run out inside an element: cut short, or (bytes given are a file's first ones) not all read.
    ``reason``: one of the fixed texts above, or :data:`~deidpipe.dicomio.completeness.FRAGMENTS_CUT`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _PixelsCut(GiveUp):
    """The bytes end inside the value of top-level native Pixel Data: the header is whole, the pixels are short
    (:mod:`deidpipe.dicomio.completeness` judges that, and the policy's ``allow_incomplete_pixels`` may write it)."""


def _cut(size: int, pos: int) -> Truncated:
    """What it means that an element header, or a delimiter, is due at ``pos`` of ``size`` bytes: the previous
    value ran past the end, the end came where a delimiter was due, or the end is inside the header."""
    if pos > size:
        return Truncated(TRUNCATED_IN_VALUE)
    return Truncated(TRUNCATED_UNDELIMITED if pos == size else TRUNCATED_IN_HEADER)


def _header(data: bytes | memoryview, pos: int, implicit: bool) -> Element:
    """The element at ``pos``, item and delimiter tags included (they have no VR in either encoding). Bytes that
    run out raise :class:`Truncated` as :func:`_cut` names it (inside a sequence of undefined length, the end of
    the bytes is where a delimiter was due)."""
    if pos + 8 > len(data):
        raise _cut(len(data), pos)
    group, element, vr, length = _HEADER.unpack_from(data, pos)
    tag = group << 16 | element
    if implicit or tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
        return tag, None, _UINT32.unpack_from(data, pos + 4)[0], pos + 8
    if vr in _SHORT_VRS:
        return tag, vr, length, pos + 8
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise Truncated(TRUNCATED_IN_HEADER)
        return tag, vr, _UINT32.unpack_from(data, pos + 8)[0], pos + 12
    raise GiveUp  # not a VR (pydicom would switch to implicit VR), or one it would guess at


def _skip_undefined(data: bytes | memoryview, pos: int, implicit: bool) -> int:
    """The position after an undefined-length sequence whose first item starts at ``pos``."""
    while True:
        tag, _, length, pos = _header(data, pos, implicit)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise GiveUp  # encapsulated fragments or a broken sequence
        if length != UNDEFINED:
            pos += length
            continue
        while True:  # an item of undefined length: its elements up to the item delimiter
            tag, _, length, pos = _header(data, pos, implicit)
            if tag == _ITEM_END:
                break
            pos = _skip_undefined(data, pos, implicit) if length == UNDEFINED else pos + length


def _encapsulated_end(data: bytes | memoryview, pos: int) -> int:
    """Where the Sequence Delimitation Item of encapsulated Pixel Data whose first item starts at ``pos`` is.
    Items are walked by their lengths, as pydicom first does; where it would fall back to searching the bytes
    for the delimiter (a tag that is not an item, a length past the end), GiveUp."""
    size = len(data)
    while pos + 8 <= size:
        tag_bytes = bytes(data[pos:pos + 4])
        if tag_bytes == _SEQUENCE_END_BYTES:
            return pos
        if tag_bytes != _ITEM_BYTES:
            raise GiveUp
        pos += 8 + _UINT32.unpack_from(data, pos + 4)[0]
    raise Truncated(FRAGMENTS_CUT)  # the end came inside a fragment, or where the next item or delimiter was due


def meta_elements(data: bytes | memoryview) -> tuple[dict[int, Element], int]:
    """The File Meta elements (always Explicit VR Little Endian) by tag, and where the data set starts (as far as
    ``data`` goes: a caller with the file's first bytes only checks the group length). GiveUp when not plain."""
    found: dict[int, Element] = {}
    pos = 132
    while pos + 8 <= len(data) and _HEADER.unpack_from(data, pos)[0] == 0x0002:
        element = _header(data, pos, implicit=False)
        tag, _, length, value_pos = element
        if length == UNDEFINED:
            raise GiveUp
        if value_pos + length > len(data):
            raise Truncated(TRUNCATED_IN_VALUE)
        found[tag] = element
        pos = value_pos + length
    return found, pos


@cache
def dictionary_vr(tag: int) -> str:
    """The dictionary VR of a tag, "UN" for one the dictionary does not know (cached: asked per element)."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def element_vr(tag: int, vr: str | None, length: int = 0) -> str:
    """The VR an element is judged by: its own; the dictionary's where it has none (Implicit VR) or where a writer
    that did not know a standard attribute (a newer one, such as Study Update DateTime) wrote it as UN. pydicom
    decodes such a value with the dictionary VR too (``config.replace_un_with_known_vr``); judged as UN, a date
    would be neither removed nor shifted and a name neither replaced nor collected for the identity screen.
    Private and unknown tags, those whose dictionary VR depends on other attributes (US or SS), and values of
    ``length`` 0xFFFF bytes or more (which pydicom leaves UN, as a 16-bit length cannot hold them) stay UN."""
    if vr is not None and (vr != "UN" or tag >> 16 & 1 or length >= 0xFFFF):
        return vr
    known = dictionary_vr(tag)
    return "UN" if vr == "UN" and " " in known else known


def stored_vr(stored: DataElement | RawDataElement) -> str:
    """:func:`element_vr` of a data set's stored element, raw or decoded (a decoded one that pydicom left UN for
    its length still holds its bytes)."""
    value = stored.value if stored.VR == "UN" else None
    return element_vr(int(stored.tag), stored.VR, len(value) if isinstance(value, bytes | bytearray) else 0)


def _is_sequence(tag: int, vr: bytes | None) -> bool:
    """Whether an element of undefined length is a sequence: by its VR, or in Implicit VR by the dictionary
    (pydicom reads any other such element up to a delimiter, which this module does not)."""
    return vr == b"SQ" if vr is not None else dictionary_vr(tag) == "SQ"


def _is_implicit(syntax: bytes) -> bool:
    """Whether a plain transfer syntax is implicit VR; GiveUp for any other."""
    uid = syntax.rstrip(b"\0 ").decode("ascii", "replace")
    if uid == IMPLICIT_VR_LITTLE_ENDIAN:
        return True
    if uid == EXPLICIT_VR_LITTLE_ENDIAN or uid.startswith(_ENCAPSULATED_PREFIXES):
        return False
    raise GiveUp


def _elements(data: bytes | memoryview, pos: int, implicit: bool, last: int, complete: bool,
              skip_sequences: bool) -> Iterator[Element]:
    """The top-level elements from ``pos`` up to tag ``last``. Undefined-length sequences are skipped when
    ``skip_sequences`` (else GiveUp). ``complete``: ``data`` is the whole file, so it may end here. Bytes that run
    out inside an element raise :class:`Truncated` (a GiveUp: a caller that only wants plain files need not tell
    them apart), inside the value of top-level Pixel Data of a defined length :class:`_PixelsCut`."""
    size = len(data)
    unpack, uint32 = _HEADER.unpack_from, _UINT32.unpack_from
    first = True
    while True:
        if pos + 8 > size:
            if pos == size and complete and not first:
                return
            if pos == size:
                raise GiveUp  # File Meta and no data set (pydicom's to judge), or the end of a file's first bytes
            if complete and not first and not any(data[pos:size]):
                # 1-7 zero bytes after the last element: padding some writers add. No element header starts
                # with them all zero (no tag is (0000,0000) in a data set), so at worst this is a cut on the
                # boundary before them, which is complete as DICOM has it.
                return
            raise Truncated(TRUNCATED_IN_HEADER)
        group, element, vr, length = unpack(data, pos)
        tag = group << 16 | element
        if tag > last:
            return
        if group <= 0x0002 or group == 0xFFFE:
            raise GiveUp  # a command set, or File Meta in the data set: pydicom's to judge
        if implicit:
            if first and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B:
                raise GiveUp  # looks explicit: pydicom would switch
            vr, length, value_pos = None, uint32(data, pos + 4)[0], pos + 8
        elif vr in _SHORT_VRS:
            value_pos = pos + 8
        elif vr in _LONG_VRS:
            if pos + 12 > size:
                raise Truncated(TRUNCATED_IN_HEADER)
            length, value_pos = uint32(data, pos + 8)[0], pos + 12
        else:
            raise GiveUp
        first = False
        if length == UNDEFINED:
            if tag == _PIXEL_DATA and vr in (b"OB", b"OW"):  # encapsulated (compressed) frames
                after = _encapsulated_end(data, value_pos) + 8
                yield tag, vr, UNDEFINED, value_pos
                pos = after
                continue
            if not skip_sequences or not _is_sequence(tag, vr):
                raise GiveUp
            after = _skip_undefined(data, value_pos, implicit)
            yield tag, vr, UNDEFINED, value_pos  # present, its value not read
            pos = after
            continue
        if value_pos + length > size:
            raise _PixelsCut if tag in _PIXEL_VALUE_TAGS else Truncated(TRUNCATED_IN_VALUE)
        yield tag, vr, length, value_pos
        pos = value_pos + length


def scan_elements(data: bytes | memoryview, wanted: frozenset[int], last: int, *, complete: bool,
                  ) -> tuple[dict[int, bytes], dict[int, tuple[bytes | None, bytes | None]]] | None:
    """The File Meta's raw values, and the (VR as read, raw value) of the ``wanted`` top-level tags, reading no
    further than ``last``; a sequence of undefined length is there with the value None. ``complete`` says
    whether ``data`` is the whole file (else its first bytes: running out of them is not the end of the
    header). None where pydicom has to judge."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        return None
    try:
        found_meta, pos = meta_elements(data)
        if any(vr != b"UI" for tag, vr, _, _ in found_meta.values() if tag in (0x00020002, 0x00020010)):
            return None  # a UID in another VR: pydicom decodes it its own way
        meta = {tag: bytes(data[p:p + n]) for tag, (_, _, n, p) in found_meta.items()}
        implicit = _is_implicit(meta.get(0x00020010, b""))
        found = {tag: (vr, None if n == UNDEFINED else bytes(data[p:p + n]))
                 for tag, vr, n, p in _elements(data, pos, implicit, last, complete, skip_sequences=True)
                 if tag in wanted}
        return meta, found
    except (GiveUp, struct.error):
        return None


def truncation(data: bytes | memoryview) -> str | None:
    """Why a whole Part 10 file's bytes do not account for a whole data set, in fixed words, or None.

    Byte accounting: every element header and value of the data set must lie within the file, every sequence
    and item of undefined length must reach its delimiter (at any depth), encapsulated Pixel Data its Sequence
    Delimitation Item, and the last element must end where the file does. A file that ends on a top-level
    element boundary is complete: DICOM records no length of the data set, so that is all the bytes can say.
    Values of a defined length are not entered: a cut inside one runs past its length at the level above.

    None also where this walker cannot tell (not a file with preamble and File Meta, not Little Endian, an odd
    VR or element: pydicom reads those and :mod:`deidpipe.dicomio` checks what it read), and where the file ends
    inside the value of top-level native Pixel Data: the header is then whole and the pixels short, which
    :mod:`deidpipe.dicomio.completeness` names (``allow_incomplete_pixels`` may write it). The walk is the one
    :func:`parse_plain` makes; callers ask only for files that it gave up on."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        return None
    try:
        found_meta, pos = meta_elements(data)
        if not found_meta and len(data) < 132 + 12:
            return TRUNCATED_IN_META  # the end comes inside the File Meta's first element, its group length
        group_length = found_meta.get(0x00020000)
        if group_length is not None and group_length[2] == 4:  # where the File Meta says it ends
            meta_end = group_length[3] + 4 + _UINT32.unpack_from(data, group_length[3])[0]
            if len(data) < meta_end:
                return TRUNCATED_IN_META
        if pos == len(data):
            return TRUNCATED_NO_DATA_SET
        syntax = found_meta.get(0x00020010)
        if syntax is None:
            return None
        implicit = _is_implicit(bytes(data[syntax[3]:syntax[3] + syntax[2]]))
    except Truncated as cut:
        return cut.reason
    except (GiveUp, struct.error):
        return None
    return dataset_truncation(data, implicit, pos)


def dataset_truncation(data: bytes | memoryview, implicit: bool, start: int = 0) -> str | None:
    """:func:`truncation` for a bare data set in Little Endian (``implicit`` or explicit VR) from ``start``:
    the bytes after a file's File Meta, or a Deflated Explicit VR Little Endian data set once inflated (which
    the file's bytes cannot account for). Why its bytes do not account for a whole data set, or None (as
    :func:`truncation`: a walk that gives up, a cut inside top-level native Pixel Data, an empty data set)."""
    try:
        for _ in _elements(data, start, implicit, UNDEFINED, True, skip_sequences=True):
            pass
    except Truncated as cut:
        return cut.reason
    except (GiveUp, struct.error):
        return None
    return None


def sequence_is_plain(value: bytes | memoryview) -> bool:
    """Whether the value of an Explicit VR Little Endian sequence of defined length is plain all the way down:
    items of defined length only, each filled exactly by elements of a VR pydicom knows and of a defined length
    (no command or File Meta group, no delimiter, no Specific Character Set: pydicom decodes that one while it
    parses), any sequence among them plain in turn.

    pydicom walks such a value the same way (an item tag and length, then each element's header) and builds its
    Datasets from it without error, and every element then has the length it announces: what
    :func:`deidpipe.dicomio.read.read_dataset` checks of a sequence holds. False for anything else (an undefined
    length, an unknown VR, a length past its item), which pydicom is left to judge."""
    try:
        return _items_plain(value, 0, len(value))
    except (struct.error, RecursionError):  # nesting deeper than this walk goes: pydicom's to judge, and say
        return False


def _items_plain(data: bytes | memoryview, pos: int, end: int) -> bool:
    while pos < end:
        if pos + 8 > end:
            return False
        group, element, _, _ = _HEADER.unpack_from(data, pos)
        length = _UINT32.unpack_from(data, pos + 4)[0]
        pos += 8
        if (group << 16 | element) != _ITEM or length == UNDEFINED or pos + length > end:
            return False
        if not _item_plain(data, pos, pos + length):
            return False
        pos += length
    return True


def _item_plain(data: bytes | memoryview, pos: int, end: int) -> bool:
    while pos < end:
        if pos + 8 > end:
            return False
        group, element, vr, length = _HEADER.unpack_from(data, pos)
        if group <= 0x0002 or group == 0xFFFE or (group, element) == (0x0008, 0x0005):
            return False  # pydicom decodes an item's Specific Character Set as it parses: its value is judged
        if vr in _SHORT_VRS:
            pos += 8
        elif vr in _LONG_VRS and pos + 12 <= end:
            length = _UINT32.unpack_from(data, pos + 8)[0]
            pos += 12
        else:
            return False
        if length == UNDEFINED or pos + length > end:
            return False
        if vr == b"SQ" and not _items_plain(data, pos, pos + length):
            return False
        pos += length
    return True


def _raw(data: bytes, element: Element, implicit: bool) -> RawDataElement:
    """The RawDataElement pydicom's generator yields for an element of defined length, or for encapsulated
    Pixel Data (its items, up to the Sequence Delimitation Item)."""
    tag, vr_bytes, length, value_pos = element
    vr = None if vr_bytes is None else _VR_TEXT[vr_bytes]
    if length == UNDEFINED:
        value = data[value_pos:_encapsulated_end(data, value_pos)]
    else:
        value = data[value_pos:value_pos + length] if length else empty_value_for_VR(vr, raw=True)
    # tuple.__new__: the named tuple's own constructor is a Python function, a measurable cost per element.
    return _new_tuple(RawDataElement, (BaseTag(tag), vr, length, value, value_pos, implicit, True, True, False))


_new_tuple = tuple.__new__


#: Explicit VRs of the private elements :func:`parse_plain` keeps when it leaves private elements out: person
#: names and sequences, which the header stage's identity collection reads (every PN at any level).
_PRIVATE_READ_VRS = frozenset({b"PN", b"SQ"})


def parse_plain(data: bytes, *, leave_out_private: bool = False) -> FileDataset | None:
    """What ``pydicom.dcmread(io.BytesIO(data))`` returns, for a plain file (see the module docstring); None
    for any other.

    ``leave_out_private``: top-level private elements (odd group) are walked, so the file is judged as before,
    but not built, but those of VR PN or SQ; their tags are listed in the data set's ``private_left_out``.
    For the header stage under a policy that removes every private element without reading it (see
    :func:`deidpipe.header.engine.reads_private_elements`): a CT slice from a scanner holds hundreds, and
    building them was most of the read."""
    if len(data) < 140 or data[128:132] != b"DICM":
        return None
    try:
        found_meta, pos = meta_elements(data)
        if not found_meta:
            return None
        meta = FileMetaDataset({BaseTag(t): _raw(data, e, False) for t, e in found_meta.items()})
        # As pydicom's reader leaves it: its encoding set, its first element and the transfer syntax decoded.
        meta.set_original_encoding(False, True, default_encoding)
        meta[min(meta._dict)]
        meta.get("TransferSyntaxUID")
        syntax = found_meta.get(0x00020010)
        if syntax is None:
            return None
        implicit = _is_implicit(data[syntax[3]:syntax[3] + syntax[2]])
        walked = _elements(data, pos, implicit, UNDEFINED, True, skip_sequences=False)
        left_out: list[int] = []
        if leave_out_private:
            walked = _keep_private_read(walked, left_out)
        elements = {raw.tag: raw for raw in (_raw(data, e, implicit) for e in walked)}
        if leave_out_private and (len(set(left_out)) < len(left_out) or not elements.keys().isdisjoint(left_out)):
            return parse_plain(data)  # a tag repeated: the whole read keeps the last, as pydicom does
        # As pydicom's read_dataset and read_partial finish.
        dataset = Dataset(elements, parent_encoding=default_encoding)
        encoding: str | list[str] = default_encoding
        if 0x00080005 in elements:
            encoding = convert_encodings(convert_raw_data_element(elements[BaseTag(0x00080005)]).value)
    except Exception:  # noqa: BLE001 - GiveUp, or a value pydicom cannot decode: pydicom's to judge and report
        return None
    dataset.set_original_encoding(implicit, True, encoding)
    fp = io.BytesIO(data)
    fp.seek(len(data))
    ds = FileDataset(fp, dataset, data[:128], meta, implicit, True)
    ds.set_original_encoding(implicit, True, dataset._character_set)
    if leave_out_private:
        ds.private_left_out = tuple(left_out)
    return ds


def _keep_private_read(walked: Iterator[Element], left_out: list[int]) -> Iterator[Element]:
    """``walked`` without its private elements but those of VR PN or SQ; the tags left out go into ``left_out``."""
    for element in walked:
        tag, vr = element[0], element[1]
        if tag >> 16 & 1 and vr not in _PRIVATE_READ_VRS:
            left_out.append(tag)
            continue
        yield element
