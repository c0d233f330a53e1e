"""The synthetic archive generator and its answer key: the ground truth the de-identification tests rely on."""

from __future__ import annotations

import csv
import io
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
from deidpipe.synth.search import read_member
from tests.helpers import REPO

KB = REPO.parent / "shared/reference/tcia_private_tag_kb_2024-02-01.csv"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AnswerKey]:
    out = tmp_path_factory.mktemp("synth")
    return out, generate_archive(out, patients=4)  # four: each charset also in image files


@pytest.fixture(scope="module")
def raw(archive: tuple[Path, AnswerKey]) -> dict[str, bytes]:
    """Every DICOM object of the key, on disk or inside a zip, by its archive path."""
    out, key = archive
    return {rel: read_member(out, rel) for rel in key.objects()}


@pytest.fixture(scope="module")
def datasets(raw: dict[str, bytes]) -> dict[str, pydicom.Dataset]:
    return {rel: pydicom.dcmread(io.BytesIO(data)) for rel, data in raw.items()}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_archive(archive: tuple[Path, AnswerKey], tmp_path: Path) -> None:
    out, _ = archive
    generate_archive(tmp_path / "again", patients=4)
    assert _tree(out) == _tree(tmp_path / "again")
    generate_archive(tmp_path / "other", seed=1, real_world=False)
    assert _tree(out)["patient000/study1/series01_MR/001.dcm"] != _tree(tmp_path / "other")[
        "patient000/study1/series01_MR/001.dcm"]


def test_key_round_trips_through_json(archive: tuple[Path, AnswerKey]) -> None:
    out, key = archive
    assert AnswerKey.load(out / KEY_FILE) == key


def test_archive_shape(archive: tuple[Path, AnswerKey], datasets: dict[str, pydicom.Dataset],
                       raw: dict[str, bytes]) -> None:
    out, key = archive
    assert len(key.patients) == 4
    modalities = {ds.Modality for ds in datasets.values()}
    assert modalities == {"CT", "MR", "US", "SR", "RTSTRUCT", "OT", "PR", "SEG", "ECG", "DOC"}
    assert len(key.files()) == 4 * (10 + 7) and len(key.members()) == 4 * 2  # per patient: 3 studies, the 4th
    for rel, ds in datasets.items():
        assert raw[rel][128:132] == b"DICM"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        if rel.startswith("patient"):  # the first three studies: layout by index, never by identity
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert "Pixel" not in rel and ds.PatientID not in rel
        elif rel.startswith("PT"):  # the captures, named by pydicom's FileSet
            assert ds.file_meta.TransferSyntaxUID in {pydicom.uid.JPEGBaseline8Bit, pydicom.uid.JPEG2000Lossless}
        else:  # the fourth study's folder is named after the patient, as users export by hand
            assert ds.PatientID in rel and ds.StudyDate in rel
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
    key = generate_archive(tmp_path, patients=3, rows=4, cols=4, real_world=False)
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
def test_dciodvfy_reports_no_errors(archive: tuple[Path, AnswerKey],
                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    out, key = archive
    errors = []
    members = tmp_path_factory.mktemp("members")
    paths = [out / rel for rel in [*key.files(), "DICOMDIR"]]
    for n, rel in enumerate(key.members()):  # dciodvfy reads files: the zips' members are written out
        paths.append(members / f"{n}.dcm")
        paths[-1].write_bytes(read_member(out, rel))
    for path in paths:
        rel = path.name if path.parent == members else path.relative_to(out).as_posix()
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
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


# --- the fourth study: objects and places real archives hide identity in (issue 17) --------------------------


def test_real_world_entries_and_their_expected_outcomes(archive: tuple[Path, AnswerKey]) -> None:
    out, key = archive
    whats = {e.what for e in key.extras}
    assert whats == {"dicomdir", "sidecar", "zip", "jpeg", "j2k", "gsps", "seg", "ecg", "encapsulated_pdf",
                     "encapsulated_cda", "dicom_in_zip"}
    for extra in key.extras:
        assert (out / extra.path.split("!/")[0]).is_file(), extra.path
    assert sorted(key.expected("skip: DICOMDIR")) == ["DICOMDIR"]
    assert len(key.expected("skip: encapsulated document")) == 2 * 4
    assert len(key.expected("skip: not DICOM")) == 3 * 4  # notes.txt, summary.json, photo.png
    written = key.expected("write")
    assert len(written) == len(key.objects()) - 2 * 4 and set(key.members()) <= set(written)
    assert any(m.count("!/") == 2 for m in key.members())  # a zip inside the zip
    dicomdir = pydicom.dcmread(out / "DICOMDIR")
    records = [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "PATIENT"]
    assert {r.PatientID for r in records} == {p.patient_id for p in key.patients}


def test_hidden_values_are_found_where_the_key_says(archive: tuple[Path, AnswerKey]) -> None:
    from deidpipe.synth.search import search_bytes

    out, key = archive
    wheres = {h.where.split(":")[0] for h in key.hidden}
    assert wheres == {"path", "pdf", "cda", "jpeg", "j2k", "sidecar", "dicomdir"}
    for hidden in key.hidden:
        assert hidden.searchable and all(is_searchable(p) for p in hidden.patterns()), hidden.where
        for rel in hidden.files:
            if hidden.where.startswith("path:"):
                assert any(p.lower() in rel.encode().lower() for p in hidden.patterns()), hidden.where
            else:
                assert search_bytes(read_member(out, rel), hidden.patterns()), (hidden.where, rel)


def test_the_leak_search_finds_every_planted_value_in_the_input(archive: tuple[Path, AnswerKey]) -> None:
    """The demo's search, run on the input: each planted and hidden value is found (so a clean output means
    removed, not missed); the Flate stream's values only after inflating, the inner zip's after unpacking."""
    from deidpipe.demo import leak_patterns
    from deidpipe.synth.search import SearchStats, search_tree

    out, key = archive
    stats = SearchStats()
    hits = search_tree(out, leak_patterns(key), stats)
    found = {h.pattern.lower() for h in hits}
    for item in [*key.planted, *key.hidden]:
        if item.searchable:
            assert {p.lower() for p in item.patterns()} & found, (item.kind, getattr(item, "where", ""))
    assert stats.flate == 4 and stats.members == 4 * 3  # IMG001, inner.zip, IMG002 per patient
    parts = {(h.part, "!/" in h.where) for h in hits}
    assert {("name", False), ("bytes", False), ("bytes", True), ("flate", False)} <= parts
    pdf = next(h for h in key.hidden if h.where == "pdf:content stream (FlateDecode)" and h.kind == "name"
               and h.patient == 0)
    rel = pdf.files[0]
    lowered = {p.lower() for p in pdf.patterns()}
    assert any(h.where == rel and h.part == "flate" and h.pattern in lowered for h in hits)


def test_compressed_captures_decode_and_carry_metadata_segments(datasets: dict[str, pydicom.Dataset]) -> None:
    from pydicom.encaps import generate_frames

    jpeg = next(ds for ds in datasets.values() if ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit)
    j2k = next(ds for ds in datasets.values() if ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless)
    for ds in (jpeg, j2k):
        assert ds.pixel_array.shape == (32, 32)
    frame = next(generate_frames(jpeg.PixelData, number_of_frames=1))
    assert frame[:2] == b"\xff\xd8" and b"\xff\xfe" in frame and b"Exif\x00\x00" in frame
    assert b"http://ns.adobe.com/xap/1.0/\x00" in frame and jpeg.PatientID.encode() in frame
    stream = next(generate_frames(j2k.PixelData, number_of_frames=1))
    assert stream[:4] == b"\xff\x4f\xff\x51"
    siz_end = 4 + int.from_bytes(stream[4:6], "big")
    assert stream[siz_end:siz_end + 2] == b"\xff\x64" and j2k.PatientID.encode() in stream  # COM in main header
    original = j2k.pixel_array.copy()
    assert (original == j2k.pixel_array).all()


def test_encapsulated_documents_are_well_formed(datasets: dict[str, pydicom.Dataset]) -> None:
    import xml.etree.ElementTree as ET
    import zlib

    pdf = next(ds for ds in datasets.values() if ds.get("MIMETypeOfEncapsulatedDocument") == "application/pdf")
    doc = pdf.EncapsulatedDocument[:pdf.EncapsulatedDocumentLength]
    assert doc.startswith(b"%PDF-1.4") and doc.rstrip().endswith(b"%%EOF")
    xref = int(doc.rsplit(b"startxref", 1)[1].split()[0])
    offsets = [int(line[:10]) for line in doc[xref:].split(b"\n")[3:11]]
    assert [doc[o:].split(b"\n", 1)[0] for o in offsets] == [b"%d 0 obj" % n for n in range(1, 9)]
    assert b"/Info 8 0 R" in doc and b"/Type /Metadata" in doc and b"/FlateDecode" in doc
    packed = doc.split(b"/FlateDecode >>\nstream\n", 1)[1].split(b"\nendstream", 1)[0]
    assert pdf.PatientID.encode() in zlib.decompress(packed)
    cda = next(ds for ds in datasets.values() if ds.get("MIMETypeOfEncapsulatedDocument") == "text/XML")
    root = ET.fromstring(cda.EncapsulatedDocument[:cda.EncapsulatedDocumentLength])
    ns = {"h": "urn:hl7-org:v3"}
    assert root.find("h:recordTarget/h:patientRole/h:id", ns).get("extension") == cda.PatientID
    assert root.find("h:recordTarget/h:patientRole/h:patient/h:name/h:family", ns) is not None
    assert root.find("h:author/h:assignedAuthor/h:assignedPerson/h:name", ns) is not None
    assert cda.PatientID in root.find(".//h:paragraph", ns).text
    assert cda.HL7InstanceIdentifier.startswith("2.25.")


def test_gsps_seg_and_ecg_carry_identity_in_their_own_attributes(datasets: dict[str, pydicom.Dataset]) -> None:
    by_modality = {ds.Modality: ds for ds in datasets.values() if ds.PatientID == datasets[next(iter(datasets))]
                   .PatientID}
    pr, seg, ecg = by_modality["PR"], by_modality["SEG"], by_modality["ECG"]
    text = pr.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    assert pr.PatientID in text and pr.PatientID in pr.ContentDescription
    assert "PatientID=" + pr.PatientID in pr.ReferencedSeriesSequence[0].RetrieveURL
    assert pr.ContentLabel.isupper() and pr.GraphicLayerSequence[0].GraphicLayerDescription.startswith("Notes on")
    captures = {ds.SOPInstanceUID for ds in datasets.values() if ds.Modality == "OT"}
    assert pr.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID in captures
    assert seg.PatientID in seg.SegmentSequence[0].SegmentDescription
    assert seg.pixel_array.sum() > 0
    group = ecg.WaveformSequence[0]
    assert group.NumberOfWaveformChannels == 12 and ecg.PatientID in group.ChannelDefinitionSequence[0].ChannelLabel
    assert ecg.waveform_array(0).shape == (200, 12)


def test_real_world_off_leaves_the_first_three_studies_byte_identical(archive: tuple[Path, AnswerKey],
                                                                      tmp_path: Path) -> None:
    out, key = archive
    plain = generate_archive(tmp_path, patients=4, real_world=False)
    assert not plain.extras and not plain.hidden and not plain.members()
    assert plain.files() == [rel for rel in key.files() if rel.startswith("patient")]
    assert all((tmp_path / rel).read_bytes() == (out / rel).read_bytes() for rel in plain.files())
