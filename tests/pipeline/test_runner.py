"""`deidpipe run`: identical trees for any executor, resume, quarantine, archives as input (kill -9:
tests/e2e/test_crash.py).

Real files from the synthetic archive generator, the real header engine, a real process pool and a real Dask
LocalCluster; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import polars as pl
import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.keys import ProjectKey
from deidpipe.pipeline import iter_run, run
from deidpipe.pipeline.state import default_state_dir
from deidpipe.policy import Policy
from deidpipe.synth import generate_archive
from tests.helpers import run_cli

SECRET = "pipeline-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def key() -> ProjectKey:
    return ProjectKey(SECRET.encode())


@pytest.fixture(scope="module")
def archive(small_archive) -> tuple[Path, object]:
    return small_archive


@pytest.fixture(scope="module")
def reference(archive, key, tmp_path_factory) -> dict[str, str]:
    """The tree of a clean single-worker run: what every other way of running must reproduce."""
    src, _ = archive
    dst = tmp_path_factory.mktemp("ref") / "out"
    report = run(src, dst, Policy.basic(), key=key, workers=1)
    assert report.ok and report.written == report.objects > 0
    return tree(dst)


def tree(dst: Path) -> dict[str, str]:
    """relative path -> sha256 of every output file (bookkeeping under _deidpipe excluded)."""
    out = {}
    for p in sorted(dst.rglob("*")):
        rel = p.relative_to(dst).as_posix()
        if p.is_file() and not rel.startswith("_deidpipe/"):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def secrets_of(answer) -> set[bytes]:
    """Original identifying strings long enough to search for without false hits."""
    return {p for p in answer.search_patterns() if len(p) >= 6}


# -- the same tree whatever runs it ---------------------------------------------------------------------------
def test_reference_tree_is_pseudonymised(archive, key, reference, tmp_path):
    src, answer = archive
    dcm = [p for p in reference if p.endswith(".dcm")]
    assert len(dcm) == len(answer.files())
    for rel in dcm:
        patient, study, series, instance = rel.split("/")
        assert study.startswith("2.25.") and series.startswith("2.25.") and instance.startswith("2.25.")
    originals = {p.patient_id for p in answer.patients}
    assert not originals & {rel.split("/")[0] for rel in dcm}


def test_two_workers_and_dask_give_identical_trees(archive, key, reference, tmp_path):
    src, _ = archive
    r2 = run(src, tmp_path / "two", Policy.basic(), key=key, workers=2)
    assert (r2.executor, r2.workers) == ("local", 2)
    assert tree(tmp_path / "two") == reference
    rd = run(src, tmp_path / "dask", Policy.basic(), key=key, workers=2, executor="dask")
    assert rd.executor == "dask"
    assert tree(tmp_path / "dask") == reference


def test_zip_and_tar_inputs_equal_the_folder(archive, key, reference, tmp_path):
    src, _ = archive
    files = sorted(p for p in src.rglob("*") if p.is_file())
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            zf.write(p, p.relative_to(src).as_posix())
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tf:
        tf.add(src, arcname="archive")
    rz = run(tmp_path / "a.zip", tmp_path / "zip", Policy.basic(), key=key, workers=1)
    assert rz.source_kind == "zip" and rz.ok
    assert tree(tmp_path / "zip") == reference
    rt = run(tmp_path / "a.tar.gz", tmp_path / "tar", Policy.basic(), key=key, workers=1)
    assert rt.source_kind == "tar" and rt.ok
    assert tree(tmp_path / "tar") == reference


# -- crash and resume ---------------------------------------------------------------------------------------------
def test_resume_refuses_another_key(archive, key, tmp_path):
    src, _ = archive
    run(src, tmp_path / "out", Policy.basic(), key=key, workers=1)
    with pytest.raises(Exception, match="different key"):
        run(src, tmp_path / "out", Policy.basic(), key=ProjectKey(b"another-secret-0123456789"), workers=1,
            resume=True)
    again = run(src, tmp_path / "out", Policy.basic(), key=key, workers=1, resume=True)
    assert again.resumed == again.objects and again.processed == 0


# -- bad inputs -----------------------------------------------------------------------------------------------
def _dicomdir(path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.FileSetID = "MIXED"
    ds.DirectoryRecordSequence = []
    write_dataset(ds, path)


def test_mixed_folder_quarantines_bad_files_and_writes_every_good_one(key, tmp_path):
    answer = generate_archive(tmp_path / "src", patients=1, seed=9, real_world=False)
    (tmp_path / "src" / "answer_key.json").replace(tmp_path / "answer_key.json")
    src = tmp_path / "src"
    good = answer.files()
    victim = src / good[0]
    bad = src / "Doe_John_notes"  # a file name that carries a name: it must not reach any output
    bad.mkdir()
    (bad / "README.txt").write_text("not DICOM at all\n")
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "truncated.dcm").write_bytes(victim.read_bytes()[: victim.stat().st_size * 2 // 3])
    (bad / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    (bad / "dangling.dcm").symlink_to(tmp_path / "nowhere.dcm")
    _dicomdir(src / "DICOMDIR")
    # A copy of a good file elsewhere in the tree: the same SOP instance, written once.
    shutil.copy(src / good[1], bad / "copy.dcm")
    n_bad = 4  # README.txt is not DICOM: skipped, not quarantined

    dst = tmp_path / "out"
    res = run_cli("run", str(src), str(dst), "--workers", "2", key=SECRET, timeout=240)
    assert res.returncode == 1, res.stderr.decode(errors="replace")
    out = res.stdout + res.stderr
    assert b"quarantined" in out
    for secret in secrets_of(answer) | {b"Doe_John", b"README", b"truncated.dcm"}:
        assert secret not in out

    records = sorted((dst / "quarantine").glob("*.json"))
    assert len(records) == n_bad
    stages = sorted(json.loads(r.read_text())["stage"] for r in records)
    assert stages.count("index") >= 2  # empty, garbage (DICM, no data set); truncated may fail later
    for r in records:
        text = r.read_bytes()
        assert b"Doe_John" not in text and b"README" not in text and b".dcm" not in text
    written = [p for p in dst.rglob("*.dcm") if "quarantine" not in p.parts]
    assert len(written) == len(good)
    for p in written:
        read_dataset(p)

    audit = pl.read_parquet(dst / "_deidpipe" / "audit.parquet")
    assert audit.height == len(good) + n_bad + 3
    assert dict(audit["status"].value_counts().iter_rows()) == {
        "written": len(good), "quarantined": n_bad, "skipped": 2, "duplicate": 1}
    assert set(audit.filter(pl.col("status") == "skipped")["reason"]) >= {"not DICOM"}
    blob = (dst / "_deidpipe" / "audit.parquet").read_bytes() + b"".join(r.read_bytes() for r in records)
    for secret in secrets_of(answer) | {b"Doe_John", b"README"}:
        assert secret not in blob

    assert not (dst / "_deidpipe" / "manifest.parquet").exists()  # input paths stay out of DST
    manifest = pl.read_parquet(default_state_dir(dst) / "manifest.parquet")
    assert manifest.height == audit.height
    originals = {st.study_instance_uid for p in answer.patients for st in p.studies}
    assert not originals & set(manifest["study_uid"].drop_nulls())
    assert {key.uid(u) for u in originals} == set(manifest["study_uid"].drop_nulls())
    assert set(manifest.filter(pl.col("kind") == "invalid")["reason"]) >= {"is empty"}

    ok = run_cli("run", str(src), str(tmp_path / "out2"), "--workers", "1", "--allow-quarantine", "-q", key=SECRET,
                 timeout=240)
    assert ok.returncode == 0, ok.stderr.decode(errors="replace")
    assert tree(tmp_path / "out2") == tree(dst)


def test_iter_run_streams_results_and_keep_paths(archive, key, tmp_path):
    src, answer = archive
    it = iter_run(src, tmp_path / "out", Policy.basic(), key=key, workers=1, keep_paths=True)
    results = list(it)
    assert it.report is not None and it.report.written == len(results) == len(answer.files())
    assert sorted(r.output for r in results) == sorted(answer.files())
    assert all(r.timings_ms.get("header", 0) > 0 and r.actions for r in results)


# -- the index row and the execute pass's check that the input did not change ------------------------------------
def test_index_row_matches_a_full_read_and_a_changed_input_is_caught(archive, key, tmp_path):
    import pydicom

    from deidpipe.pipeline.execute import WorkContext, exec_task
    from deidpipe.pipeline.index import index_item
    from deidpipe.pipeline.plan import ExecItem, ExecTask
    from deidpipe.pipeline.source import detect, iter_items

    src, answer = archive
    work = tmp_path / "src"
    shutil.copytree(src, work)
    spec = detect(work)
    items = {i.relpath: i for i in iter_items(spec)}
    rels = answer.files()[:3]
    rows = {}
    for rel in rels:
        row = rows[rel] = index_item(spec, key, items[rel])
        data = (work / rel).read_bytes()
        ds = pydicom.dcmread(work / rel)
        assert row["kind"] == "dicom" and row["size"] == len(data)
        assert row["content_hash"] == key.digest("input-content", data).hex()[:32]
        assert row["mtime_ns"] == (work / rel).stat().st_mtime_ns
        assert row["instance_uid"] == key.uid(ds.SOPInstanceUID)
        assert row["series_uid"] == key.uid(ds.SeriesInstanceUID)
        assert row["study_uid"] == key.uid(ds.StudyInstanceUID)
        assert (row["modality"], row["rows"], row["columns"]) == (ds.Modality, ds.Rows, ds.Columns)

    same, changed, touched = rels
    data = bytearray((work / changed).read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    (work / changed).write_bytes(bytes(data))
    os.utime(work / touched, ns=(time.time_ns(), time.time_ns() + 10**9))  # stat differs, bytes do not

    ctx = WorkContext(spec, str(tmp_path / "out"), key, Policy.basic(pixels="off"), "pseudonym")
    task = ExecTask(None, ("header",), [ExecItem(rows[r]["object_id"], items[r], rows[r]["content_hash"], None,
                                                 rows[r]["mtime_ns"]) for r in rels])
    results = {r.object_id: r for r in exec_task(ctx, task)}
    by_rel = {rel: results[rows[rel]["object_id"]] for rel in rels}
    assert by_rel[same].status == "written" and by_rel[same].content_hash == rows[same]["content_hash"]
    assert by_rel[touched].status == "written" and by_rel[touched].content_hash == rows[touched]["content_hash"]
    assert (by_rel[changed].status, by_rel[changed].stage) == ("quarantined", "read")
    assert by_rel[changed].reason == "input changed after it was indexed"


def test_encode_dataset_pieces_equal_pydicom_bytes(archive, key):
    """The writer's pieces (native pixel data uncopied) join to the very bytes pydicom writes."""
    import io

    from deidpipe.dicomio import encode_dataset
    from deidpipe.header.engine import deidentify

    src, answer = archive
    split = 0
    for rel in answer.files():
        read = read_dataset(src / rel)
        for ds in (read, deidentify(read, Policy.basic(pixels="off"), key).dataset):
            ref = io.BytesIO()
            write_dataset(ds, ref)
            parts = encode_dataset(ds)
            assert b"".join(parts) == ref.getvalue()
            split += len(parts) > 1
    assert split > 0


def test_folder_listing_order_and_links(tmp_path: Path) -> None:
    """Files by sorted name, a folder's files before its subfolders; a linked file inside the tree is listed, a
    linked folder is listed as skipped and not walked (no loops, nothing outside the tree), a dangling link is
    listed to be quarantined (tests/e2e/test_hostile_sources.py has the hostile cases)."""
    from deidpipe.pipeline.source import REASON_LINK_DANGLING, REASON_LINK_OUTSIDE, _iter_folder

    root = tmp_path / "src"
    (root / "b").mkdir(parents=True)
    (root / "a").mkdir()
    (root / "z.dcm").write_bytes(b"12")
    (root / "a" / "y.dcm").write_bytes(b"123")
    (root / "b" / "x.dcm").write_bytes(b"1")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(b"1234")
    (root / "linked_folder").symlink_to(outside)
    (root / "linked_file.dcm").symlink_to(root / "z.dcm")
    (root / "dangling.dcm").symlink_to(tmp_path / "nowhere")
    listed = [(i.relpath, i.size, i.skip) for i in _iter_folder(root)]
    assert listed == [("dangling.dcm", 0, REASON_LINK_DANGLING), ("linked_file.dcm", 2, None),
                      ("linked_folder", 0, REASON_LINK_OUTSIDE), ("z.dcm", 2, None), ("a/y.dcm", 3, None),
                      ("b/x.dcm", 1, None)]
