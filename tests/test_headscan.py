"""The index's byte-level header scan agrees with pydicom on every file pydicom bundles, or leaves it to pydicom."""

from __future__ import annotations

import io
from pathlib import Path

from pydicom.data import get_testdata_files

from deidpipe.pipeline.headscan import scan_header
from deidpipe.pipeline.index import _facts_from_dataset, _header_facts, _is_part10, _read_header


def test_scan_agrees_with_pydicom_on_bundled_files() -> None:
    scanned = left_to_pydicom = 0
    for name in get_testdata_files():
        path = Path(name)
        if path.is_dir():
            continue
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


def _part10(body: bytes, syntax: bytes = b"1.2.840.10008.1.2.1\0") -> bytes:
    meta = b"\x02\x00\x10\x00UI" + len(syntax).to_bytes(2, "little") + syntax
    return b"\0" * 128 + b"DICM" + meta + body


def test_scan_skips_undefined_length_sequences_and_gives_up_on_odd_bytes() -> None:
    modality = b"\x08\x00\x60\x00CS\x02\x00CT"
    # (0008,1140) SQ of undefined length: one item of undefined length holding one element, then the delimiters.
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x08\x00\x50\x11UI\x04\x001.2\0" + b"\xfe\xff\x0d\xe0\0\0\0\0"
    sequence = b"\x08\x00\x40\x11SQ\0\0\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0\0\0\0\0"
    rows = b"\x28\x00\x10\x00US\x02\x00\x00\x02"
    wanted = frozenset({0x00080060, 0x00280010})
    meta, found = scan_header(_part10(modality + sequence + rows), wanted, 0x00280301, complete=True)
    assert meta == {0x00020010: "1.2.840.10008.1.2.1"}
    assert found == {0x00080060: (b"CS", b"CT"), 0x00280010: (b"US", b"\x00\x02")}
    # Cut inside the sequence: not complete means "don't know"; a complete file that ends there is broken.
    cut = _part10(modality + sequence[:20])
    assert scan_header(cut, wanted, 0x00280301, complete=False) is None
    assert scan_header(cut, wanted, 0x00280301, complete=True) is None
    # Not a VR, big endian, no preamble: pydicom's to judge.
    assert scan_header(_part10(b"\x08\x00\x60\x00\x02\x00\x00\x00CT"), wanted, 0x00280301, complete=True) is None
    assert scan_header(_part10(modality, b"1.2.840.10008.1.2.2\0"), wanted, 0x00280301, complete=True) is None
    assert scan_header(modality, wanted, 0x00280301, complete=True) is None
