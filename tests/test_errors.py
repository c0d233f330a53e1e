"""Errors (deidpipe.errors) are typed and never carry an identifying value: a file that is no DICOM, one cut short,
an empty one."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from deidpipe.dicomio import read_dataset
from deidpipe.errors import InputError, NotDicomError, TruncatedError
from deidpipe.header.engine import deidentify
from deidpipe.keys import ProjectKey
from deidpipe.policy import Policy


def test_bad_inputs_raise_typed_errors_without_values(tmp_path):
    (tmp_path / "note.txt").write_text("Patient Jane Roe, MRN 123456")
    with pytest.raises(NotDicomError) as info:
        read_dataset(tmp_path / "note.txt")
    assert "Jane" not in str(info.value) and "note.txt" in str(info.value)
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:1000])  # inside the header
    with pytest.raises(TruncatedError):
        read_dataset(tmp_path / "cut.dcm")
    # Cut inside Pixel Data: read (the policy may allow incomplete pixels), refused by the header stage.
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="pixel data is shorter"):
        deidentify(read_dataset(tmp_path / "cut.dcm"), Policy.basic(), ProjectKey(b"k" * 32))
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_dataset(tmp_path / "empty.dcm")
