"""The leak search over a whole tree (deidpipe.synth.search), the one ``make demo`` runs on the output folder."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from deidpipe.synth.payloads import make_pdf
from deidpipe.synth.search import Hit, SearchStats, read_member, search_bytes, search_tree

SECRET = "Quintessa Vandermolen"


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "a.bin").write_bytes(b"nothing here" * 100)
    return tmp_path


def test_finds_a_value_only_inside_a_pdf_flate_stream(tree: Path) -> None:
    pdf = make_pdf(title="Report", author="Dr X", plain_lines=["nothing"], compressed_lines=[SECRET])
    assert SECRET.encode() not in pdf  # compressed: a plain byte search misses it
    (tree / "doc.pdf").write_bytes(pdf)
    (tree / "wrapped.dcm").write_bytes(b"\0" * 128 + b"DICM" + pdf)  # a PDF inside another file counts too
    hits = search_tree(tree, [SECRET.lower().encode()])
    assert {(h.where, h.part) for h in hits} == {("doc.pdf", "flate"), ("wrapped.dcm", "flate")}


def test_finds_a_value_in_a_member_of_a_zip_inside_a_zip(tree: Path) -> None:
    inner = _zip({"deep/obj.dcm": b"xx" + SECRET.encode("utf-8") + b"yy"})
    (tree / "clean" / "outer.zip").write_bytes(_zip({"inner.zip": inner, "other.txt": b"fine"}))
    hits = search_tree(tree, [SECRET.encode()])
    assert hits == [Hit("clean/outer.zip!/inner.zip!/deep/obj.dcm", "bytes", SECRET.encode())]
    assert read_member(tree, hits[0].where).startswith(b"xx" + SECRET.encode())


def test_finds_a_value_in_folder_and_member_names_case_insensitively(tree: Path) -> None:
    folder = tree / "Vandermolen^Quintessa_H1234567" / "20190304"
    folder.mkdir(parents=True)
    (folder / "x.txt").write_bytes(b"ok")
    (tree / "m.zip").write_bytes(_zip({"VANDERMOLEN.dcm": b"ok"}))
    hits = search_tree(tree, [b"vandermolen", b"H1234567"])
    assert {(h.where, h.part, h.pattern) for h in hits} == {
        ("Vandermolen^Quintessa_H1234567", "name", b"vandermolen"),
        ("Vandermolen^Quintessa_H1234567", "name", b"H1234567"),
        ("m.zip!/VANDERMOLEN.dcm", "name", b"vandermolen"),
        ("m.zip", "bytes", b"vandermolen"),  # a zip's raw bytes hold its members' names
    }


def test_tar_gzip_and_parquet_are_opened(tree: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = SECRET.encode()
        info = tarfile.TarInfo("note.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    (tree / "b.tar.gz").write_bytes(buf.getvalue())
    pq.write_table(pa.table({"path": [f"/in/{SECRET}/1.dcm"] * 50}), tree / "manifest.parquet",
                   compression="zstd")
    stats = SearchStats()
    hits = search_tree(tree, [SECRET.encode()], stats)
    assert {(h.where, h.part) for h in hits} >= {("b.tar.gz", "inflated"), ("b.tar.gz!/note.txt", "bytes"),
                                                  ("manifest.parquet", "parquet")}
    assert {h.where for h in hits} == {"b.tar.gz", "b.tar.gz!/note.txt", "manifest.parquet"}
    assert any(h.part == "parquet" for h in hits) and stats.parquet == 1 and stats.members == 1
    assert stats.files == 3 and stats.entries == 4


def test_clean_data_gives_no_hit(tree: Path) -> None:
    assert search_tree(tree, [SECRET.encode()]) == []
    assert search_bytes(b"PK\x03\x04 broken zip", [SECRET.encode()]) == []
    assert search_bytes(b"stream\nnot zlib\nendstream", [SECRET.encode()]) == []
