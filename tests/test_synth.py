"""The synthetic archive generator and its answer key: the ground truth the de-identification tests rely on."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
import typer
from typer.testing import CliRunner

from deidpipe.synth import KEY_FILE, AnswerKey, generate_archive, lookup
from deidpipe.synth.answer_key import is_searchable
from deidpipe.synth.cli import synth

KB = Path(__file__).resolve().parents[1].parent / "shared/reference/tcia_private_tag_kb_2024-02-01.csv"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AnswerKey]:
    out = tmp_path_factory.mktemp("synth")
    return out, generate_archive(out, patients=4)  # four: each charset also in image files


@pytest.fixture(scope="module")
def datasets(archive: tuple[Path, AnswerKey]) -> dict[str, pydicom.Dataset]:
    out, key = archive
    return {rel: pydicom.dcmread(out / rel) for rel in key.files()}


@pytest.fixture(scope="module")
def raw(archive: tuple[Path, AnswerKey]) -> dict[str, bytes]:
    out, key = archive
    return {rel: (out / rel).read_bytes() for rel in key.files()}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_archive(archive: tuple[Path, AnswerKey], tmp_path: Path) -> None:
    out, _ = archive
    generate_archive(tmp_path / "again", patients=4)
    assert _tree(out) == _tree(tmp_path / "again")
    generate_archive(tmp_path / "other", seed=1)
    assert _tree(out)["patient000/study1/series01_MR/001.dcm"] != _tree(tmp_path / "other")[
        "patient000/study1/series01_MR/001.dcm"]


def test_key_round_trips_through_json(archive: tuple[Path, AnswerKey]) -> None:
    out, key = archive
    assert AnswerKey.load(out / KEY_FILE) == key


def test_archive_shape(archive: tuple[Path, AnswerKey], datasets: dict[str, pydicom.Dataset]) -> None:
    out, key = archive
    assert len(key.patients) == 4
    modalities = {ds.Modality for ds in datasets.values()}
    assert modalities == {"CT", "MR", "US", "SR", "RTSTRUCT"}
    for rel, ds in datasets.items():
        assert (out / rel).read_bytes()[128:132] == b"DICM"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert "Pixel" not in rel and ds.PatientID not in rel  # layout by index, never by identity
    for patient in key.patients:
        dates = [st.study_date for st in patient.studies]
        assert len(set(dates)) == len(dates) >= 3  # distinct dates, so intervals exist


def test_at_least_30_planted_paths_covering_vrs_kinds_and_depths(archive: tuple[Path, AnswerKey]) -> None:
    _, key = archive
    paths = key.planted_paths()
    assert len(paths) >= 30
    assert {"PN", "LO", "SH", "DA", "TM", "DT", "UI", "AE", "AS", "LT", "OB"} <= {p.vr for p in key.planted}
    assert {"name", "id", "date", "time", "datetime", "uid", "address", "phone", "institution", "free_text",
            "ae_title", "age", "device"} <= {p.kind for p in key.planted}
    assert any(p.count("[") >= 3 and p.endswith("PersonName") for p in paths)  # SR content tree
    assert any(p.startswith("RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].") for p in paths)
    assert any(p.startswith('(0013,"CTP",01)[0].') for p in paths)  # PHI inside a private sequence
    assert {"file_meta.SourceApplicationEntityTitle", "file_meta.PrivateInformation"} <= paths
    creators = {m for p in paths for m in re.findall(r'"([^"]+)"', p)}
    assert {"GEMS_IDEN_01", "SIEMENS CSA HEADER", "Philips Imaging DD 001", "CTP"} <= creators
    assert key.safe_private, "KB-safe private elements are recorded too"


def test_planted_paths_resolve_to_the_planted_value(
    archive: tuple[Path, AnswerKey], datasets: dict[str, pydicom.Dataset]
) -> None:
    _, key = archive
    for planted in key.planted:
        for rel in planted.files:
            elem = lookup(datasets[rel], planted.path)
            assert elem is not None, (planted.path, rel)
            value = elem.value.rstrip(b"\0").decode("utf-8") if isinstance(elem.value, bytes) else str(elem.value)
            assert value == planted.value, (planted.path, rel)


def test_every_searchable_value_is_found_in_its_files(
    archive: tuple[Path, AnswerKey], raw: dict[str, bytes]
) -> None:
    _, key = archive
    for planted in key.planted:
        assert planted.searchable == bool(planted.search_bytes)
        assert all(is_searchable(b) for b in planted.patterns())
        if not planted.searchable:
            continue
        for rel in planted.files:
            assert any(b in raw[rel] for b in planted.patterns()), (planted.path, planted.value, rel)
    everything = b"".join(raw.values())
    assert all(p in everything for p in {b for pl in key.planted for b in pl.patterns()[:1]})


def test_generic_values_are_not_searchable(archive: tuple[Path, AnswerKey]) -> None:
    _, key = archive
    sex = [p for p in key.planted if p.path == "PatientSex"]
    assert sex and not any(p.searchable or p.search_bytes for p in sex)
    assert not is_searchable(b"M")
    assert not is_searchable(b"12345")
    assert is_searchable(b"123456")
    assert is_searchable(b"054Y")


def test_three_patients_already_cover_four_charsets(tmp_path: Path) -> None:
    key = generate_archive(tmp_path, patients=3, rows=4, cols=4)
    charsets = {f.specific_character_set for p in key.patients for st in p.studies for se in st.series
                for f in se.files}
    assert charsets == {"ISO_IR 100", "\\ISO 2022 IR 87", "\\ISO 2022 IR 149", "ISO_IR 192"}


def test_four_character_sets_round_trip(
    archive: tuple[Path, AnswerKey], datasets: dict[str, pydicom.Dataset], raw: dict[str, bytes]
) -> None:
    _, key = archive
    charsets = {f.specific_character_set for p in key.patients for st in p.studies for se in st.series
                for f in se.files}
    assert charsets == {"ISO_IR 100", "\\ISO 2022 IR 87", "\\ISO 2022 IR 149", "ISO_IR 192"}
    for patient in key.patients:
        for st in patient.studies:
            for se in st.series:
                for f in se.files:
                    assert str(datasets[f.path].PatientName) == patient.name
    jp = next(p for p in key.patients if "IR 87" in p.charset)
    kr = next(p for p in key.patients if "IR 149" in p.charset)
    assert "山田" in jp.name and "홍" in kr.name
    jp_file = jp.studies[0].series[0].files[0].path
    kr_file = kr.studies[0].series[0].files[0].path
    assert b"\x1b$B" in raw[jp_file] and b"\x1b$)C" in raw[kr_file]  # ISO 2022 escapes, as pydicom writes
    assert "ü".encode("latin-1") in raw[key.patients[0].studies[0].series[0].files[0].path]


def test_every_reference_resolves(archive: tuple[Path, AnswerKey], datasets: dict[str, pydicom.Dataset]) -> None:
    _, key = archive
    attribute = {"sop": "SOPInstanceUID", "series": "SeriesInstanceUID", "study": "StudyInstanceUID",
                 "frame_of_reference": "FrameOfReferenceUID"}
    assert {r.kind for r in key.references} == set(attribute)
    for ref in key.references:
        elem = lookup(datasets[ref.file], ref.path)
        assert elem is not None and elem.value == ref.uid, (ref.file, ref.path)
        assert ref.target_files, (ref.file, ref.path)
        for target in ref.target_files:
            assert datasets[target].get(attribute[ref.kind]) == ref.uid


def test_rt_structure_set_references_every_ct_slice(datasets: dict[str, pydicom.Dataset]) -> None:
    for ds in (d for d in datasets.values() if d.Modality == "RTSTRUCT"):
        cts = [d for d in datasets.values() if d.Modality == "CT" and d.StudyInstanceUID == ds.StudyInstanceUID]
        ct_uids = {d.SOPInstanceUID for d in cts}
        frame = ds.ReferencedFrameOfReferenceSequence[0]
        assert frame.FrameOfReferenceUID == cts[0].FrameOfReferenceUID
        series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == cts[0].SeriesInstanceUID
        assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == ct_uids
        assert ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID == cts[0].FrameOfReferenceUID
        contoured = {c.ContourImageSequence[0].ReferencedSOPInstanceUID
                     for c in ds.ROIContourSequence[0].ContourSequence}
        assert contoured == ct_uids


def _kb() -> dict[str, set[str]]:
    """Signature (quotes dropped, lower case) -> dispositions, from TCIA's private tag KB."""
    table: dict[str, set[str]] = {}
    with KB.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            sig = row["element_sig_pattern"].replace('"', "").lower()
            table.setdefault(sig, set()).add(row["private_disposition"])
    return table


def _signature(path: str) -> str:
    return re.sub(r"\[(\d+)\]\.", r"[<\1>]", path).replace('"', "").lower()


@pytest.mark.skipif(not KB.exists(), reason=f"TCIA private tag KB not found at {KB}")
def test_private_elements_agree_with_the_tcia_kb(archive: tuple[Path, AnswerKey]) -> None:
    _, key = archive
    kb = _kb()
    for safe in key.safe_private:
        assert "k" in kb.get(_signature(safe.path), set()), safe.path
    for planted in key.planted:
        if planted.path.startswith("(") and not planted.path.endswith("PatientName"):
            # an element nested in a private sequence the KB deletes is not listed itself: judge the sequence
            sig = _signature(planted.path)
            dispositions = kb.get(sig) or kb.get(sig.split("[")[0], set())
            assert dispositions and "k" not in dispositions, planted.path


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
def test_dciodvfy_reports_no_errors(archive: tuple[Path, AnswerKey]) -> None:
    out, key = archive
    errors = []
    for rel in key.files():
        run = subprocess.run(["dciodvfy", str(out / rel)], capture_output=True, text=True, check=False)
        errors += [f"{rel}: {line}" for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_cli_writes_an_archive_and_prints_a_summary(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(synth)
    result = CliRunner().invoke(app, [str(tmp_path / "cli"), "--patients", "1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "files" in result.output and "planted" in result.output
    key = AnswerKey.load(tmp_path / "cli" / KEY_FILE)
    assert key.seed == 3 and len(key.patients) == 1
