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
    ABSENT,
    ACTION,
    JOIN,
    SUPPRESSED_REASON,
    ObjectLabels,
    check_release,
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
#: Planted kinds the policy above keeps (times: RetainLongModifiedDates shifts only the dates), unless the release
#: generalises their column (then they must be gone too): kind -> the columns that generalise it.
KEPT_KINDS = {"time": (), "institution": ("institution",), "device": ("device_serial", "station")}


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
    both = f"40{JOIN}41"
    assert pt.table.sort(PATIENT)["age"].to_list() == [both, ABSENT]
    composite = {r[0]: r for r in pt.hierarchies["age"].rows}
    assert composite[both] == (both, "40", "40", "40", "*")


def test_unreadable_values_and_companions_go_with_their_column() -> None:
    """A Patient's Age the labels cannot read is removed, not kept exact; the device's make, serial and station
    repeated in a Contributing Equipment Sequence item go too; Pregnancy Status goes with sex."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _ct("95Y")  # not AS-shaped, and no birth date to read an age from: no label; kept, it would defeat
    del ds.PatientBirthDate  # top-coding at 90
    item = Dataset()
    item.StationName, item.DeviceSerialNumber, item.Manufacturer = "CT-ROOM-7", "SN-1234", "ACME"
    ds.ContributingEquipmentSequence = Sequence([item])
    ds.PregnancyStatus = 4
    target = ArchiveTarget(Target(k=5)).with_levels({"age": 1, "sex": 1, "station": 1, "device_serial": 1,
                                                     "manufacturer_model": 2})
    generalise_dataset(ds, target)
    assert "PatientAge" not in ds
    assert "PregnancyStatus" not in ds and ds.PatientSex == ""
    left = ds.ContributingEquipmentSequence[0]
    assert "StationName" not in left and "DeviceSerialNumber" not in left and "Manufacturer" not in left
    assert "StationName" not in ds and "DeviceSerialNumber" not in ds and ds.Manufacturer == ""


def test_check_release_sees_a_class_made_too_small_after_the_choice() -> None:
    target = ArchiveTarget(Target(k=5), qi=("sex",))
    rows = [{PATIENT: f"p{i}", "sex": ["M", "*"]} for i in range(5)]
    assert check_release(rows, target, {"sex": 0})["met"]
    assert not check_release(rows[:4], target, {"sex": 0})["met"]  # one object quarantined after the choice
    assert check_release(rows[:4], target, {"sex": 1})["met"] is True  # everyone's sex removed: no class


def test_each_run_applies_its_own_choice_in_one_process(tmp_path: Path) -> None:
    """The worker's cached context with levels is the run's own, never an earlier run's (workers=1 runs in the
    caller's process)."""
    from deidpipe.pipeline.execute import WorkContext, _with_levels
    from deidpipe.pipeline.source import detect

    policy = Policy.from_mapping({"risk_target": {"k": 5}})
    levels = (("age", 1),)
    first = WorkContext(detect(tmp_path), str(tmp_path / "a"), KEY, policy, "pseudonym")
    second = WorkContext(detect(tmp_path), str(tmp_path / "b"), KEY, policy, "pseudonym")
    assert _with_levels(first, levels).dst.endswith("a") and _with_levels(second, levels).dst.endswith("b")
    assert _with_levels(second, levels).policy.risk_target.levels == levels


def test_one_object_alone_cannot_be_released_to_a_target() -> None:
    from deidpipe.header.engine import deidentify_dataset

    with pytest.raises(PolicyError, match="needs the whole archive"):
        deidentify_dataset(_ct(), Policy.from_mapping({"risk_target": {"k": 5}}), KEY)


def test_object_labels_are_kept_interned_and_come_back_as_they_were() -> None:
    target = ArchiveTarget(Target(k=5))
    store = ObjectLabels(target.qi)
    rows = {f"o{i}": object_labels(_ct(f"0{40 + i % 3}Y", sex="MF"[i % 2]), KEY, target) for i in range(6)}
    rows["o5"][PATIENT] = "someone else"
    for oid, row in rows.items():
        store.add(oid, row)
    assert len(store) == 6 and "o1" in store and "o9" not in store
    assert list(store.rows()) == list(rows.values())
    assert list(store.rows(["o9", "o2"])) == [rows["o2"]]  # an object not kept is no row
    again = ObjectLabels.from_dict(json.loads(json.dumps(store.to_dict())))
    assert list(again.rows()) == list(rows.values())
    assert again.objects_of({"someone else", "nobody"}) == {"o5"}


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
    assert figures["as_written"]["met"] and figures["as_written"]["k"] == 10
    # a resumed run refuses inputs the choice was not made from: they would be written uncounted
    extra = _ct(sex="F")
    extra.PatientID, extra.SOPInstanceUID = "PAT999", "1.2.826.0.1.3680043.10.543.77.999"
    extra.file_meta.MediaStorageSOPInstanceUID = extra.SOPInstanceUID
    write_dataset(extra, src / "late.dcm")
    with pytest.raises(DeidError, match="inputs changed"):
        run(src, tmp_path / "out", policy, key=KEY, workers=1, resume=True)


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
    """Nothing planted comes out, the values of the columns the release generalised included (their elements and
    companions at every depth, e.g. device serials and station names)."""
    root, answer, _, report = released
    levels = report.release["levels"]
    kept = {kind for kind, columns in KEPT_KINDS.items()
            if not columns or not all(levels.get(c, 0) > 0 for c in columns)}
    assert "device" not in kept  # this release removes station and device serial
    secrets = {p for planted in answer.planted if planted.kind not in kept for p in planted.patterns()
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
