"""Policies from YAML and deid recipes, and strict mode (deidpipe.policy), shown through the header engine."""

from __future__ import annotations

import pytest

from deidpipe.errors import PolicyError
from deidpipe.header.engine import deidentify
from deidpipe.policy import Policy


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
