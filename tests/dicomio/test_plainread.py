"""Plain files read by their lengths (deidpipe.dicomio.plainread) give what pydicom gives, or are left to pydicom: the
execute pass's reader and the index pass's header scan, on every file pydicom bundles."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement

from deidpipe.dicomio import quiet_pydicom, read_dataset
from deidpipe.dicomio.plainread import parse_plain, scan_elements, sequence_is_plain
from deidpipe.errors import InputError
from deidpipe.pipeline.index import _facts_from_dataset, _header_facts, _is_part10, _read_header


def _bundled() -> list[Path]:
    return [Path(name) for name in get_testdata_files() if not Path(name).is_dir()]


def _state(ds: pydicom.Dataset) -> dict[str, str]:
    """A data set's attributes but its elements and the buffer it was read from, as text."""
    return {k: repr(v) for k, v in vars(ds).items() if k not in ("_dict", "buffer", "file_meta")}


def _same_elements(ours: pydicom.Dataset, theirs: pydicom.Dataset) -> bool:
    if list(ours._dict) != list(theirs._dict):
        return False
    for tag, elem in theirs._dict.items():
        mine = ours._dict[tag]
        if type(mine) is not type(elem):
            return False
        if (mine != elem) if isinstance(elem, RawDataElement) else (repr(mine) != repr(elem)):
            return False
    return True


def test_plain_files_parse_as_pydicom_parses_them(small_archive) -> None:
    src, _ = small_archive
    parsed = left_to_pydicom = 0
    for path in _bundled() + sorted(src.rglob("*.dcm")):
        data = path.read_bytes()
        ours = parse_plain(data)
        if ours is None:
            left_to_pydicom += 1
            continue
        parsed += 1
        with quiet_pydicom():
            theirs = pydicom.dcmread(io.BytesIO(data))
        assert _same_elements(ours, theirs), path.name
        assert _same_elements(ours.file_meta, theirs.file_meta), path.name
        assert _state(ours) == _state(theirs), path.name
        assert _state(ours.file_meta) == _state(theirs.file_meta), path.name
    # Big endian, deflate, no preamble, odd VRs, pixel data pydicom must search for its end: pydicom's.
    assert parsed >= 140 and left_to_pydicom >= 40


def test_scan_agrees_with_pydicom_on_bundled_files() -> None:
    scanned = left_to_pydicom = 0
    for path in _bundled():
        data = path.read_bytes()
        facts = _header_facts(data, complete=True)
        if facts is None:
            left_to_pydicom += 1
            continue
        scanned += 1
        assert facts == _facts_from_dataset(_read_header(io.BytesIO(data), _is_part10(data))), path.name
        for cut in (200, 400, 1000, 3000):  # the first bytes only: the same facts, or nothing
            assert _header_facts(data[:cut], complete=False) in (None, facts), (path.name, cut)
    # Big endian, deflate, files without a preamble and malformed VRs go to pydicom; the rest are scanned.
    assert scanned >= 140 and left_to_pydicom >= 10


def _part10(body: bytes, syntax: bytes = b"1.2.840.10008.1.2.1\0", sop_class: bytes = b"") -> bytes:
    meta = b""
    if sop_class:
        meta += b"\x02\x00\x02\x00UI" + len(sop_class).to_bytes(2, "little") + sop_class
    meta += b"\x02\x00\x10\x00UI" + len(syntax).to_bytes(2, "little") + syntax
    return b"\0" * 128 + b"DICM" + meta + body


def test_a_directory_record_sequence_of_undefined_length_is_seen() -> None:
    """A DICOMDIR whose File Meta names another SOP class is still told by its Directory Record Sequence."""
    records = b"\x04\x00\x20\x12SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0"
    data = _part10(records + b"\x08\x00\x60\x00CS\x02\x00CT", sop_class=b"1.2.840.10008.5.1.4.1.1.2\0")
    facts = _header_facts(data, complete=True)
    assert facts is not None and facts["directory"]
    assert facts == _facts_from_dataset(_read_header(io.BytesIO(data), True))


def test_scan_skips_undefined_length_sequences_and_gives_up_on_odd_bytes() -> None:
    modality = b"\x08\x00\x60\x00CS\x02\x00CT"
    # (0008,1140) SQ of undefined length: one item of undefined length holding one element, then the delimiters.
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x08\x00\x50\x11UI\x04\x001.2\0" + b"\xfe\xff\x0d\xe0\0\0\0\0"
    sequence = b"\x08\x00\x40\x11SQ\0\0\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0\0\0\0\0"
    rows = b"\x28\x00\x10\x00US\x02\x00\x00\x02"
    wanted = frozenset({0x00080060, 0x00280010})
    meta, found = scan_elements(_part10(modality + sequence + rows), wanted, 0x00280301, complete=True)
    assert meta == {0x00020010: b"1.2.840.10008.1.2.1\0"}
    assert found == {0x00080060: (b"CS", b"CT"), 0x00280010: (b"US", b"\x00\x02")}
    # Cut inside the sequence: not complete means "don't know"; a complete file that ends there is broken.
    cut = _part10(modality + sequence[:20])
    assert scan_elements(cut, wanted, 0x00280301, complete=False) is None
    assert scan_elements(cut, wanted, 0x00280301, complete=True) is None
    # Not a VR, big endian, no preamble: pydicom's to judge.
    assert scan_elements(_part10(b"\x08\x00\x60\x00\x02\x00\x00\x00CT"), wanted, 0x00280301, complete=True) is None
    assert scan_elements(_part10(modality, b"1.2.840.10008.1.2.2\0"), wanted, 0x00280301, complete=True) is None
    assert scan_elements(modality, wanted, 0x00280301, complete=True) is None


def test_encapsulated_pixel_data_is_read_as_pydicom_reads_it() -> None:
    """Items walked by their lengths up to the delimiter, an element after it; a broken item: pydicom's."""
    jpeg = b"1.2.840.10008.1.2.4.50\0"
    items = b"\xfe\xff\x00\xe0\0\0\0\0" + b"\xfe\xff\x00\xe0\x04\0\0\0\xff\xd8\xff\xd9"
    pixels = b"\xe0\x7f\x10\x00OB\0\0\xff\xff\xff\xff" + items + b"\xfe\xff\xdd\xe0\0\0\0\0"
    trailing = b"\xfc\xff\xfc\xffOB\0\0\x02\0\0\0\0\0"
    head = b"\x08\x00\x16\x00UI\x06\x001.2.3\0" + b"\x08\x00\x60\x00CS\x02\x00OT"
    data = _part10(head + pixels + trailing, jpeg)
    ours = parse_plain(data)
    with quiet_pydicom():
        theirs = pydicom.dcmread(io.BytesIO(data))
    assert ours is not None and _same_elements(ours, theirs) and _state(ours) == _state(theirs)
    assert ours._dict[0x7FE00010].value == items
    broken = _part10(head + pixels.replace(b"\xfe\xff\x00\xe0\x04", b"\xfe\xff\x00\xe1\x04"), jpeg)
    assert parse_plain(broken) is None  # pydicom searches the bytes for the delimiter then: its judgement


def _answer(data: bytes, **kw: object) -> tuple[str, str] | list[int]:
    """What ``read_dataset`` says of ``data``: its top-level tags, or the error's type and fixed reason."""
    try:
        return [int(t) for t in read_dataset(data, **kw)._dict]
    except InputError as exc:
        return type(exc).__name__, exc.reason


def _sequence_values(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each top-level sequence value of a plain file, the nested ones' included."""
    ds = parse_plain(data)
    out: list[tuple[int, int]] = []
    if ds is None:
        return out
    for raw in ds._dict.values():
        if isinstance(raw, RawDataElement) and raw.VR == "SQ" and raw.length and raw.length != 0xFFFFFFFF:
            out.append((raw.value_tell, raw.length))
    return out


def test_walked_sequences_give_the_same_answer(small_archive) -> None:
    """``read_dataset(..., walk_sequences=True)`` (serve's check before Success: sequences the length walker
    accounts for are not parsed) accepts and refuses exactly what the whole read does, with the same reason: on
    every file pydicom bundles, the synth archive, and 2,000 seeded corruptions of their sequences (a byte of an
    item or element header, a length, a VR, an item cut short or made undefined)."""
    import random

    src, _ = small_archive
    files = [p.read_bytes() for p in _bundled() + sorted(src.rglob("*.dcm"))]
    walked = 0
    for data in files:
        assert _answer(data, walk_sequences=True) == _answer(data)
        ds = parse_plain(data)
        if ds is not None:
            walked += sum(1 for raw in ds._dict.values() if isinstance(raw, RawDataElement) and raw.VR == "SQ"
                          and sequence_is_plain(raw.value))
    assert walked > 50  # the walker takes most sequences of plain files: the check gains its time there

    rng = random.Random(19)
    with_sequences = [(d, s) for d in files if (s := _sequence_values(d))]
    assert len(with_sequences) > 20
    answers = set()
    for _ in range(2000):
        data, spans = rng.choice(with_sequences)
        offset, length = rng.choice(spans)
        bad = bytearray(data)
        at = offset + rng.randrange(min(length, 64))  # within the first item's headers, where it matters most
        kind = rng.randrange(4)
        if kind == 0:
            bad[at] ^= 1 << rng.randrange(8)
        elif kind == 1:  # an element's VR made unknown, or another known one
            bad[at:at + 2] = rng.choice([b"XX", b"UN", b"SQ", b"OB", b"LO", b"\0\0"])
        elif kind == 2:  # a 32-bit length made undefined, or longer, or shorter
            bad[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\xff\x00\x00\x00", b"\x02\x00\x00\x00"])
        else:
            bad[at:at + 4] = rng.choice([b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"])
        whole = _answer(bytes(bad))
        assert _answer(bytes(bad), walk_sequences=True) == whole
        answers.add("read" if isinstance(whole, list) else whole[0])
    assert len(answers) > 1  # both verdicts among the corruptions: the comparison saw refusals too


def _with_sequence(value: bytes) -> bytes:
    """A small Part 10 file whose last top-level element is Referenced Image Sequence (0008,1140) holding
    ``value`` (its items, as bytes)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue() + b"\x08\x00\x40\x11SQ\0\0" + struct.pack("<I", len(value)) + value


def _item(content: bytes) -> bytes:
    return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(content)) + content


def test_walked_sequences_leave_item_character_sets_and_deep_nesting_to_pydicom() -> None:
    """Review findings: pydicom decodes a Specific Character Set (0008,0005) inside an item while it parses (a
    VR other than CS makes it fail), and nesting deeper than a Python walk goes ends in RecursionError. Both are
    left to pydicom: the same answer and reason as the whole read."""
    for vr, value in ((b"FD", struct.pack("<d", 1.5)), (b"US", b"\x01\x00"), (b"CS", b"ISO_IR 100"),
                      (b"PN", b"Doe^J ")):
        element = b"\x08\x00\x05\x00" + vr + struct.pack("<H", len(value)) + value
        data = _with_sequence(_item(element))
        assert not sequence_is_plain(_item(element))
        assert _answer(data, walk_sequences=True) == _answer(data)
    for depth in (3, 600, 1200):
        value = b""
        for _ in range(depth):
            value = _item(b"\x08\x00\x40\x11SQ\0\0" + struct.pack("<I", len(value)) + value)
        data = _with_sequence(value)
        assert _answer(data, walk_sequences=True) == _answer(data), depth
