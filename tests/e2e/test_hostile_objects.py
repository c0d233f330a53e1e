"""Hostile and broken objects (issue 9, items 3 and 4, and the held-out runs).

* Files cut inside Pixel Data (native, multi-frame, encapsulated) are quarantined with a fixed reason, or, with
  the policy's ``allow_incomplete_pixels``, written with the count ``incomplete_pixels`` in the audit.
* A deflate bomb is refused within seconds at bounded memory; an object over the per-object time budget is
  quarantined and the batch goes on; a header declaring far more pixels than the file holds fails at once.
* A stray Sequence Delimitation Item after Pixel Data (fo-dicom GH364, DIRW0007) is dropped; a big-endian image
  whose pixels are redacted is written as Explicit VR Little Endian; an object without SOP Instance UID is
  refused at the header stage.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset as pydicom_write_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from deidpipe.dicomio import read_dataset
from deidpipe.dicomio.completeness import FRAGMENTS_CUT, FRAMES_MISSING, INCOMPLETE_ACTION, PIXELS_MISSING, PIXELS_SHORT
from deidpipe.dicomio.deflate import DEFLATE_BOMB_REASON, InflateLimitError, inflate_limit
from deidpipe.dicomio.plainread import TRUNCATED_IN_HEADER
from deidpipe.errors import InputError, PolicyError, TruncatedError
from deidpipe.header.engine import NO_SOP_CLASS_UID, NO_SOP_INSTANCE_UID, deidentify
from deidpipe.keys import ProjectKey
from deidpipe.pipeline import run
from deidpipe.pipeline.budget import BUDGET_ENV, BUDGET_REASON, Budget, ObjectTimeout
from deidpipe.pixels.codecs import PixelDecodeError, decode
from deidpipe.policy import Policy
from tests.helpers import REPO, bundled_bytes, dciodvfy_errors, encode

SECRET = b"hostile-objects-test-secret-0123456789"
STRAY_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
MARKER = "HOSTILE^MARKER"


@pytest.fixture(scope="module")
def key() -> ProjectKey:
    return ProjectKey(SECRET)


_bytes = bundled_bytes
_encode = encode


def _pixel_offset(data: bytes) -> int:
    """Where the value of the top-level Pixel Data starts."""
    return pydicom.dcmread(io.BytesIO(data))._dict[0x7FE00010].value_tell


def _cine(frames: int = 65, side: int = 64) -> Dataset:
    """A small multi-frame ultrasound cine (8-bit native), as DIRW0007 is; the patient ID is burned in."""
    import cv2

    rng = np.random.default_rng(7)
    arr = rng.integers(20, 90, (frames, side, side), dtype=np.uint8)
    for k in range(frames):
        cv2.putText(arr[k], "ID 7734", (2, side - 6), cv2.FONT_HERSHEY_PLAIN, 0.8, 255, 1)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = MARKER, "7734", "US"
    ds.set_pixel_data(arr, "MONOCHROME2", 8, generate_instance_uid=False)
    return ds


def _write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def _audit(dst: Path) -> pl.DataFrame:
    return pl.read_parquet(dst / "_deidpipe" / "audit.parquet")


def _outputs(dst: Path) -> list[Path]:
    return [p for p in dst.rglob("*.dcm") if "quarantine" not in p.parts and "_deidpipe" not in p.parts]


# -- item 3: incomplete pixel data --------------------------------------------------------------------------------
def _truncated_cases() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, the reason expected), for files that read but whose pixel data is incomplete: refused
    by the header stage, or written under ``allow_incomplete_pixels``."""
    ct = _bytes("CT_small.dcm")
    ct_at = _pixel_offset(ct)
    mr = _bytes("MR_small.dcm")
    dose = _bytes("rtdose.dcm")  # 15 frames, 32-bit native
    dose_at = _pixel_offset(dose)
    rle = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    first = next(generate_frames(rle.PixelData, number_of_frames=2))
    rle.PixelData = encapsulate([first])  # two frames declared, one fragment: as if cut at a fragment's end
    return {
        "native_cut_in_value": (ct[: ct_at + 1000], PIXELS_SHORT),
        # Cut exactly on the boundary before Pixel Data (issue 17: inside its header is a truncated file instead).
        "native_cut_before_the_tag": (mr[: _pixel_offset(mr) - 12], PIXELS_MISSING),
        "multiframe_cut_in_value": (dose[: dose_at + (len(dose) - dose_at) // 2], PIXELS_SHORT),
        "encapsulated_frames_missing": (_encode(rle), FRAMES_MISSING),
    }


def _unterminated_cases() -> dict[str, bytes]:
    """Encapsulated pixel data whose fragments do not end: pydicom keeps nothing of such a data set (it returns
    it empty), so these are refused when read, whatever the policy."""
    rle = _bytes("SC_rgb_rle_2frame.dcm")
    j2k = _bytes("JPEG2000.dcm")
    return {"rle_cut_in_fragment": rle[:-300], "rle_cut_before_delimiter": rle[:-8],
            "j2k_cut_after_header": j2k[: _pixel_offset(j2k)]}


def _cut_header_cases() -> dict[str, bytes]:
    """Files that end inside Pixel Data's element header (issue 17, byte accounting): truncated files, refused
    when read whatever the policy (pydicom alone returned the data set without Pixel Data)."""
    mr = _bytes("MR_small.dcm")
    return {"native_cut_after_the_tag": mr[: _pixel_offset(mr) - 8]}


def test_incomplete_pixels_are_refused_by_the_header_engine(key):
    for name, (data, reason) in _truncated_cases().items():
        ds = read_dataset(data)  # the file reads: what is missing is pixel data, judged with the header
        with pytest.raises(InputError) as err:
            deidentify(ds, Policy.basic(), key)
        assert err.value.reason == reason, name
        result = deidentify(ds, Policy.basic(allow_incomplete_pixels=True), key)
        assert result.actions[INCOMPLETE_ACTION] == 1, name
    for name, data in _unterminated_cases().items():
        with pytest.raises(TruncatedError) as err:
            read_dataset(data)
        assert err.value.reason == FRAGMENTS_CUT, name
    for name, data in _cut_header_cases().items():
        with pytest.raises(TruncatedError) as err:
            read_dataset(data)
        assert err.value.reason == TRUNCATED_IN_HEADER, name


def _truncated_tree(src: Path) -> list[str]:
    """Every truncated case into ``src``; the reasons expected, sorted."""
    reasons = []
    for name, (data, reason) in _truncated_cases().items():
        _write(src, f"{name}.dcm", data)
        reasons.append(reason)
    for name, data in _unterminated_cases().items():
        _write(src, f"{name}.dcm", data)
        reasons.append(FRAGMENTS_CUT)
    for name, data in _cut_header_cases().items():
        _write(src, f"{name}.dcm", data)
        reasons.append(TRUNCATED_IN_HEADER)
    return sorted(reasons)


def test_incomplete_pixels_are_quarantined_not_written(key, tmp_path):
    src = tmp_path / "src"
    reasons = _truncated_tree(src)
    _write(src, "whole.dcm", _bytes("CT_small.dcm"))
    dst = tmp_path / "out"
    report = run(src, dst, Policy.basic(pixels="off"), key=key, workers=1)
    assert report.written == 1 and report.quarantined == len(reasons)
    audit = _audit(dst).filter(pl.col("status") == "quarantined")
    assert sorted(audit["reason"]) == reasons
    assert set(audit["stage"]) == {"header", "read"}
    records = [json.loads(p.read_text()) for p in (dst / "quarantine").glob("*.json")]
    assert sorted(r["reason"] for r in records) == reasons
    for out in _outputs(dst):  # the one written object has all its pixels
        assert pydicom.dcmread(out).pixel_array.shape == (128, 128)


def test_policy_switch_writes_incomplete_pixels_and_the_audit_says_so(key, tmp_path):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("pixels: off\nallow_incomplete_pixels: true\n")
    policy = Policy.load(policy_file)
    assert policy.allow_incomplete_pixels and "incomplete" in policy.describe()
    src = tmp_path / "src"
    reasons = _truncated_tree(src)
    dst = tmp_path / "out"
    report = run(src, dst, policy, key=key, workers=1)
    n = len(_truncated_cases())
    assert report.written == n and report.quarantined == len(reasons) - n  # nothing of the unterminated is left
    assert report.actions.get(INCOMPLETE_ACTION) == n
    written = _audit(dst).filter(pl.col("status") == "written")
    assert all(json.loads(a)[INCOMPLETE_ACTION] == 1 for a in written["actions"])
    with pytest.raises(PolicyError):  # a quoted "false" is not a yes/no
        Policy.from_mapping({"allow_incomplete_pixels": "false"})


def test_longer_native_pixel_data_is_fine(key):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = ds.PixelData + b"\0\0"  # a trailing pad, and then some
    result = deidentify(read_dataset(_encode(ds)), Policy.basic(), key)
    assert INCOMPLETE_ACTION not in result.actions


def test_objects_without_pixel_data_by_design_are_not_incomplete(key):
    for name in ("test-SR.dcm", "rtplan.dcm", "rtstruct.dcm"):
        deidentify(read_dataset(get_testdata_file(name)), Policy.basic(), key)


# -- item 4: bounds -------------------------------------------------------------------------------------------------
def deflate_bomb(declared: int = 3_000_000_000) -> bytes:
    """A valid Deflated Explicit VR Little Endian file whose data set inflates to ``declared`` bytes of zeros in
    an OB element. The stream is built from one compressed mebibyte repeated (a full flush resets the
    compressor, so each block decodes on its own): a few megabytes, without the test inflating anything."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = MARKER
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom_write_dataset(body, ds)
    head = body.getvalue() + struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, declared)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    mib = bytes(1 << 20)
    block = comp.compress(mib) + comp.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(declared, 1 << 20)
    stream = first + block * count + comp.compress(bytes(rest)) + comp.flush()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta)
    return fp.getvalue() + stream


def test_deflate_bomb_is_refused_quickly():
    data = deflate_bomb()
    assert len(data) < 4 << 20 and inflate_limit(len(data)) < 300 << 20
    t0 = time.perf_counter()
    with pytest.raises(InflateLimitError) as err:
        read_dataset(data)
    assert err.value.reason == DEFLATE_BOMB_REASON
    assert time.perf_counter() - t0 < 10


def test_a_deflated_file_reads_as_pydicom_reads_it(key):
    path = get_testdata_file("image_dfl.dcm")
    ours, theirs = read_dataset(Path(path).read_bytes()), pydicom.dcmread(path)
    assert ours == theirs and ours.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    result = deidentify(ours, Policy.basic(), key)
    from deidpipe.dicomio import encode_dataset

    back = pydicom.dcmread(io.BytesIO(b"".join(encode_dataset(result.dataset))))
    assert np.array_equal(back.pixel_array, theirs.pixel_array)


_BOMB_RUN = textwrap.dedent("""
    import json, resource, sys, time
    from pathlib import Path
    from deidpipe.keys import ProjectKey
    from deidpipe.pipeline import run
    from deidpipe.policy import Policy
    t0 = time.perf_counter()
    report = run(Path(sys.argv[1]), Path(sys.argv[2]), Policy.basic(pixels="off"), key=ProjectKey(b"k" * 32),
                 workers=1)
    # Peak RSS of this process since its exec (VmHWM); ru_maxrss would include the forking parent's.
    status = Path("/proc/self/status")
    peak_kb = next((int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM")),
                   None) if status.exists() else None
    print(json.dumps({"s": time.perf_counter() - t0, "written": report.written,
                      "quarantined": report.quarantined,
                      "rss_mb": (peak_kb or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024}))
""")


def test_deflate_bomb_in_a_run_is_quarantined_at_bounded_memory(tmp_path):
    src = tmp_path / "src"
    _write(src, "bomb.dcm", deflate_bomb())
    _write(src, "next.dcm", _bytes("CT_small.dcm"))  # the object after the bomb still runs
    _write(src, "deflated.dcm", _bytes("image_dfl.dcm"))
    dst = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _BOMB_RUN, str(src), str(dst)], capture_output=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert MARKER.encode() not in proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    print("deflate bomb run:", figures)
    assert figures["written"] == 2 and figures["quarantined"] == 1
    # The bomb inflates to 150 MB (50 x its 3 MB) before it is refused; the old reader held 2.2 GB for minutes.
    assert figures["s"] < 30 and figures["rss_mb"] < 700
    audit = _audit(dst).filter(pl.col("status") == "quarantined")
    assert audit["reason"].to_list() == [DEFLATE_BOMB_REASON]


def test_declared_size_far_beyond_the_file_fails_at_once(key):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 60000, 60000, 1000
    t0 = time.perf_counter()
    with pytest.raises(InputError) as err:
        deidentify(read_dataset(_encode(ds)), Policy.basic(), key)
    assert err.value.reason == PIXELS_SHORT
    rle = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    rle.Rows = rle.Columns = 60000  # 2 x 60000 x 60000 x 3 bytes declared over 2 small fragments
    with pytest.raises(PixelDecodeError, match="beyond the size limit"):
        decode(rle)
    assert time.perf_counter() - t0 < 5


def _slow_header(seconds: float):
    """The registry's header stage, slowed down for the object named MARKER: (the registry's stages by name, the
    slow stage to put there)."""
    import dataclasses

    from deidpipe.pipeline import registry

    original = registry.stage_named("header")

    def slow(ds, policy, key, source):
        if str(ds.get("PatientName", "")) == MARKER:
            time.sleep(seconds)  # interrupted by the alarm
        return original.run(ds, policy, key, source)

    return registry._BY_NAME, dataclasses.replace(original, run=slow)


def test_object_over_its_time_budget_is_quarantined_and_the_batch_goes_on(key, tmp_path, monkeypatch):
    src = tmp_path / "src"
    slow_ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    slow_ds.PatientName = MARKER
    _write(src, "a_slow.dcm", _encode(slow_ds))
    _write(src, "b_next.dcm", _bytes("MR_small.dcm"))
    stages, slow = _slow_header(30)
    monkeypatch.setitem(stages, "header", slow)
    monkeypatch.setenv(BUDGET_ENV, "1")
    t0 = time.perf_counter()
    report = run(src, tmp_path / "out", Policy.basic(pixels="off"), key=key, workers=1)
    assert time.perf_counter() - t0 < 15
    assert report.written == 1 and report.quarantined == 1
    row = _audit(tmp_path / "out").filter(pl.col("status") == "quarantined").row(0, named=True)
    assert (row["stage"], row["reason"]) == ("header", BUDGET_REASON)


def test_budget_outside_the_main_thread_is_checked_between_steps():
    budget = Budget(0.2)
    caught: list[BaseException] = []

    def steps() -> None:
        try:
            with budget.running():
                time.sleep(0.3)  # no alarm in a thread: the step finishes
            with budget.running():
                pass
        except ObjectTimeout as exc:
            caught.append(exc)

    thread = threading.Thread(target=steps)
    thread.start()
    thread.join()
    assert len(caught) == 1 and budget.spent >= 0.3


# -- held-out runs ------------------------------------------------------------------------------------------------
def test_stray_sequence_delimiter_after_pixel_data_is_dropped(key, tmp_path):
    """GH364-like (MR_small) and DIRW0007-like (a 65-frame cine with the patient ID burned in)."""
    src, clean = tmp_path / "src", tmp_path / "clean"
    originals = {"gh364.dcm": _bytes("MR_small.dcm"), "dirw0007.dcm": _encode(_cine())}
    for name, data in originals.items():
        _write(src, name, data + STRAY_DELIMITER)
        _write(clean, name, data)
    dst = tmp_path / "out"
    report = run(src, dst, Policy.basic(), key=key, workers=1)
    assert report.written == 2 and report.quarantined == 0, report.quarantined_by_reason
    outs = _outputs(dst)
    assert len(outs) == 2
    for out in outs:
        data = out.read_bytes()
        assert STRAY_DELIMITER not in data[-64:] and MARKER.encode() not in data
        ds = pydicom.dcmread(out)
        name = "dirw0007.dcm" if ds.Modality == "US" else "gh364.dcm"
        assert ds.pixel_array.shape == pydicom.dcmread(clean / name).pixel_array.shape
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(out) <= dciodvfy_errors(clean / name)
    cine = next(pydicom.dcmread(p) for p in outs if pydicom.dcmread(p).Modality == "US")
    assert cine.BurnedInAnnotation == "NO" and int(cine.NumberOfFrames) == 65


def _big_endian_with_text() -> tuple[bytes, np.ndarray, tuple[int, int, int, int]]:
    """A 16-bit Explicit VR Big Endian image (MR_small's pixels, twice) with a line of text burned in; the
    pixels as drawn, and the rectangle that holds the text."""
    import cv2

    ds = pydicom.dcmread(get_testdata_file("MR_small_bigendian.dcm"))
    arr = ds.pixel_array
    img = np.zeros((128, 128), arr.dtype)
    img[:64, :64] = arr
    img[64:, 64:] = arr
    cv2.putText(img, "DOE 1234", (4, 120), cv2.FONT_HERSHEY_SIMPLEX, 0.45, int(arr.max()), 1)
    ds.Rows = ds.Columns = 128
    ds.PixelData = img.astype(">i2").tobytes()
    ds.BurnedInAnnotation = "YES"
    data = _encode(ds)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
    return data, img, (0, 100, 90, 128)  # x0, y0, x1, y1


def test_big_endian_image_with_burned_in_text_is_written_little_endian(key, tmp_path):
    data, img, (x0, y0, x1, y1) = _big_endian_with_text()
    src = tmp_path / "src"
    _write(src, "be.dcm", data)
    dst = tmp_path / "out"
    report = run(src, dst, Policy.basic(pixels="all"), key=key, workers=1)
    assert report.written == 1, report.quarantined_by_reason
    (out,) = _outputs(dst)
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    after = ds.pixel_array
    assert after.dtype.isnative and after.shape == img.shape
    outside = np.ones(img.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(after[outside], img[outside])  # every pixel outside the text as it was
    assert (after[y0:y1, x0:x1] != img[y0:y1, x0:x1]).any()  # the text is blacked
    # Numbers read as they were written: nothing left in the wrong byte order.
    assert (ds.BurnedInAnnotation, ds.Rows, ds.Columns, ds.BitsAllocated) == ("NO", 128, 128, 16)
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(out) <= dciodvfy_errors(src / "be.dcm")


def test_object_without_sop_instance_uid_is_refused_at_the_header_stage(key, tmp_path):
    no_instance = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del no_instance.SOPInstanceUID  # the File Meta still has its copy
    no_class = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del no_class.SOPClassUID
    src = tmp_path / "src"
    _write(src, "no_instance.dcm", _encode(no_instance))
    _write(src, "no_class.dcm", _encode(no_class))
    with pytest.raises(InputError, match=NO_SOP_INSTANCE_UID):
        deidentify(read_dataset(src / "no_instance.dcm"), Policy.basic(), key)
    dst = tmp_path / "out"
    report = run(src, dst, Policy.basic(pixels="off"), key=key, workers=1)
    assert report.quarantined == 2 and report.written == 0
    rows = _audit(dst).filter(pl.col("status") == "quarantined").select("stage", "reason").rows()
    assert sorted(rows) == sorted([("header", NO_SOP_INSTANCE_UID), ("header", NO_SOP_CLASS_UID)])
