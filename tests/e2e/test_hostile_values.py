"""Values a hostile or broken file puts where a value does not belong: text in a UID, in the transfer syntax, in
the character set. The profile keeps these attributes, so without a check their text would go out as it came."""

from __future__ import annotations

import io

import pytest
from pydicom import config as pydicom_config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.errors import InputError
from deidpipe.header.engine import BAD_SOP_CLASS_UID, deidentify
from deidpipe.policy import Policy

MARK = "QXHOSTILEMK"


def _roundtrip(ds: Dataset) -> Dataset:
    """``ds`` as a file on disk would give it back (written without pydicom's value checks)."""
    buf = io.BytesIO()
    saved = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        ds.save_as(buf, enforce_file_format=True)
    finally:
        pydicom_config.settings.writing_validation_mode = saved
    return read_dataset(buf.getvalue())


def _output_bytes(ds: Dataset, key) -> bytes:
    buf = io.BytesIO()
    write_dataset(deidentify(ds, Policy.basic(), key).dataset, buf)
    return buf.getvalue()


@pytest.fixture
def ct() -> Dataset:
    return read_dataset(get_testdata_file("CT_small.dcm"))


def test_text_in_the_sop_class_uid_is_refused(ct, key):
    ct.SOPClassUID = MARK
    with pytest.raises(InputError) as info:
        deidentify(_roundtrip(ct), Policy.basic(), key)
    assert info.value.reason == BAD_SOP_CLASS_UID and MARK not in str(info.value)


def test_text_in_a_kept_class_uid_is_mapped(ct, key):
    item = Dataset()
    item.ReferencedSOPClassUID = MARK
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ct.ReferencedImageSequence = [item]
    out = _output_bytes(_roundtrip(ct), key)
    assert MARK.encode() not in out
    assert ct.SOPClassUID.encode() in out  # a real class UID is kept


def test_text_in_the_transfer_syntax_is_not_copied(ct, key):
    ct.file_meta.TransferSyntaxUID = MARK
    ds = _roundtrip(ct)
    out = deidentify(ds, Policy.basic(), key).dataset
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # read as explicit VR little endian
    assert MARK.encode() not in _output_bytes(ds, key)


def test_unknown_character_set_terms_are_dropped(ct, key):
    ct.SpecificCharacterSet = ["ISO_IR 100", MARK]
    result = deidentify(_roundtrip(ct), Policy.basic(), key)
    assert result.dataset.SpecificCharacterSet == "ISO_IR 100"
    assert result.actions["charset_cleaned"] == 1
    ct.SpecificCharacterSet = MARK
    out = _output_bytes(_roundtrip(ct), key)
    assert MARK.encode() not in out


def test_unknown_character_set_terms_in_a_sequence_item_are_dropped(ct, key):
    item = Dataset()
    item.SpecificCharacterSet = MARK
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ct.ReferencedImageSequence = [item]
    out = _output_bytes(_roundtrip(ct), key)
    assert MARK.encode() not in out
