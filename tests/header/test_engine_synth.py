"""The header engine on the synth archive: no planted value survives, references resolve, runs are
deterministic and keyed, and Modified Dates keep every interval within a patient."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from deidpipe.dicomio import read_dataset
from deidpipe.policy import Policy
from deidpipe.synth.answer_key import EXPECT_WRITE, MEMBER_SEP, REFERENCE_TARGET_ATTRIBUTE, lookup
from tests.conftest import dciodvfy_available
from tests.helpers import dciodvfy_errors, deidentify_tree


@pytest.fixture(scope="module")
def basic_out(synth_archive, key, tmp_path_factory):
    root, answer = synth_archive
    dst = tmp_path_factory.mktemp("basic")
    # The objects a run writes (documents, the DICOMDIR and sidecars are skipped; zip members: test_release_tree).
    files = [f for f in answer.expected(EXPECT_WRITE) if MEMBER_SEP not in f]
    return dst, deidentify_tree(root, files, dst, Policy.basic(), key)


def test_archive_plants_enough(synth_archive):
    _, answer = synth_archive
    assert len(answer.planted_paths()) >= 30


def test_no_planted_value_in_any_output_byte(synth_archive, basic_out):
    """Every planted string, case-insensitive, in each of its encodings, absent from every output file."""
    _, answer = synth_archive
    _, outputs = basic_out
    blobs = {rel: p.read_bytes().lower() for rel, p in outputs.items()}
    leaks = []
    for planted in [*answer.planted, *answer.hidden]:  # hidden: stream segments, document text, folder names
        if not planted.searchable:
            continue
        for pattern in planted.patterns():
            hits = [rel for rel, blob in blobs.items() if pattern.lower() in blob]
            if hits:
                leaks.append((planted.path, planted.kind, hits[0]))
    assert not leaks, f"{len(leaks)} leaks, e.g. {leaks[:5]}"


def test_references_resolve_in_output(synth_archive, basic_out):
    root, answer = synth_archive
    dst, outputs = basic_out
    cache: dict[str, object] = {}

    def load(rel: str):
        if rel not in cache:
            cache[rel] = read_dataset(dst / rel)
        return cache[rel]

    assert answer.references
    kept = 0
    for ref in answer.references:
        if ref.file not in outputs or any(t not in outputs for t in ref.target_files):
            continue  # inside a zip, or an object the run skips
        assert lookup(read_dataset(root / ref.file), ref.path).value == ref.uid  # resolved in the input
        elem = lookup(load(ref.file), ref.path)
        if elem is None:  # its container is removed by the profile (e.g. Request Attributes Sequence, X)
            continue
        kept += 1
        assert elem.value != ref.uid, "UID not replaced"
        assert str(elem.value).startswith("2.25.")
        targets = {str(load(t).get(REFERENCE_TARGET_ATTRIBUTE[ref.kind])) for t in ref.target_files}
        assert str(elem.value) in targets, (ref.file, ref.path)
        if ref.kind == "sop":
            assert any(load(t).file_meta.MediaStorageSOPInstanceUID == elem.value for t in ref.target_files)
    assert kept >= 0.5 * len(answer.references)
    kinds = {r.kind for r in answer.references if r.file in outputs and lookup(load(r.file), r.path) is not None}
    assert kinds == {"sop", "series", "study", "frame_of_reference"}


def test_same_key_gives_identical_bytes(synth_archive, basic_out, key, tmp_path):
    root, answer = synth_archive
    _, first = basic_out
    second = deidentify_tree(root, list(first), tmp_path, Policy.basic(), key)
    for rel in first:
        assert first[rel].read_bytes() == second[rel].read_bytes(), rel


def test_other_key_gives_other_pseudonyms(synth_archive, basic_out, other_key, tmp_path):
    root, answer = synth_archive
    _, first = basic_out
    rel = next(iter(first))
    second = deidentify_tree(root, [rel], tmp_path, Policy.basic(), other_key)
    a, b = read_dataset(first[rel]), read_dataset(second[rel])
    for kw in ("PatientID", "PatientName", "StudyInstanceUID", "SOPInstanceUID", "AccessionNumber"):
        assert str(a.get(kw)) != str(b.get(kw)), kw


def _as_date(da: str) -> date:
    return date(int(da[:4]), int(da[4:6]), int(da[6:8]))


def test_modified_dates_keep_intervals(synth_archive, key, tmp_path):
    root, answer = synth_archive
    policy = Policy.basic(options=["RetainLongModifiedDates"])
    shifts_by_patient = {}
    for patient in answer.patients:
        shifts = set()
        for study in patient.studies:
            rel = study.series[0].files[0].path
            out = deidentify_tree(root, [rel], tmp_path, policy, key)[rel]
            ds = read_dataset(out)
            assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
            shifts.add((_as_date(ds.StudyDate) - _as_date(study.study_date)).days)
            if ds.get("PatientBirthDate"):
                shifts.add((_as_date(ds.PatientBirthDate) - _as_date(patient.birth_date)).days)
        assert len(shifts) == 1, f"intervals changed for patient {patient.index}"
        shift = shifts.pop()
        assert shift != 0
        shifts_by_patient[patient.index] = shift
    assert len(set(shifts_by_patient.values())) > 1, "every patient got the same shift"


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
def test_output_has_no_new_dciodvfy_errors(synth_archive, basic_out):
    root, answer = synth_archive
    _, outputs = basic_out
    for rel in outputs:
        new = dciodvfy_errors(outputs[rel]) - dciodvfy_errors(Path(root / rel))
        assert not new, (rel, new)
