"""Quarantine only what cannot be made safe (issue 17, section 5).

* Complete objects without Pixel Data are written: a header-only CT and MR object, pydicom's bundled files that
  have no pixel data, header-only test objects whose SOP UIDs are only in the File Meta.
* Truncation is found by byte accounting: a file cut at any offset that is not a top-level element boundary is
  refused as truncated (inside an element header, a value, a sequence of defined or undefined length, an item,
  encapsulated fragments), before the image attributes too; a cut inside native Pixel Data's value leaves the
  header whole and the pixels short (``PIXELS_SHORT``, the policy's ``allow_incomplete_pixels``); a cut exactly at
  a top-level boundary is what DICOM calls a complete data set.
* A head series that is no volume (one slice, two slices, a scout, a volume with no tissue) passes the defacing
  stage unchanged with its reason, unless the face detector sees a face on one of its images.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from deidpipe.dicomio import encode_dataset, read_dataset
from deidpipe.dicomio.completeness import (
    FRAGMENTS_CUT,
    FRAMES_UNCOUNTED,
    PIXELS_MISSING,
    PIXELS_SHORT,
    pixel_data_problem,
)
from deidpipe.dicomio.plainread import TRUNCATED_IN_HEADER, TRUNCATED_UNDELIMITED, truncation
from deidpipe.errors import TruncatedError
from deidpipe.header.engine import UID_FROM_FILE_META, deidentify
from deidpipe.keys import ProjectKey
from deidpipe.pipeline import run
from deidpipe.policy import Policy
from tests.helpers import bundled_bytes, encode

KEY = ProjectKey(b"complete-objects-test-secret-0123456789")
MARKER_NAME = "COMPLETE^MARKER"
MARKER_ID = "CMPL-7731"
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


_bytes = bundled_bytes
_encode = encode


def _audit(dst: Path) -> pl.DataFrame:
    return pl.read_parquet(dst / "_deidpipe" / "audit.parquet")


def _outputs(dst: Path) -> list[Path]:
    return [p for p in dst.rglob("*.dcm") if "quarantine" not in p.parts and "_deidpipe" not in p.parts]


def _everything_under(dst: Path) -> bytes:
    return b"".join(p.read_bytes() for p in dst.rglob("*") if p.is_file())


# -- complete objects without Pixel Data ----------------------------------------------------------------------------
def _header_only(sop_class: str, modality: str, image_attributes: bool = False) -> Dataset:
    """A complete CT or MR object without Pixel Data (a "no pixel data" export), marked with a name and ID."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = MARKER_NAME, MARKER_ID, modality
    ds.StudyDescription = f"follow-up of {MARKER_NAME}"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if image_attributes:  # the Image Pixel module describes an image that is not there
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    return ds


def test_header_only_ct_and_mr_are_written_and_leak_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ct.dcm").write_bytes(_encode(_header_only(CTImageStorage, "CT")))
    (src / "mr.dcm").write_bytes(_encode(_header_only(MRImageStorage, "MR")))
    # The documented rule: an image described (Rows, Columns, Bits Allocated) without Pixel Data cannot be told
    # from a file cut on the boundary before Pixel Data: quarantined, as before.
    (src / "described.dcm").write_bytes(_encode(_header_only(CTImageStorage, "CT", image_attributes=True)))
    dst = tmp_path / "out"
    report = run(src, dst, Policy.basic(), key=KEY, workers=1)
    assert (report.written, report.quarantined) == (2, 1), report.quarantined_by_reason
    assert _audit(dst).filter(pl.col("status") == "quarantined")["reason"].to_list() == [PIXELS_MISSING]
    blob = _everything_under(dst)
    assert MARKER_NAME.encode() not in blob and MARKER_ID.encode() not in blob
    classes = sorted(str(pydicom.dcmread(p).SOPClassUID) for p in _outputs(dst))
    assert classes == sorted([CTImageStorage, MRImageStorage])
    for out in _outputs(dst):
        ds = pydicom.dcmread(out)
        assert "PixelData" not in ds and ds.PatientIdentityRemoved == "YES"


#: pydicom's bundled files without Pixel Data: reports, RT objects, and header-only test objects (the last three
#: carry their SOP Class / Instance UID only in the File Meta).
NO_PIXEL_FILES = ("test-SR.dcm", "reportsi.dcm", "rtplan.dcm", "rtstruct.dcm", "no_meta_group_length.dcm",
                  "priv_SQ.dcm", "UN_sequence.dcm")


def test_pydicom_files_without_pixel_data_are_written(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in NO_PIXEL_FILES:
        data = _bytes(name)
        assert b"\xe0\x7f\x10\x00" not in data[-64:]  # no Pixel Data at the end
        (src / name).write_bytes(data)
    dst = tmp_path / "out"
    report = run(src, dst, Policy.basic(), key=KEY, workers=1)
    assert report.written == len(NO_PIXEL_FILES) and report.quarantined == 0, report.quarantined_by_reason
    from_meta = _audit(dst).filter(pl.col("actions").str.contains(UID_FROM_FILE_META))
    assert from_meta.height == 3
    for out in _outputs(dst):
        ds = pydicom.dcmread(out)
        assert ds.file_meta.MediaStorageSOPInstanceUID.startswith("2.25.") and ds.PatientIdentityRemoved == "YES"
        assert ds.get("SOPInstanceUID", ds.file_meta.MediaStorageSOPInstanceUID) == \
            ds.file_meta.MediaStorageSOPInstanceUID


def test_a_data_set_without_sop_common_is_named_by_its_file_meta_never_half(tmp_path):
    """Neither UID in the data set: the File Meta's copies stand in. One of them in the data set and the other
    only in the File Meta: a broken SOP Common module, refused (test_hostile_objects has those)."""
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ct.SOPInstanceUID, ct.SOPClassUID
    result = deidentify(read_dataset(_encode(ct)), Policy.basic(), KEY)
    meta = result.dataset.file_meta
    assert meta.MediaStorageSOPInstanceUID == KEY.uid(ct.file_meta.MediaStorageSOPInstanceUID)
    assert meta.MediaStorageSOPClassUID == CTImageStorage
    assert "SOPInstanceUID" not in result.dataset and "SOPClassUID" not in result.dataset  # as delivered
    assert result.actions[UID_FROM_FILE_META] == 1


def test_sop_uids_from_the_file_meta_are_pseudonymised(tmp_path):
    original = pydicom.dcmread(get_testdata_file("no_meta_group_length.dcm"))
    assert "SOPInstanceUID" not in original
    result = deidentify(read_dataset(_bytes("no_meta_group_length.dcm")), Policy.basic(), KEY)
    meta = result.dataset.file_meta
    assert meta.MediaStorageSOPInstanceUID == KEY.uid(original.file_meta.MediaStorageSOPInstanceUID)
    assert meta.MediaStorageSOPClassUID == original.file_meta.MediaStorageSOPClassUID
    assert original.file_meta.MediaStorageSOPInstanceUID.encode() not in b"".join(encode_dataset(result.dataset))


# -- truncation by byte accounting ------------------------------------------------------------------------------
def _header_length(elem, implicit: bool) -> int:
    return 8 if implicit or elem.VR not in _LONG_VRS else 12


def _top_level(data: bytes) -> tuple[set[int], int, range]:
    """(the offsets where a top-level element of the data set starts, and the file's end; where the data set
    starts; the offsets at which native Pixel Data's value is cut short, empty when encapsulated or absent), by
    pydicom: an oracle apart from the walker under test."""
    ds = pydicom.dcmread(io.BytesIO(data))
    implicit = ds.original_encoding[0]
    starts = {len(data)}
    pixels = range(0)
    for tag in ds._dict:
        raw = ds._dict[tag]
        value_at = raw.value_tell if hasattr(raw, "value_tell") else raw.file_tell
        starts.add(value_at - _header_length(ds[tag], implicit))
        if tag == 0x7FE00010 and raw.length != 0xFFFFFFFF:
            pixels = range(value_at, value_at + raw.length)
    return starts, min(starts), pixels


def _offsets(data: bytes, starts: set[int], pixels: range) -> list[int]:
    """Offsets around every top-level element boundary (just before, on, inside the next header, just into the
    value) and every 13th byte of the data set up to Pixel Data's value; some further ones."""
    first = min(starts)
    end = (pixels.start + 64) if pixels else len(data)
    near = {s + d for s in starts for d in (-1, 0, 1, 4, 9)}
    return sorted(set(range(first - 16, min(end, len(data)), 13)) | {n for n in near if 132 < n <= len(data)}
                  | set(range(end, len(data), 1013)))


def _undefined_lengths(name: str) -> bytes:
    """A bundled file with a sequence of undefined length added before its image attributes: two items, one of
    undefined length holding a nested sequence of undefined length, one of defined length (how GE and Siemens
    scanners write theirs; pydicom's bundled files have none)."""
    ds = pydicom.dcmread(get_testdata_file(name))
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-A0100", "SRT", "Brain"
    outer = Dataset()
    outer.ReferencedSOPClassUID, outer.ReferencedSOPInstanceUID = CTImageStorage, generate_uid()
    outer.PurposeOfReferenceCodeSequence = [inner]
    outer.PurposeOfReferenceCodeSequence[0].is_undefined_length_sequence_item = True
    outer["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    outer.is_undefined_length_sequence_item = True
    second = Dataset()
    second.ReferencedSOPClassUID, second.ReferencedSOPInstanceUID = CTImageStorage, generate_uid()
    ds.ReferencedImageSequence = [outer, second]
    ds["ReferencedImageSequence"].is_undefined_length = True
    return _encode(ds)


_SOURCES = {"ct_undefined_sequences": lambda: _undefined_lengths("CT_small.dcm"),
            "mr_implicit_undefined_sequences": lambda: _undefined_lengths("MR_small_implicit.dcm")}


@pytest.mark.parametrize("name", ["CT_small.dcm", "ct_undefined_sequences", "mr_implicit_undefined_sequences",
                                  "rtplan.dcm", "reportsi.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm"])
def test_every_cut_that_is_not_a_top_level_boundary_is_truncated(name):
    """CT_small: Explicit VR, a sequence of defined length, private elements, native pixels; then with sequences
    and items of undefined length (nested), in Explicit and Implicit VR. rtplan: Implicit VR, sequences of defined
    length three levels deep. reportsi: an SR with nested content sequences. SC_rgb_rle_2frame, JPEG2000:
    encapsulated fragments."""
    data = _SOURCES[name]() if name in _SOURCES else _bytes(name)
    starts, first, pixels = _top_level(data)
    counts = {"truncated": 0, "complete": 0, "pixels_short": 0}
    for n in _offsets(data, starts, pixels):
        cut = data[:n]
        if n in starts and n > first:  # ends on a top-level boundary: a complete data set, as DICOM has it
            ds = read_dataset(cut)
            assert truncation(cut) is None, n
            counts["complete"] += 1
        elif n in pixels:  # the header is whole, the pixels short
            ds = read_dataset(cut)
            assert pixel_data_problem(ds) == PIXELS_SHORT, n
            counts["pixels_short"] += 1
        else:
            with pytest.raises(TruncatedError) as err:
                read_dataset(cut)
            assert err.value.reason.startswith("file is truncated") or err.value.reason == FRAGMENTS_CUT, n
            counts["truncated"] += 1
    assert counts["truncated"] > 100 and counts["complete"] > 5, counts
    if pixels:
        assert counts["pixels_short"] > 10, counts


def test_a_cut_before_the_image_attributes_is_truncated_not_a_header_only_object():
    data = _bytes("CT_small.dcm")
    rows_at = data.index(b"\x28\x00\x10\x00US")  # the header of Rows (0028,0010)
    for n in (rows_at + 1, rows_at + 4, rows_at + 7, rows_at + 9):  # inside its header, inside its value
        with pytest.raises(TruncatedError):
            read_dataset(data[:n])
    ds = read_dataset(data[:rows_at])  # on the boundary before Rows: a complete data set without an image
    assert "Rows" not in ds and pixel_data_problem(ds) is None


def test_trailing_zero_padding_is_not_truncation():
    """1 to 7 zero bytes after the last element (padding some writers add) leave a complete object; the same
    count of other bytes is the start of a cut element header."""
    data = _bytes("CT_small.dcm")
    for n in range(1, 8):
        padded = data + b"\x00" * n
        assert truncation(padded) is None, n
        assert read_dataset(padded).PixelData == read_dataset(data).PixelData
        with pytest.raises(TruncatedError):
            read_dataset(data + b"\x08" + b"\x00" * (n - 1))


def test_undefined_length_sequence_cut_on_an_inner_boundary_is_truncated():
    """A cut exactly where an item or element inside a sequence of undefined length ends (an element boundary,
    but not at the top level) leaves the sequence without its delimiter."""
    data = _undefined_lengths("CT_small.dcm")
    assert truncation(data) is None and read_dataset(data).ReferencedImageSequence[1].ReferencedSOPInstanceUID
    item_end = data.index(b"\xfe\xff\x0d\xe0\x00\x00\x00\x00")  # the first item's delimiter
    sequence_end = data.index(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", item_end)  # after the second item
    for at in (item_end, item_end + 8, sequence_end):
        with pytest.raises(TruncatedError) as err:
            read_dataset(data[:at])
        assert err.value.reason == TRUNCATED_UNDELIMITED, at
    with pytest.raises(TruncatedError) as err:
        read_dataset(data[:sequence_end + 3])
    assert err.value.reason == TRUNCATED_IN_HEADER


def test_truncated_files_are_quarantined_in_a_run(tmp_path):
    ct = _bytes("CT_small.dcm")
    rows_at = ct.index(b"\x28\x00\x10\x00US")
    rtplan = _bytes("rtplan.dcm")
    src = tmp_path / "src"
    src.mkdir()
    cuts = {"ct_in_rows_header.dcm": ct[:rows_at + 5], "ct_in_a_value.dcm": ct[:rows_at - 3],
            "rtplan_in_a_sequence.dcm": rtplan[:len(rtplan) // 2]}
    for name, data in cuts.items():
        (src / name).write_bytes(data)
    (src / "ct_whole.dcm").write_bytes(ct)
    dst = tmp_path / "out"
    report = run(src, dst, Policy.basic(pixels="off"), key=KEY, workers=1)
    assert (report.written, report.quarantined) == (1, len(cuts))
    rows = _audit(dst).filter(pl.col("status") == "quarantined").select("stage", "reason").rows()
    assert {stage for stage, _ in rows} == {"read"}
    assert all(reason.startswith("file is truncated") for _, reason in rows), rows
    records = [json.loads(p.read_text()) for p in (dst / "quarantine").glob("*.json")]
    assert len(records) == len(cuts)


def test_number_of_frames_that_is_no_number_is_quarantined_with_its_reason(tmp_path):
    """pydicom's badVR.dcm: an RT Dose whose Number of Frames reads "1A". Before, the header stage replaced the value
    by a dummy ("0": an object that claims no frame though it carries 15) and the pixel stage then failed on the
    source's value ("unexpected error (ValueError)"); now the object is refused at the header with a reason that
    says why, and the pixel stage's selection reads such a count as several frames instead of failing."""
    from deidpipe.pixels.find import text_likely

    ds = read_dataset(get_testdata_file("badVR.dcm"))
    assert pixel_data_problem(ds) == FRAMES_UNCOUNTED
    assert text_likely(ds) == "multi-frame"
    src = tmp_path / "src"
    src.mkdir()
    (src / "dose.dcm").write_bytes(_bytes("badVR.dcm"))
    report = run(src, tmp_path / "out", Policy.basic(), key=KEY, workers=1)
    assert (report.written, report.quarantined) == (0, 1)
    assert _audit(tmp_path / "out").select("stage", "reason").rows() == [("header", FRAMES_UNCOUNTED)]


# -- head series that are no volume -------------------------------------------------------------------------------
def _slice(series_uid: str, frame_uid: str, z: float, pixels: np.ndarray, *, orientation=(1, 0, 0, 0, 1, 0),
           description: str = "MPRAGE HEAD", localizer: bool = False) -> Dataset:
    """One MR slice of a series hinted as a head (Body Part Examined HEAD), 1 mm pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), series_uid, frame_uid
    ds.PatientName, ds.PatientID, ds.Modality = MARKER_NAME, MARKER_ID, "MR"
    ds.BodyPartExamined, ds.SeriesDescription = "HEAD", description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localizer else "M"]
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
    ds.set_pixel_data(pixels, "MONOCHROME2", 8 * pixels.dtype.itemsize, generate_instance_uid=False)
    return ds


def _series(folder: Path, images: list[np.ndarray], **kwargs) -> None:
    folder.mkdir(parents=True)
    series_uid, frame_uid = generate_uid(), generate_uid()
    orientations = kwargs.pop("orientations", None)
    for k, pixels in enumerate(images):
        extra = {"orientation": orientations[k]} if orientations else {}
        (folder / f"{k:03d}.dcm").write_bytes(_encode(_slice(series_uid, frame_uid, 2.0 * k, pixels,
                                                             **extra, **kwargs)))


def _face_photo() -> np.ndarray:
    """A photograph with a face (scikit-image's bundled astronaut, 512 x 512, grey): what the QC detector finds."""
    import cv2

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-image is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "astronaut.png"
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def no_volume_run(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("novolume")
    src = root / "src"
    rng = np.random.default_rng(3)
    tissue = [rng.integers(0, 200, (64, 64), dtype=np.uint8) for _ in range(3)]
    _series(src / "one", tissue[:1])
    _series(src / "two", tissue[:2])
    _series(src / "scout", tissue, localizer=True, description="LOCALIZER HEAD",
            orientations=[(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1)])
    _series(src / "empty", [np.zeros((64, 64), np.uint8) for _ in range(4)])
    _series(src / "face", [_face_photo()])
    dst = root / "out"
    return dst, run(src, dst, Policy.basic(pixels="off"), key=KEY, workers=1)


def test_head_series_that_are_no_volume_pass_defacing_unchanged(no_volume_run):
    dst, report = no_volume_run
    assert report.written == 1 + 2 + 3 + 4, report.quarantined_by_reason
    assert report.actions["deface_too_few_slices"] == 3
    assert report.actions["deface_scout"] == 3
    assert report.actions["deface_no_tissue"] == 4
    assert "defaced" not in report.actions
    for out in _outputs(dst):
        ds = pydicom.dcmread(out)
        assert ds.PatientName != MARKER_NAME and ds.BodyPartExamined == "HEAD"
    blob = _everything_under(dst)
    assert MARKER_NAME.encode() not in blob and MARKER_ID.encode() not in blob


def test_a_face_on_a_single_head_slice_is_quarantined(no_volume_run):
    dst, report = no_volume_run
    assert report.quarantined == 1
    row = _audit(dst).filter(pl.col("status") == "quarantined").row(0, named=True)
    assert row["stage"] == "deface" and "face" in row["reason"]
