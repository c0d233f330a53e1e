"""Issue 17 section 4: DST is safe to share whole.

A folder tree whose folder and file names are patients' names, MRNs and dates, with sidecar files (text, JSON, PNG,
PDF), a zip in a folder, a zip inside that zip, a zip inside that one (too deep), and a tar.gz in a folder. After
``deidpipe run``: every path and every byte under DST (Parquet read as bytes and as a table) holds no planted value
and no input name; sidecars are skipped, never copied; the run exits 0; nested members are de-identified; the
state (manifest with the input paths, journal) is outside DST, and ``--resume`` works from it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import polars as pl
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from deidpipe.keys import ProjectKey
from deidpipe.pipeline import run
from deidpipe.pipeline.archives import REASON_NESTED_TOO_DEEP, archive_kind
from deidpipe.pipeline.index import REASON_NOT_DICOM, looks_like_dicom
from deidpipe.pipeline.source import detect, iter_items, read_member
from deidpipe.pipeline.state import default_state_dir
from deidpipe.policy import Policy
from tests.helpers import run_cli

SECRET = "release-tree-secret-0123456789abcdef"
POLICY = Policy.basic(pixels="off")
#: Values planted in folder names, file names, sidecar contents and DICOM headers: none may appear under DST.
PLANTED = ["Doe^John", "MRN12345", "2019-03-04", "Smith^Jane", "MRN67890", "2020-01-02", "Roe^Rick", "ACC99999",
           "IMG0001", "IMG0002", "IMG_A", "IMG_B", "IMG_C", "notes_Doe", "export_", "inner_", "deeper_", "thumb_",
           "report_", "series_Roe"]
#: Name components looked for in DST's own file and folder names (short: names only, never in bytes).
PSEUDONYM = re.compile(r"2\.25\.\d{1,39}(\.dcm)?|[A-Z0-9]{16}")
NAME_PARTS = ["Doe", "John", "Smith", "Jane", "Roe", "Rick", "MRN", "ACC", "2019", "2020", "IMG", ".txt", ".json",
              ".png", ".pdf", ".zip", ".tar"]


def dicom(patient: str, mrn: str) -> bytes:
    """CT_small.dcm as a new object of ``patient`` (new UIDs, so every object is its own instance)."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID = patient, mrn
    ds.OtherPatientIDs = f"{mrn}-B"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_gz_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


PNG = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + b"\0" * 40
PDF = b"%PDF-1.4\n1 0 obj << /Title (Doe^John MRN12345) >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("release") / "src"
    day = root / "Doe^John_MRN12345" / "2019-03-04"
    day.mkdir(parents=True)
    (day / "IMG0001").write_bytes(dicom("Doe^John", "MRN12345"))
    (day / "IMG0002").write_bytes(dicom("Doe^John", "MRN12345"))
    (day / "meta.json").write_text(json.dumps({"patient": "Doe^John", "mrn": "MRN12345", "date": "2019-03-04"}))
    (day / "thumb_MRN12345.png").write_bytes(PNG)
    (root / "Doe^John_MRN12345" / "notes_Doe.txt").write_text("Doe^John MRN12345 seen 2019-03-04\n")
    (root / "Doe^John_MRN12345" / "report_Doe.pdf").write_bytes(PDF)
    deepest = zip_bytes({"deeper/IMG_D": dicom("Smith^Jane", "MRN67890")})
    inner = zip_bytes({"deep/IMG_B": dicom("Smith^Jane", "MRN67890"), "deeper_Smith.zip": deepest})
    outer = zip_bytes({"Smith^Jane/IMG_A": dicom("Smith^Jane", "MRN67890"), "readme_Smith^Jane.txt":
                       b"Smith^Jane MRN67890 2020-01-02\n", "inner_MRN67890.zip": inner})
    (root / "Smith^Jane_MRN67890").mkdir()
    (root / "Smith^Jane_MRN67890" / "export_2020-01-02.zip").write_bytes(outer)
    (root / "Roe^Rick_ACC99999").mkdir()
    (root / "Roe^Rick_ACC99999" / "series_Roe.tar.gz").write_bytes(
        tar_gz_bytes({"Roe^Rick/IMG_C": dicom("Roe^Rick", "ACC99999")}))
    return root


#: Inputs by what must become of them.
DICOM_INPUTS = ["Doe^John_MRN12345/2019-03-04/IMG0001", "Doe^John_MRN12345/2019-03-04/IMG0002",
                "Roe^Rick_ACC99999/series_Roe.tar.gz//Roe^Rick/IMG_C",
                "Smith^Jane_MRN67890/export_2020-01-02.zip//Smith^Jane/IMG_A",
                "Smith^Jane_MRN67890/export_2020-01-02.zip//inner_MRN67890.zip//deep/IMG_B"]
SIDECARS = ["Doe^John_MRN12345/2019-03-04/meta.json", "Doe^John_MRN12345/2019-03-04/thumb_MRN12345.png",
            "Doe^John_MRN12345/notes_Doe.txt", "Doe^John_MRN12345/report_Doe.pdf",
            "Smith^Jane_MRN67890/export_2020-01-02.zip//readme_Smith^Jane.txt"]
TOO_DEEP = "Smith^Jane_MRN67890/export_2020-01-02.zip//inner_MRN67890.zip//deeper_Smith.zip"


@pytest.fixture(scope="module")
def released(src: Path) -> tuple[subprocess.CompletedProcess, Path]:
    dst = src.parent / "share"
    return run_cli("run", str(src), str(dst), "--workers", "2", "-q", key=SECRET), dst


def tree(dst: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under DST but the audit (whose timings and run numbers differ)."""
    return {p.relative_to(dst).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(dst.rglob("*")) if p.is_file() and p.name != "audit.parquet"}


def audit_rows(dst: Path) -> list[tuple]:
    cols = ["object_id", "status", "stage", "reason", "output", "bytes_out", "out_hash", "content_hash"]
    return pl.read_parquet(dst / "_deidpipe" / "audit.parquet").select(cols).sort("object_id").rows()


def test_listing_opens_nested_archives_and_stops_one_level_down(src: Path) -> None:
    items = {i.relpath: i for i in iter_items(detect(src))}
    assert sorted(items) == sorted(DICOM_INPUTS + SIDECARS + [TOO_DEEP])
    assert items[TOO_DEEP].skip == REASON_NESTED_TOO_DEEP and not items[TOO_DEEP].quarantine
    spec = detect(src)
    for rel in DICOM_INPUTS:  # a worker reads a nested member by its listed name
        assert read_member(spec, items[rel])[128:132] == b"DICM"


def test_top_level_archives_open_one_level_of_nesting(src: Path, tmp_path: Path) -> None:
    outer = (src / "Smith^Jane_MRN67890" / "export_2020-01-02.zip").read_bytes()
    as_zip = tmp_path / "a.zip"
    as_zip.write_bytes(outer)
    as_tar = tmp_path / "a.tar.gz"
    as_tar.write_bytes(tar_gz_bytes({"export.zip": outer}))
    listed = {i.relpath: i for i in iter_items(detect(as_zip))}
    assert listed["inner_MRN67890.zip//deep/IMG_B"].skip is None  # depth 2: opened
    assert listed["inner_MRN67890.zip//deeper_Smith.zip"].skip == REASON_NESTED_TOO_DEEP  # depth 3: not
    assert read_member(detect(as_zip), listed["inner_MRN67890.zip//deep/IMG_B"])[128:132] == b"DICM"
    streamed = {i.relpath: i for i in iter_items(detect(as_tar))}
    assert streamed["export.zip//Smith^Jane/IMG_A"].data[128:132] == b"DICM"  # the bytes travel with the task
    assert streamed["export.zip//inner_MRN67890.zip"].skip == REASON_NESTED_TOO_DEEP


def test_what_looks_like_dicom() -> None:
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert looks_like_dicom(ct[:512]) and looks_like_dicom(b"\0" * 100)  # a preamble cut short
    assert looks_like_dicom(ct[132:644])  # no preamble: File Meta first
    for other in (PNG, PDF, b"Doe^John\n", b'{"a": 1}', zip_bytes({"a": b"b"})):
        assert not looks_like_dicom(other)
    assert archive_kind(ct[:512]) is None and archive_kind(zip_bytes({"a": b"b"})) == "zip"


def test_dst_holds_no_input_name_and_no_planted_value(released: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, dst = released
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    files = [p for p in dst.rglob("*") if p.is_file()]
    assert files
    for p in dst.rglob("*"):
        rel = p.relative_to(dst).as_posix()
        # Keyed pseudonyms (a 2.25 UID, an upper-case alphanumeric patient token) are HMAC output: their digits
        # and letters can spell "2019" or "ACC" by chance, and carry nothing of the input. Every other component
        # is searched.
        named = [c for c in rel.split("/") if not PSEUDONYM.fullmatch(c)]
        for part in NAME_PARTS:
            assert not any(part in c for c in named), rel
    for p in files:
        data = p.read_bytes()
        texts = [data]
        if p.suffix == ".parquet":
            texts.append(pl.read_parquet(p).write_csv().encode())
        for value in PLANTED:
            for text in texts:
                assert value.encode() not in text, (value, p.relative_to(dst).as_posix())
    # Only the de-identified objects and the keyed audit: no manifest, journal, run state or temporaries.
    assert sorted({p.suffix for p in files}) == [".dcm", ".parquet"]
    assert [p.relative_to(dst).as_posix() for p in files if p.suffix == ".parquet"] == ["_deidpipe/audit.parquet"]
    for value in PLANTED:
        assert value.encode() not in proc.stdout + proc.stderr


def test_sidecars_skipped_nested_members_written(released: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, dst = released
    key = ProjectKey(SECRET.encode())
    audit = pl.read_parquet(dst / "_deidpipe" / "audit.parquet")
    manifest = pl.read_parquet(default_state_dir(dst) / "manifest.parquet")
    by_path = {r["path"]: r for r in audit.join(manifest.select("object_id", "path"), on="object_id")
               .iter_rows(named=True)}
    assert len(by_path) == audit.height == manifest.height == len(DICOM_INPUTS) + len(SIDECARS) + 1
    for rel in DICOM_INPUTS:
        assert by_path[rel]["status"] == "written", rel
    for rel in SIDECARS:
        assert (by_path[rel]["status"], by_path[rel]["reason"]) == ("skipped", REASON_NOT_DICOM), rel
    assert (by_path[TOO_DEEP]["status"], by_path[TOO_DEEP]["reason"]) == ("skipped", REASON_NESTED_TOO_DEEP)
    assert len(list(dst.rglob("*.dcm"))) == len(DICOM_INPUTS)
    assert not (dst / "quarantine").exists() or not any((dst / "quarantine").iterdir())
    assert key.fingerprint() == json.loads((default_state_dir(dst) / "run.json").read_text())["key_fingerprint"]
    for p in dst.rglob("*.dcm"):
        ds = dcmread(p)
        assert str(ds.PatientName) not in ("Doe^John", "Smith^Jane", "Roe^Rick")


def test_resume_from_a_named_state_folder(src: Path, tmp_path: Path) -> None:
    key = ProjectKey(SECRET.encode())
    dst, state = tmp_path / "share", tmp_path / "keep-private" / "state"
    first = run(src, dst, POLICY, key=key, workers=1, state_dir=state)
    assert first.written == len(DICOM_INPUTS) and first.quarantined == 0 and first.manifest.parent == state
    assert not default_state_dir(dst).exists()
    reference, reference_audit = tree(dst), audit_rows(dst)
    # An interrupted run: the last journal lines lost, one output gone.
    journal = state / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:-2]))
    victim = sorted(dst.rglob("*.dcm"))[0]
    victim.unlink()
    with pytest.raises(Exception, match="--resume"):
        run(src, dst, POLICY, key=key, workers=1, state_dir=state)
    with pytest.raises(Exception, match="cannot resume: no run state"):
        run(src, dst, POLICY, key=key, workers=1, resume=True)  # the default state folder is not where it is
    resumed = run(src, dst, POLICY, key=key, workers=1, resume=True, state_dir=state)
    assert resumed.objects == first.objects and 0 < resumed.processed < first.objects
    assert tree(dst) == reference and audit_rows(dst) == reference_audit


def test_state_folder_inside_dst_or_src_is_refused(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    for state in (dst / "state", src / "state"):
        proc = run_cli("run", str(src), str(dst), "--state", str(state), "-q", key=SECRET)
        assert proc.returncode == 2, proc.stderr
        assert b"state folder" in proc.stderr and b"Traceback" not in proc.stderr
        assert not state.exists()
    linked = tmp_path / "linked"  # the default state folder beside DST is a link into SRC: refused the same
    (tmp_path / "linked.deidpipe-state").symlink_to(src / "not-there")
    proc = run_cli("run", str(src), str(linked), "-q", key=SECRET)
    assert proc.returncode == 2 and b"state folder" in proc.stderr
    assert not (src / "not-there").exists()
    proc = run_cli("run", str(src), str(tmp_path / "never-run"), "--resume", "-q", key=SECRET)
    assert proc.returncode == 2 and b"cannot resume: no run state" in proc.stderr


def test_keep_paths_mirrors_a_nested_member_under_its_archive(src: Path, tmp_path: Path) -> None:
    """``--keep-paths`` mirrors input names by request (the one exception to a shareable DST): a member of an
    archive goes under the archive's path, as a folder."""
    report = run(src, tmp_path / "kept", POLICY, key=ProjectKey(SECRET.encode()), workers=1, keep_paths=True)
    assert report.written == len(DICOM_INPUTS) and report.quarantined == 0
    written = sorted(p.relative_to(tmp_path / "kept").as_posix() for p in (tmp_path / "kept").rglob("*")
                     if p.is_file() and p.name != "audit.parquet")
    assert written == sorted(rel.replace("//", "/") for rel in DICOM_INPUTS)
