"""Every file in pydicom's bundled test data is de-identified or rejected with a clear, typed error;
none crashes the engine, and dciodvfy finds no error in an output that its input did not have."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from pydicom.data import get_testdata_files

from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.errors import DeidError, InputError
from deidpipe.header.engine import deidentify
from deidpipe.policy import Policy
from tests.conftest import dciodvfy_available
from tests.helpers import dciodvfy_errors

FILES = sorted(f for f in get_testdata_files() if Path(f).is_file())
ROOT = Path(FILES[0]).parent


def _id(path: str) -> str:
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name


def test_corpus_is_the_bundled_one():
    assert len(FILES) >= 80


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_deidentified_or_rejected_clearly(path: str, key, tmp_path):
    try:
        ds = read_dataset(path)
        result = deidentify(ds, Policy.basic(), key)
    except InputError as exc:
        # A clear error names the file and a reason, and nothing else.
        assert exc.path == path and exc.reason
        return
    except DeidError as exc:
        assert str(exc)
        return
    out = tmp_path / "out.dcm"
    write_dataset(result.dataset, out)
    again = read_dataset(out)
    assert again.PatientIdentityRemoved == "YES"
    meta_uid = again.file_meta.MediaStorageSOPInstanceUID
    assert meta_uid == again.get("SOPInstanceUID", meta_uid)
    if dciodvfy_available():
        new_errors = dciodvfy_errors(out) - dciodvfy_errors(Path(path))
        assert not new_errors, new_errors


def test_counts_deidentified_and_rejected(key):
    """The corpus is mostly usable: at least 140 files go through (DICOMDIRs, dumps, truncated are refused)."""
    done = rejected = 0
    for path in FILES:
        try:
            deidentify(read_dataset(path), Policy.basic(), key)
            done += 1
        except DeidError:
            rejected += 1
    assert done >= 140 and done + rejected == len(FILES)


def test_fast_encoder_writes_pydicoms_bytes(key):
    """``encode_dataset`` (raw elements packed without pydicom's per-element writer, native pixel data as its
    own piece) gives the bytes pydicom's own writer gives, for every de-identified bundled file."""
    import copy
    import io

    from deidpipe.dicomio import encode_dataset

    compared = 0
    for path in get_testdata_files():
        try:
            out = deidentify(read_dataset(path), Policy.basic(), key).dataset
            buf = io.BytesIO()
            write_dataset(copy.deepcopy(out), buf)
        except DeidError:
            continue
        assert b"".join(encode_dataset(out)) == buf.getvalue(), Path(path).name
        compared += 1
        # The file as read, with strings of several VRs set: same bytes, and its File Meta left as it was.
        src = read_dataset(path)
        src.StudyDescription, src.SeriesDate = "Study 1", "20200101"
        src.ImageType, src.FrameOfReferenceUID = ["ORIGINAL", "PRIMARY", "AXIAL"], "1.2.3.45"
        for keyword in ("Rows", "Columns", "BitsAllocated"):  # decoded: integers, not raw bytes
            if keyword in src:
                src[keyword].value  # noqa: B018 - the access decodes the element in place
        meta_before = copy.deepcopy(src.file_meta)
        buf = io.BytesIO()
        try:
            write_dataset(copy.deepcopy(src), buf)
        except Exception:  # noqa: BLE001 - pydicom cannot write some malformed files as read (no VR)
            continue
        assert b"".join(encode_dataset(src)) == buf.getvalue(), Path(path).name
        assert src.file_meta == meta_before, Path(path).name
    assert compared >= 140


def test_fast_encoder_writes_a_kept_uid_of_another_vr_as_pydicom_does(key):
    """A SOP Class UID stored in another VR with a leading space (the header check strips it): the File Meta is
    written as pydicom writes it, the UID without the space (review: the packed File Meta wrote it as stored)."""
    import io

    from deidpipe.dicomio import encode_dataset

    for vr in (b"LO", b"SH"):
        data = _with_raw_elements(False, [(0x0008, 0x0016, vr, b" 1.2.840.10008.5.1.4.1.1.7"),
                                          (0x0008, 0x0018, b"UI", b"1.2.3.4"), (0x0008, 0x0060, b"CS", b"OT")])
        out = deidentify(read_dataset(data), Policy.basic(), key).dataset
        buf = io.BytesIO()
        write_dataset(copy.deepcopy(out), buf)
        assert b"".join(encode_dataset(out)) == buf.getvalue()


def test_fast_encoder_pads_odd_pixel_data_as_pydicom_does():
    """Odd-length native Pixel Data (invalid, but readable): pydicom pads it when writing; so does
    encode_dataset, rather than copying the raw bytes."""
    import copy
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    from deidpipe.dicomio import encode_dataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, "1.2.3.4"
    ds.Modality, ds.Rows, ds.Columns = "OT", 1, 3
    ds.add_new(0x7FE00010, "OB", b"\x01\x02\x03")
    buf = io.BytesIO()
    write_dataset(ds, buf)
    data = buf.getvalue()
    assert data.endswith(b"\x04\0\0\0\x01\x02\x03\0")  # Pixel Data, the last element, padded by pydicom
    odd = read_dataset(data[:-8] + b"\x03\0\0\0\x01\x02\x03")  # as a careless writer leaves it
    expected = io.BytesIO()
    write_dataset(copy.deepcopy(odd), expected)
    assert b"".join(encode_dataset(odd)) == expected.getvalue()


def _outcome(data: bytes, policy: Policy, key, leave_out_private: bool) -> tuple[str, object, object]:
    """What the header stage makes of a file's bytes: its output bytes and action counts, or its error."""
    from deidpipe.dicomio import encode_dataset

    try:
        result = deidentify(read_dataset(data, leave_out_private=leave_out_private), policy, key)
    except DeidError as exc:
        return "error", type(exc).__name__, str(exc)
    return "written", b"".join(encode_dataset(result.dataset)), dict(result.actions)


def _private_names_and_sequences() -> bytes:
    """CT_small with a private person name, and a private sequence whose item holds the patient's name and ID:
    the identity collection reads both, so a read that leaves private elements out must keep them."""
    import io

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = read_dataset(get_testdata_files("CT_small.dcm")[0])
    ds.PatientName, ds.PatientID = "Okafor^Ngozi", "MRN77123"
    ds.StudyDescription = "follow-up for Ngozi Okafor (MRN77123), referred by Tunde Adeyemi"
    block = ds.private_block(0x0041, "DEIDPIPE TEST", create=True)
    block.add_new(0x01, "PN", "Adeyemi^Tunde")
    item = Dataset()
    item.PatientName, item.OtherPatientIDs = "Okafor^Ngozi", "NHS 9434765919"
    block.add_new(0x02, "SQ", Sequence([item]))
    block.add_new(0x03, "LO", "Tunde Adeyemi")
    ds.InstitutionName = "Clinic of Tunde Adeyemi"
    buf = io.BytesIO()
    write_dataset(ds, buf)
    return buf.getvalue()


def _with_raw_elements(implicit: bool, elements: list[tuple[int, int, bytes, bytes]]) -> bytes:
    """A small Part 10 file whose data set is the given elements (group, element, VR, value), written as they are:
    what pydicom would not write (a private group length, a tag given twice, a UID in another VR)."""
    import io
    import struct

    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    out = [buf.getvalue()]
    for group, element, vr, value in elements:
        value += b" " if len(value) % 2 else b""
        out.append(struct.pack("<HHI", group, element, len(value)) if implicit
                   else struct.pack("<HH2sH", group, element, vr, len(value)))
        out.append(value)
    return b"".join(out)


def _odd_private_files() -> list[bytes]:
    """A private group length (dropped uncounted, as every group length), and a private tag given twice (the
    whole read keeps the last), in both encodings (review of the leave-out read)."""
    head = [(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7"), (0x0008, 0x0018, b"UI", b"1.2.3.4"),
            (0x0008, 0x0060, b"CS", b"OT")]
    tail = [(0x0010, 0x0010, b"PN", b"Doe^John"), (0x0010, 0x0020, b"LO", b"ID1")]
    length = [(0x0009, 0x0000, b"UL", (30).to_bytes(4, "little")), (0x0009, 0x0010, b"LO", b"ACME"),
              (0x0009, 0x1001, b"LO", b"x")]
    twice = [(0x0009, 0x0010, b"LO", b"ACME"), (0x0009, 0x1001, b"PN", b"Doe^John"), (0x0009, 0x1001, b"LO", b"y")]
    return [_with_raw_elements(implicit, head + block + tail)
            for implicit in (False, True) for block in (length, twice)]


def test_private_elements_left_out_give_the_same_output(key, small_archive):
    """``read_dataset(leave_out_private=True)``, as ``run`` reads for the header stage where the policy removes
    private elements unread: every bundled file, every file of the synth archive and a file whose private
    elements hold a name and a sequence give the same output bytes and action counts, or the same error."""
    policies = [Policy.basic(), Policy.basic(options=("RetainLongModifiedDates", "CleanDescriptors"))]
    inputs = [Path(p).read_bytes() for p in FILES]
    inputs += [p.read_bytes() for p in sorted(small_archive[0].rglob("*")) if p.is_file() and p.suffix != ".json"]
    inputs += _odd_private_files()
    inputs.append(_private_names_and_sequences())
    written = 0
    for data in inputs:
        for policy in policies:
            full = _outcome(data, policy, key, leave_out_private=False)
            assert _outcome(data, policy, key, leave_out_private=True) == full
            written += full[0] == "written"
    assert written >= 2 * 170
    lean = read_dataset(inputs[-1], leave_out_private=True)
    block = {t for t in lean.private_left_out if t >> 16 == 0x0041}
    assert len(block) == 2  # the block's creator and its LO are left out; its PN and SQ were read
    assert all(t in lean._dict for t in (0x00411001, 0x00411002))
    cleaned = _outcome(inputs[-1], policies[1], key, leave_out_private=True)  # the description is cleaned
    assert cleaned[0] == "written" and b"referred by" in cleaned[1]
    assert b"Adeyemi" not in cleaned[1] and b"Okafor" not in cleaned[1]
