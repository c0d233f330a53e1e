"""Each option of the profile shows its effect on attributes of its Table E.1-1 column, and the cases that
broke other tools are handled: private PHI in a nested private sequence, a name in free text, a self-nested
SR Content Sequence, and a UID inside a Referenced Series Sequence."""

from __future__ import annotations

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deidpipe.dicomio import read_dataset
from deidpipe.header.engine import deidentify
from deidpipe.policy import Policy

NAME = "Walker^Alice"


def _item(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _code(value: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator="DCM", CodeMeaning=meaning)


def _text_item(text: str, children: list[Dataset] | None = None) -> Dataset:
    item = _item(RelationshipType="CONTAINS", ValueType="TEXT", TextValue=text,
                 ConceptNameCodeSequence=[_code("121106", "Comment")])
    if children:
        item.ContentSequence = Sequence(children)
    return item


@pytest.fixture(scope="module")
def source() -> Dataset:
    """CT_small with attributes of every option column planted."""
    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    ds.PatientName = NAME
    ds.PatientID = "MRN4471123"
    ds.PatientSex, ds.PatientAge, ds.PatientWeight = "F", "047Y", "61"
    ds.StudyDate, ds.SeriesDate, ds.PatientBirthDate = "20210312", "20210312", "19740105"
    ds.InstitutionName = "Kestrel General Hospital"
    ds.StationName, ds.DeviceSerialNumber = "CTROOM7", "SN-998877"
    ds.StudyDescription = "Follow-up for Alice Walker, chest"
    ds.ImageComments = "seen by Dr. Bob Marley"
    ds.ReferencedSeriesSequence = [_item(SeriesInstanceUID="1.2.3.4.5.6.7.8.99")]
    ds.ContentSequence = [_text_item("level 1 Alice Walker", [_text_item("level 2", [
        _text_item("level 3 patient Alice Walker MRN4471123", [_text_item("level 4 Alice")])])])]
    ds.GraphicAnnotationSequence = [_item(TextObjectSequence=[_item(UnformattedTextValue="Alice Walker 1974")])]
    # A private block with a nested private sequence holding PHI, and a safe GE element.
    block = ds.private_block(0x0011, "ACME PRIVATE", create=True)
    block.add_new(0x01, "SQ", Sequence([_item()]))
    inner = block[0x01].value[0].private_block(0x0011, "ACME PRIVATE", create=True)
    inner.add_new(0x02, "LO", "Alice Walker")
    ge = ds.private_block(0x0009, "GEMS_IDEN_01", create=True)
    ge.add_new(0x01, "LO", "GE_GENESIS_FF")  # TCIA KB: keep
    ge.add_new(0x27, "SH", "Kestrel")  # not marked safe
    return ds


def run(source: Dataset, key, *options: str) -> Dataset:
    return deidentify(source, Policy.basic(options=options), key).dataset


def test_basic_profile(source, key):
    out = run(source, key)
    assert out.PatientName != NAME and out.PatientID != "MRN4471123"
    assert out.StudyDate == "" and "PatientSex" in out and out.PatientSex == ""
    assert "PatientAge" not in out and "PatientBirthDate" in out and out.PatientBirthDate == ""
    assert out.get("InstitutionName") != "Kestrel General Hospital"  # Type 3 in the CT IOD: removed
    assert "StudyDescription" not in out and "ImageComments" not in out
    assert not any(t.is_private for t in out.keys())
    assert out.StudyInstanceUID != source.StudyInstanceUID
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_retain_safe_private(source, key):
    out = run(source, key, "RetainSafePrivate")
    ge = out.private_block(0x0009, "GEMS_IDEN_01")
    assert ge[0x01].value == "GE_GENESIS_FF"
    assert ge.get_tag(0x27) not in out  # not in the knowledge base's keep list
    creators = [str(e.value) for e in out if e.tag.is_private_creator]
    assert "ACME PRIVATE" not in creators  # unknown creator: removed, nested PHI with it
    assert "Alice" not in str(out)
    assert "113111" in [c.CodeValue for c in out.DeidentificationMethodCodeSequence]


def test_retain_uids(source, key):
    out = run(source, key, "RetainUIDs")
    assert out.StudyInstanceUID == source.StudyInstanceUID
    assert out.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.4.5.6.7.8.99"


def test_retain_device_identity(source, key):
    out = run(source, key, "RetainDeviceIdentity")
    assert out.StationName == "CTROOM7" and out.DeviceSerialNumber == "SN-998877"
    assert run(source, key).get("StationName") != "CTROOM7"


def test_retain_institution_identity(source, key):
    assert run(source, key, "RetainInstitutionIdentity").InstitutionName == "Kestrel General Hospital"


def test_retain_patient_characteristics(source, key):
    out = run(source, key, "RetainPatientCharacteristics")
    assert (out.PatientSex, out.PatientAge, str(out.PatientWeight)) == ("F", "047Y", "61")


def test_retain_long_full_dates(source, key):
    out = run(source, key, "RetainLongFullDates")
    assert out.StudyDate == "20210312" and out.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_retain_long_modified_dates(source, key):
    out = run(source, key, "RetainLongModifiedDates")
    assert out.StudyDate not in ("", "20210312") and out.StudyDate == out.SeriesDate
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_clean_descriptors_removes_the_name_keeps_the_rest(source, key):
    out = run(source, key, "CleanDescriptors")
    assert "Alice" not in out.StudyDescription and "Walker" not in out.StudyDescription
    assert "chest" in out.StudyDescription and out.StudyDescription.startswith("Follow-up for")
    assert "Bob Marley" not in out.ImageComments


def _texts(seq) -> list[str]:
    out = []
    for item in seq:
        out.append(str(item.get("TextValue", "")))
        if "ContentSequence" in item:
            out += _texts(item.ContentSequence)
    return out


def test_self_nested_content_sequence(source, key):
    basic = _texts(run(source, key).ContentSequence)
    assert len(basic) == 4 and not any("Alice" in t or "Walker" in t for t in basic)
    clean = _texts(run(source, key, "CleanStructuredContent").ContentSequence)
    assert len(clean) == 4 and not any("Alice" in t or "Walker" in t or "MRN4471123" in t for t in clean)
    assert clean[1] == "level 2" and clean[2].startswith("level 3")
    concept = run(source, key, "CleanStructuredContent").ContentSequence[0].ConceptNameCodeSequence[0]
    assert concept.CodeMeaning == "Comment"


def test_clean_graphics(source, key):
    basic = run(source, key).GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    clean = run(source, key, "CleanGraphics").GraphicAnnotationSequence[0].TextObjectSequence[0]
    assert "Alice" not in basic and "Alice" not in clean.UnformattedTextValue
    assert "Walker" not in clean.UnformattedTextValue


def test_uid_inside_referenced_series_sequence(source, key):
    out = run(source, key)
    mapped = out.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert mapped == key.uid("1.2.3.4.5.6.7.8.99") and mapped.startswith("2.25.")


def test_input_not_modified(source, key):
    before = source.to_json()
    run(source, key, "CleanDescriptors")
    assert source.to_json() == before


def test_every_option_is_recorded(source, key):
    options = ["RetainSafePrivate", "RetainUIDs", "RetainDeviceIdentity", "RetainInstitutionIdentity",
               "RetainPatientCharacteristics", "RetainLongModifiedDates", "CleanDescriptors",
               "CleanStructuredContent", "CleanGraphics"]
    out = run(source, key, *options)
    assert len(out.DeidentificationMethodCodeSequence) == 1 + len(options)
    assert out.PatientIdentityRemoved == "YES"


def test_compound_codes_follow_the_iod_type(source, key):
    """CT Image IOD: Content Date (Z/D) is Type 2C -> emptied; Series Date (X/D) is Type 3 -> removed;
    Patient ID (Z/D, Type 2) gets its pseudonym; inside sequences presence is kept."""
    out = run(source, key)
    assert out.ContentDate == "" and "SeriesDate" not in out
    assert out.PatientID and out.PatientID != "MRN4471123"
    from deidpipe.ruledata import iod_for_sop_class

    iod = iod_for_sop_class(source.SOPClassUID)
    assert iod.name == "CT Image" and iod.top[0x00080023] == "2C" and iod.top[0x00080021] == "3"


def test_unknown_sop_class_falls_back_to_presence(source, key):
    private_class = source.copy()
    private_class.SOPClassUID = "1.2.3.4.5.6.7.8"  # not a standard SOP class: no IOD table
    out = run(private_class, key)
    assert out.SeriesDate == "19000101"  # X/D, present with a value: a dummy keeps it valid for any IOD


def test_kept_elements_stay_raw_and_identical(key, tmp_path):
    """Pixel data and other kept elements are not decoded and go back byte for byte."""
    from pydicom.dataelem import RawDataElement

    from deidpipe.dicomio import write_dataset

    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    out = deidentify(ds, Policy.basic(), key).dataset
    assert isinstance(out._dict[0x7FE00010], RawDataElement)
    write_dataset(out, tmp_path / "o.dcm")
    assert read_dataset(tmp_path / "o.dcm").PixelData == ds.PixelData
