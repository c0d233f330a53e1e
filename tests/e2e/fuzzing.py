"""Hostile inputs for the fuzz test: real DICOM files with planted markers, then mutated.

Every input gets its own marker (``QX0007MK``) in the attributes the Basic profile removes or replaces (names, IDs,
institution, a private element, a nested sequence) and, for some, in places where a value does not belong (text in
a UID, a character set, a date). Then it is mutated as an attacker or a broken exporter would: bytes flipped, cut
short, lengths and VRs corrupted, sequences nested deeply, sizes declared far beyond the file, and deflate bombs.
The test asserts that no marker comes out anywhere; this module only makes the files.

Everything is seeded: the same seed gives the same bytes.
"""

from __future__ import annotations

import copy
import io
import random
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import config as pydicom_config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian

#: pydicom's bundled files the fuzz starts from: native, implicit, big endian, JPEG, RLE, multi-frame, deflated.
BASE_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "rtdose.dcm",
    "SC_rgb_rle_2frame.dcm",
    "examples_palette.dcm",
    "reportsi.dcm",
    "image_dfl.dcm",
    "rtplan.dcm",
)

#: Original UIDs get this root, so that an original UID in the output can be found by its text.
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"


def marker(i: int) -> str:
    return f"QX{i:04d}MK"


def original_uid(i: int, what: int) -> str:
    return f"{UID_ROOT}.{i}.{what}"


@dataclass
class FuzzInput:
    name: str
    data: bytes
    markers: tuple[str, ...]  # strings that must not appear anywhere in the results
    kind: str  # what was done to it, for the failure message


def _plant(ds: Dataset, i: int, variant: int) -> tuple[str, ...]:
    """Plant marker ``i`` in attributes the profile must remove, and return every string to look for."""
    m = marker(i)
    uids = tuple(original_uid(i, k) for k in range(3))
    ds.PatientName = f"{m}^Doe"
    ds.PatientID = m
    ds.OtherPatientIDs = m
    ds.InstitutionName = f"{m} Hospital"
    ds.ReferringPhysicianName = f"Dr^{m}"
    ds.AccessionNumber = m
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uids
    if "file_meta" in ds.__dict__ or getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = uids[2]
    block = ds.private_block(0x0009, "QX FUZZ CREATOR", create=True)
    block.add_new(0x01, "LO", f"private {m}")
    inner = Dataset()
    inner.PatientName = f"{m}^Nested"
    inner.ReferencedSOPInstanceUID = uids[2]
    ds.ReferencedStudySequence = Sequence([inner])
    if variant == 1:
        ds.SOPClassUID = m  # text in a UID field
    elif variant == 2:
        ds.file_meta.TransferSyntaxUID = m
    elif variant == 3:
        ds.SpecificCharacterSet = m
    elif variant == 4:
        ds.PatientBirthDate = m  # not a date
        ds.StudyDate = m
    elif variant == 5:
        ds.SeriesInstanceUID = f"{m}.1.2"  # an invalid UID that quotes the marker
    elif variant == 6:
        ds.PatientComments = f"{m} odd"  # odd length, padded by the writer
        ds.add_new(0x00100021, "LO", m + "x")  # Issuer of Patient ID, odd length
    elif variant == 7:
        deep = inner
        for _ in range(60):  # deep nesting, the marker at the bottom
            child = Dataset()
            deep.ReferencedImageSequence = Sequence([child])
            deep = child
        deep.PatientName = f"{m}^Deep"
    return (m, *uids)


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    settings = pydicom_config.settings
    saved = settings.writing_validation_mode
    settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        ds.save_as(buf, enforce_file_format=True)
    finally:
        settings.writing_validation_mode = saved
    return buf.getvalue()


# -- mutations: each takes the file's bytes and a seeded random source ----------------------------------------------
def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 12)):
        pos = rng.randrange(132, len(out))
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(140, len(data))]


def _cut_pixels(data: bytes, rng: random.Random) -> bytes:
    """Cut inside the last quarter of the file: for images, inside Pixel Data."""
    return data[: rng.randrange(len(data) * 3 // 4, len(data) - 1)]


def _element_offsets(data: bytes) -> list[int]:
    """Offsets of explicit VR element headers (a two-letter upper-case VR after a tag), found by pattern."""
    found = []
    for pos in range(132, len(data) - 8, 2):
        vr = data[pos + 4:pos + 6]
        if vr.isalpha() and vr.isupper():
            found.append(pos)
    return found


def _bad_length(data: bytes, rng: random.Random) -> bytes:
    offsets = _element_offsets(data)
    if not offsets:
        return _flip(data, rng)
    pos = rng.choice(offsets)
    out = bytearray(data)
    if data[pos + 4:pos + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"UC"):
        struct.pack_into("<I", out, pos + 8, rng.choice([0xFFFFFFF0, len(data) * 50, 0x7FFFFFFF, 3]))
    else:
        struct.pack_into("<H", out, pos + 6, rng.choice([0xFFFF, 0xFFF1, 1, 7]))
    return bytes(out)


def _bad_vr(data: bytes, rng: random.Random) -> bytes:
    offsets = _element_offsets(data)
    if not offsets:
        return _flip(data, rng)
    out = bytearray(data)
    for pos in rng.sample(offsets, min(3, len(offsets))):
        out[pos + 4:pos + 6] = rng.choice([b"ZZ", b"UN", b"SQ", b"OB", b"UI", b"\x00\x01"])
    return bytes(out)


MUTATIONS = {"flip": _flip, "truncate": _truncate, "cut_pixels": _cut_pixels, "bad_length": _bad_length,
             "bad_vr": _bad_vr}


def _huge_declared(ds: Dataset) -> None:
    """Rows, Columns and frames far beyond the bytes the file holds."""
    ds.Rows, ds.Columns = 65535, 65535
    ds.NumberOfFrames = 99999


def deflate_bomb(i: int, inflated_gib: float = 3.5) -> FuzzInput:
    """A Deflated Explicit VR Little Endian file whose data set inflates to ``inflated_gib`` GiB of zeros (an OB
    private element), from about a megabyte. Full-flush blocks are position-independent, so one compressed MiB is
    repeated instead of compressing gigabytes."""
    m = marker(i)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = original_uid(i, 2)
    ds.PatientName = f"{m}^Bomb"
    ds.PatientID = m
    ds.Modality = "OT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = original_uid(i, 0), original_uid(i, 1)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.set_original_encoding(False, True)
    header = _encode(ds)  # preamble, File Meta and the deflated body of the small elements
    meta_end = _file_meta_end(header)
    body = zlib.decompress(header[meta_end:], -15)
    mib = 1 << 20
    n_mib = int(inflated_gib * 1024)
    big = struct.pack("<HH2sHI", 0x0009, 0x1001, b"OB", 0, n_mib * mib)  # after the body's elements
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(body + struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 8) + b"QX BOMB " + big)
    head += comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(b"\0" * mib) + comp.flush(zlib.Z_FULL_FLUSH)
    stream = head + block * n_mib + comp.flush()
    return FuzzInput(f"bomb_{i:04d}.dcm", header[:meta_end] + stream, (m, *(original_uid(i, k) for k in range(3))),
                     "deflate bomb")


def _file_meta_end(data: bytes) -> int:
    (length,) = struct.unpack_from("<I", data, 140)
    return 144 + length


def build_inputs(root: Path, seed: int, count: int, synth_files: list[Path]) -> list[FuzzInput]:
    """``count`` marked and mutated inputs (plus two deflate bombs), written under ``root``. pydicom's warnings
    about the planted values are the point here, so they are silenced while building."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _build_inputs(root, seed, count, synth_files)


def _build_inputs(root: Path, seed: int, count: int, synth_files: list[Path]) -> list[FuzzInput]:
    rng = random.Random(seed)
    bases = [pydicom.dcmread(get_testdata_file(name)) for name in BASE_FILES]
    bases += [pydicom.dcmread(p) for p in synth_files]
    inputs = []
    for i in range(count):
        ds = copy.deepcopy(rng.choice(bases))
        variant = rng.randrange(10)
        strings = _plant(ds, i, variant if variant < 8 else 0)
        kind = f"variant {variant}"
        if variant == 8:
            _huge_declared(ds)
            kind += " huge declared size"
        data = _encode(ds)
        mutation = rng.choice([None, None, *MUTATIONS])
        if mutation is not None:
            data = MUTATIONS[mutation](data, rng)
            kind += f", {mutation}"
        inputs.append(FuzzInput(f"in_{i:04d}.dcm", data, strings, kind))
    inputs.append(deflate_bomb(count))
    inputs.append(deflate_bomb(count + 1, inflated_gib=0.25))
    for item in inputs:
        (root / item.name).write_bytes(item.data)
    return inputs
