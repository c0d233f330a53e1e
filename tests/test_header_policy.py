"""Policies from YAML and deid recipes, strict mode, the reversible option through the engine, the CLI
commands of the header stage, keys, and errors that never carry an identifying value."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from deidpipe.cli import app
from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.errors import InputError, KeyMissingError, NotDicomError, PolicyError, TruncatedError
from deidpipe.header.engine import deidentify
from deidpipe.keys import ProjectKey
from deidpipe.policy import Policy
from deidpipe.ruledata import load_table

runner = CliRunner()


@pytest.fixture()
def ct(tmp_path):
    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Okonkwo^Chidi"
    ds.StudyDescription = "CT abdomen for Chidi Okonkwo"
    ds.PatientComments = "lives at 12 Elm Street"
    return ds


def test_table_is_complete():
    table = load_table()
    rows = [r for r in table.by_tag.values() if not r.addition]
    assert len(rows) + len(table.patterns) == 620  # + the odd-group private row, handled apart
    assert table.edition["built_from_standard_on"] == "2025-01-28"


def test_yaml_policy(tmp_path, ct, key):
    (tmp_path / "p.yaml").write_text(
        "options: [CleanDescriptors]\nkeep: [PatientComments]\nremove: ['(0008,0070)']\n"
        "overrides:\n  - {tag: ClinicalTrialSponsorName, action: set, value: ACME TRIAL}\n")
    policy = Policy.load(tmp_path / "p.yaml")
    out = deidentify(ct, policy, key).dataset
    assert out.PatientComments == "lives at 12 Elm Street"  # explicit keep wins
    assert "Manufacturer" not in out
    assert "Okonkwo" not in out.StudyDescription


def test_bad_policies_are_clear(tmp_path):
    with pytest.raises(PolicyError, match="unknown option"):
        Policy.basic(options=["RetainEverything"])
    with pytest.raises(PolicyError, match="choose one"):
        Policy.basic(options=["RetainLongFullDates", "RetainLongModifiedDates"])
    (tmp_path / "bad.yaml").write_text("keep: [NoSuchKeyword]\n")
    with pytest.raises(PolicyError, match="keyword or tag"):
        Policy.load(tmp_path / "bad.yaml")


def test_deid_recipe_layer(tmp_path, ct, key):
    (tmp_path / "r.deid").write_text(
        "FORMAT dicom\n\n%header\n\nREMOVE Manufacturer\nKEEP PatientComments\n"
        "REPLACE InstitutionName TRIAL-SITE-1\nBLANK StationName\n")
    (tmp_path / "p.yaml").write_text("deid_recipes: [r.deid]\n")
    out = deidentify(ct, Policy.load(tmp_path / "p.yaml"), key).dataset
    assert "Manufacturer" not in out and out.PatientComments == "lives at 12 Elm Street"
    assert out.InstitutionName == "TRIAL-SITE-1" and out.StationName == ""


def test_deid_recipe_computed_values_refused(tmp_path):
    (tmp_path / "r.deid").write_text("FORMAT dicom\n\n%header\n\nREPLACE PatientID func:generate_uid\n")
    (tmp_path / "p.yaml").write_text("deid_recipes: [r.deid]\n")
    with pytest.raises(PolicyError, match="computed value"):
        Policy.load(tmp_path / "p.yaml")


def test_strict_mode_keeps_only_the_allow_list(ct, key):
    ct.add_new(0x00080081, "ST", "1 Hospital Road")  # InstitutionAddress: table row
    ct.add_new(0x00181030, "LO", "Protocol for Chidi")  # ProtocolName: table row
    ct.add_new(0x00204000, "LT", "image comment")  # ImageComments
    ct.add_new(0x00080090, "PN", "Doctor^Who")
    ct.add_new(0x00181200, "DA", "20200101")  # DateOfLastCalibration
    ct.add_new(0x00280040, "CS", "RECT")  # ImageFormat, a retired attribute
    out = deidentify(ct, Policy.basic(strict=True), key).dataset
    assert "Manufacturer" in out and "SliceThickness" in out and "PixelData" in out
    assert 0x00280040 not in out  # retired: removed in strict mode
    assert not any(t.is_private for t in out.keys())
    lax = deidentify(ct, Policy.basic(), key).dataset
    assert 0x00280040 in lax


def test_reversible_round_trip(tmp_path, ct, key):
    from deidpipe.header.recipients import load_certificate, load_private_key, make_recipient
    from deidpipe.header.reversible import restore_original_attributes

    crt, pem = make_recipient(tmp_path / "broker")
    out = deidentify(ct, Policy.basic(recipients=(str(crt),)), key).dataset
    assert "EncryptedAttributesSequence" in out
    assert b"Okonkwo" not in out.EncryptedAttributesSequence[0].EncryptedContent
    restored = restore_original_attributes(out, load_private_key(pem), load_certificate(crt))
    assert restored.PatientName == "Okonkwo^Chidi" and restored.StudyInstanceUID == ct.StudyInstanceUID
    plain = deidentify(ct, Policy.basic(), key).dataset
    assert "EncryptedAttributesSequence" not in plain


def test_key_sources(tmp_path, monkeypatch):
    path = ProjectKey.generate(tmp_path / "k")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    from_file = ProjectKey.from_file(path)
    monkeypatch.setenv("DEIDPIPE_KEY_FILE", str(path))
    monkeypatch.delenv("DEIDPIPE_KEY", raising=False)
    assert ProjectKey.from_env() == from_file
    assert "secret" not in repr(from_file) and path.read_text().strip() not in repr(from_file)
    monkeypatch.delenv("DEIDPIPE_KEY_FILE")
    with pytest.raises(KeyMissingError):
        ProjectKey.from_env()
    with pytest.raises(KeyMissingError):
        ProjectKey(b"short")


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


def test_cli_deid_file_rules_show_keygen(tmp_path, ct):
    src = tmp_path / "in.dcm"
    write_dataset(ct, src)
    res = runner.invoke(app, ["keygen", str(tmp_path / "project.key")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["deid-file", str(src), str(tmp_path / "out.dcm"), "--key-file",
                              str(tmp_path / "project.key"), "-o", "CleanDescriptors"])
    assert res.exit_code == 0, res.output
    assert "Okonkwo" not in res.output
    out = read_dataset(tmp_path / "out.dcm")
    assert out.PatientIdentityRemoved == "YES" and "Okonkwo" not in out.StudyDescription
    res = runner.invoke(app, ["rules", "show", "--sop-class", "CT Image Storage", "-o", "RetainUIDs",
                              "--changed-only"])
    assert res.exit_code == 0 and "RetainUIDs" in res.output and "(0020,000D)" in res.output
    res = runner.invoke(app, ["deid-file", str(tmp_path / "missing.dcm"), str(tmp_path / "o.dcm"),
                              "--key-file", str(tmp_path / "project.key")])
    assert res.exit_code == 1 and "does not exist" in " ".join(res.output.split())


def test_rules_show_resolves_for_a_sop_class():
    res = runner.invoke(app, ["rules", "show", "--sop-class", "CT Image Storage"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "Type 2C in CT Image" in res.output and "Type 3 in CT Image" in res.output
    res = runner.invoke(app, ["rules", "show", "--sop-class", "No Such Storage"])
    assert res.exit_code == 1 and "unknown SOP class" in res.output
