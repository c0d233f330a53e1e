"""A release's risk target on whole archives (deidpipe/risk/archive.py, target.py, pipeline/release.py): the
labels an object's header gives, the patients' table, the choice, its application to headers, and ``run`` with a
target end to end: ``scan`` on the output meets it, the suppressed patients are in the audit, nothing planted
comes out, and a resumed run keeps the choice."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from pydicom.data import get_testdata_file

from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.errors import DeidError, PolicyError
from deidpipe.keys import ProjectKey
from deidpipe.pipeline.release import PUBLIC_FILE, STATE_FILE
from deidpipe.pipeline.runner import run
from deidpipe.policy import Policy
from deidpipe.risk.archive import (
    ACTION,
    SUPPRESSED_REASON,
    choose,
    generalise_dataset,
    object_labels,
    patient_table,
)
from deidpipe.risk.errors import RiskError
from deidpipe.risk.generalise import Target
from deidpipe.risk.qi import PATIENT, qi_row
from deidpipe.risk.target import ArchiveTarget
from deidpipe.scan import scan

KEY = ProjectKey(b"archive-risk-test-key-0123456789")
RETAIN = ["RetainPatientCharacteristics", "RetainDeviceIdentity", "RetainLongModifiedDates"]
#: Planted kinds the policy above keeps on purpose (times: RetainLongModifiedDates shifts only the dates), or that
#: the risk target is there to generalise.
KEPT_KINDS = {"institution", "device", "station", "time"}


def _ct(age: str | None = "045Y", sex: str = "M", study_date: str = "20190304"):
    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    if age is None:
        del ds.PatientAge
    else:
        ds.PatientAge = age
    ds.PatientSex, ds.StudyDate, ds.PatientBirthDate = sex, study_date, "19731101"
    ds.StationName, ds.DeviceSerialNumber, ds.InstitutionName = "CT-ROOM-7", "SN-1234", "Fenwick Hospital"
    ds.Manufacturer, ds.ManufacturerModelName = "ACME", "Scanner 9"
    return ds


def test_labels_follow_the_built_in_hierarchies() -> None:
    target = ArchiveTarget(Target(k=5))
    row = object_labels(_ct("093Y"), KEY, target)
    assert row["age"] == ["90", "90", "90", "90", "*"]  # top-coded at 90 at every level
    assert object_labels(_ct("047Y"), KEY, target)["age"] == ["47", "45", "40", "40", "*"]
    assert row["study_year"] == ["2019", "2010", "*"]
    assert row["manufacturer_model"] == ["ACME\x1fScanner 9", "ACME", "*"]
    assert row["station"] == ["CT-ROOM-7", "*"] and row["body_part"] is None
    widths = ArchiveTarget(Target(k=5), hierarchies=(("age", "10,*"),))
    assert object_labels(_ct("047Y"), KEY, widths)["age"] == ["47", "40", "*"]


def test_generalised_header_reads_back_as_its_labels() -> None:
    """What ``scan`` reads from a generalised header (qi_row) is the label the search counted."""
    target = ArchiveTarget(Target(k=5)).with_levels({"age": 2, "sex": 1, "study_year": 1, "institution": 1,
                                                     "station": 1, "device_serial": 1, "manufacturer_model": 1,
                                                     "body_part": 1})
    ds = _ct("047Y")
    ds.ContentDate = "20190305"
    counts = generalise_dataset(ds, target)
    assert counts[ACTION] > 0
    row = qi_row(ds, KEY)
    assert (row["age"], row["sex"], row["study_year"], row["manufacturer_model"]) == ("40", None, "2010", "ACME")
    assert row["institution"] is row["station"] is row["device_serial"] is None
    assert ds.PatientBirthDate == "" and ds.PatientAge == "040Y" and ds.ContentDate == "20100101"
    top = ArchiveTarget(Target(k=5)).with_levels({"age": 4, "study_year": 2, "manufacturer_model": 2})
    ds = _ct("047Y")
    generalise_dataset(ds, top)
    assert "PatientAge" not in ds and ds.StudyDate == "" and ds.Manufacturer == ""
    with pytest.raises(RiskError, match="no release transformation"):
        generalise_dataset(_ct(), ArchiveTarget(Target(k=5)))


def test_patients_with_several_values_are_one_row_with_a_composite() -> None:
    target = ArchiveTarget(Target(k=2), qi=("age",))
    rows = [object_labels(_ct(age), KEY, target) for age in ("040Y", "041Y")]
    rows[1][PATIENT] = rows[0][PATIENT]  # one patient seen at 40 and 41
    rows.append({PATIENT: "other", "age": None})
    pt = patient_table(rows, target)
    assert pt.table.sort(PATIENT)["age"].to_list() == ["40|41", "-"]
    composite = {r[0]: r for r in pt.hierarchies["age"].rows}
    assert composite["40|41"] == ("40|41", "40", "40", "40", "*")


def test_choose_suppresses_the_rare_patient_rather_than_generalise_everyone() -> None:
    target = ArchiveTarget(Target(k=5, suppression=0.1), qi=("sex",))
    rows = [{PATIENT: f"p{i}", "sex": ["M", "*"]} for i in range(10)] + [{PATIENT: "odd", "sex": ["F", "*"]}]
    choice = choose(rows, target)
    assert choice.levels == {"sex": 0} and choice.suppressed == {"odd"}
    assert choice.figures["risk_after"]["prosecutor"]["highest_risk"] == pytest.approx(0.1)


def test_policy_section_is_checked() -> None:
    with pytest.raises(PolicyError, match="unknown quasi-identifier"):
        Policy.from_mapping({"risk_target": {"k": 5, "qi": ["age", "shoe_size"]}})
    with pytest.raises(PolicyError, match="only its built-in hierarchy"):
        Policy.from_mapping({"risk_target": {"k": 5, "hierarchies": {"sex": "a.csv"}}})
    with pytest.raises(PolicyError, match="multiple of the one before"):
        Policy.from_mapping({"risk_target": {"k": 5, "hierarchies": {"age": "5,7,*"}}})
    with pytest.raises(PolicyError, match="give a target"):
        Policy.from_mapping({"risk_target": {"suppression": 0.1}})
    policy = Policy.from_mapping({"risk_target": {"max_risk": 0.2}})
    assert "risk target: prosecutor highest risk 0.2" in policy.describe()


def test_run_suppresses_the_rare_patient_and_audits_it(tmp_path: Path) -> None:
    """Eleven patients, one of another sex: with k = 5 over sex and 10% suppression, that patient's object is set
    aside as suppressed for risk (cheaper than removing everyone's sex), and the release meets k = 5."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(11):
        ds = _ct(sex="F" if i == 3 else "M")
        ds.PatientID, ds.SOPInstanceUID = f"PAT{i:03d}", f"1.2.826.0.1.3680043.10.543.77.{i}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        write_dataset(ds, src / f"ct{i:02d}.dcm")
    policy = Policy.from_mapping({"options": RETAIN, "text_screening": "denylist", "pixels": "off",
                                  "risk_target": {"k": 5, "suppression": 0.1, "qi": ["sex"]}})
    report = run(src, tmp_path / "out", policy, key=KEY, workers=1)
    assert report.written == 10 and report.skipped_by_reason == {SUPPRESSED_REASON: 1}
    assert report.release is not None and report.release["levels"] == {"sex": 0}
    audit = pl.read_parquet(report.audit)
    skipped = audit.filter(pl.col("status") == "skipped")
    assert skipped["reason"].to_list() == [SUPPRESSED_REASON] and skipped["stage"].to_list() == ["risk"]
    figures = json.loads((tmp_path / "out" / PUBLIC_FILE).read_text())
    assert figures["patients_suppressed"] == figures["objects_suppressed"] == 1
    scanned = scan(tmp_path / "out", policy=policy, key=KEY, qi="sex", pixels=False, faces=False)
    assert scanned.risk.k == 10


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory):
    """A 12-patient synth archive released at a highest prosecutor risk of 0.2 over every quasi-identifier."""
    from deidpipe.synth import generate_archive

    root = tmp_path_factory.mktemp("release")
    answer = generate_archive(root / "src", patients=12, seed=11, real_world=False)
    (root / "src" / "answer_key.json").replace(root / "answer_key.json")
    policy = Policy.from_mapping({"options": RETAIN, "text_screening": "denylist", "pixels": "off",
                                  "deface": "off", "risk_target": {"max_risk": 0.2}})
    report = run(root / "src", root / "out", policy, key=KEY, workers=2)
    return root, answer, policy, report


def test_release_meets_its_target_as_scan_scores_it(released) -> None:
    root, answer, policy, report = released
    assert report.quarantined == 0 and report.release is not None
    scanned = scan(root / "out", policy=policy, key=KEY, pixels=False, faces=False)
    after = report.release["risk_after"]["prosecutor"]
    assert scanned.risk.to_dict()["prosecutor"]["highest_risk"] <= 0.2
    assert scanned.risk.to_dict()["prosecutor"] == pytest.approx(after)
    assert not scanned.findings  # the generalised headers are clean output to scan's rules too


def test_release_holds_no_planted_value(released) -> None:
    root, answer, _, _ = released
    secrets = {p for planted in answer.planted if planted.kind not in KEPT_KINDS for p in planted.patterns()
               if len(p) >= 6}
    assert secrets
    for path in (root / "out").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [s for s in secrets if s in data], path.name


def test_resume_keeps_the_choice(released) -> None:
    root, _, policy, report = released
    state = root / "out.deidpipe-state" / STATE_FILE
    stored = state.read_bytes()
    again = run(root / "src", root / "out", policy, key=KEY, workers=1, resume=True)
    assert again.resumed == report.objects and state.read_bytes() == stored
    assert again.release == report.release


def test_serve_refuses_a_risk_target(tmp_path: Path) -> None:
    from deidpipe.serve.config import ServeConfig
    from deidpipe.serve.node import Node

    policy = Policy.from_mapping({"risk_target": {"k": 5}})
    with pytest.raises(DeidError, match="needs the whole archive"):
        Node(ServeConfig(queue=tmp_path / "queue", port=0), KEY, policy)
    assert not (tmp_path / "queue").exists()  # refused before anything was made
