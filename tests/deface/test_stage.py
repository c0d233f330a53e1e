"""The defacing stage in ``deidpipe run`` (issue 10): DICOM head series from ``deidpipe synth --heads`` through the
real pipeline (index, plan, header, deface, sink), checked against the heads' ground-truth masks; dciodvfy on the
output; broken series quarantined with their reason; a zip archive whose series members are interleaved.
"""

from __future__ import annotations

import random
import zipfile
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import polars as pl
import pytest
from pydicom.uid import generate_uid

from deidpipe.deface import series as sv
from deidpipe.deface.select import head_hint, series_hint, series_needs_deface
from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.keys import ProjectKey
from deidpipe.pipeline import run
from deidpipe.policy import Policy
from deidpipe.synth.heads import write_heads
from tests.helpers import dciodvfy_errors

KEY = ProjectKey(b"deface-pipeline-test-key-0123456789")


def _in_series_order(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A NIfTI array in the order series_to_volume gives (third axis reversed for a left-handed affine)."""
    return array if np.linalg.det(affine[:3, :3]) > 0 else array[:, :, ::-1]


def _copy_as_new_series(src: Path, dst: Path, change=None, drop: int | None = None) -> None:
    """The series in ``src`` as another series (new Series/SOP Instance UIDs), optionally without slice ``drop``
    (a gap) and with ``change(n, ds)`` applied to each slice."""
    dst.mkdir(parents=True)
    series_uid = generate_uid(entropy_srcs=[str(dst)])
    for n, path in enumerate(sorted(src.glob("*.dcm"))):
        if n == drop:
            continue
        ds = read_dataset(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(dst), str(n)])
        if change is not None:
            change(n, ds)
        write_dataset(ds, dst / path.name)


def _mixed(n: int, ds) -> None:
    if n % 2:  # every other slice turned by 90 degrees in plane: two orientations in one series
        iop = [float(v) for v in ds.ImageOrientationPatient]
        ds.ImageOrientationPatient = iop[3:] + [-v for v in iop[:3]]


def _knee(n: int, ds) -> None:
    ds.BodyPartExamined, ds.SeriesDescription = "KNEE", "T1 SAG"


def _unknown_region(ds) -> None:
    del ds.BodyPartExamined
    ds.SeriesDescription = "Follow-up"


def _unknown_mixed(n: int, ds) -> None:
    _mixed(n, ds)
    _unknown_region(ds)


def _noise(n: int, ds) -> None:
    """A volume of noise where the head was, region unknown: the registration finds no head."""
    _unknown_region(ds)
    rng = np.random.default_rng(n)
    ds.PixelData = rng.integers(0, 3000, int(ds.Rows) * int(ds.Columns), dtype=np.uint16).astype("<u2").tobytes()


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Four synth heads as DICOM series (full RAS oblique, full LPS, face out of view, brain only), plus copies
    of the LPS head: with a gap, with mixed orientations, with the knee as body part, with mixed orientations
    and no word of its region, and noise in place of the head with no word of its region."""
    root = tmp_path_factory.mktemp("heads")
    entries = write_heads(root, count=4, seed=7)
    src = root / "dicom"
    _copy_as_new_series(src / "head001", src / "gap", drop=20)
    _copy_as_new_series(src / "head001", src / "mixed", change=_mixed)
    _copy_as_new_series(src / "head001", src / "knee", change=_knee)
    _copy_as_new_series(src / "head001", src / "unknown_mixed", change=_unknown_mixed)
    _copy_as_new_series(src / "head001", src / "noise", change=_noise)
    return root, entries


@pytest.fixture(scope="module")
def output(heads, tmp_path_factory) -> tuple[Path, object]:
    root, _ = heads
    dst = tmp_path_factory.mktemp("run") / "out"
    report = run(root / "dicom", dst, Policy.basic(), key=KEY, workers=2)
    return dst, report


def _series_of(folder: Path) -> dict[str, list[Path]]:
    by = defaultdict(list)
    for p in sorted(folder.rglob("*.dcm")):
        if "_deidpipe" not in p.parts:
            by[str(read_dataset(p, stop_before_pixels=True).SeriesInstanceUID)].append(p)
    return by


def _audit(dst: Path) -> pl.DataFrame:
    return pl.read_parquet(dst / "_deidpipe" / "audit.parquet")


def test_head_hint_and_selection() -> None:
    assert head_hint("HEAD", []) == "head" and head_hint(b"BRAIN ", []) == "head"
    assert head_hint("KNEE", ["T1 SAG"]) == "other"
    assert head_hint("", ["Sag T1 MPRAGE"]) == "head" and head_hint(None, ["t1_mprage_sag"]) == "head"
    assert head_hint("NECK", []) is None and head_hint(None, ["Follow-up"]) is None
    assert head_hint(None, ["OVERHEAD"]) is None  # words match at their start only
    assert series_hint(["other", None]) is None and series_hint(["other", "head"]) == "head"
    args = (["MR"] * 2, ["other"] * 2, [256, 256], [256, 256])
    assert not series_needs_deface("auto", *args) and series_needs_deface("all", *args)
    assert not series_needs_deface("off", ["MR"], ["head"], [256], [256])
    assert not series_needs_deface("auto", ["CR"], ["head"], [256], [256])
    assert not series_needs_deface("auto", ["MR"], ["head"], [16], [16])  # too coarse to show a face
    assert Policy.from_mapping({"deface": False}).deface == "off"
    with pytest.raises(Exception, match="deface must be"):
        Policy.from_mapping({"deface": "maybe"})


@pytest.mark.slow
def test_run_defaces_head_series(heads, output) -> None:
    root, entries = heads
    dst, report = output
    src = root / "dicom"
    audit = _audit(dst)
    quarantined = audit.filter(pl.col("status") == "quarantined")
    # the gap and the mixed series are quarantined whole, at the deface stage, with a fixed reason
    n_gap, n_mixed = len(list((src / "gap").glob("*.dcm"))), len(list((src / "mixed").glob("*.dcm")))
    assert quarantined.height == n_gap + n_mixed == report.quarantined
    assert set(quarantined["stage"]) == {"deface"}
    assert set(quarantined["reason"]) == {sv.UNEVEN_SPACING, sv.MIXED_ORIENTATION}
    assert report.actions["defaced"] == entries[0]["slices"] + entries[1]["slices"]
    assert report.actions["deface_no_face_in_view"] == entries[2]["slices"] + entries[3]["slices"]
    # a series that says nothing of its region is taken on suspicion; failing, it is no proof of a face
    assert report.actions["deface_not_a_volume"] == len(list((src / "unknown_mixed").glob("*.dcm")))
    assert report.actions["deface_no_head_found"] == len(list((src / "noise").glob("*.dcm")))
    assert "defaced" not in "".join(audit.filter(pl.col("output").is_null())["actions"].to_list())

    out_series = _series_of(dst)
    in_series = {name: sorted((src / name).glob("*.dcm")) for name in ("head000", "head001", "head002", "head003")}
    # the same key maps each input series to one output series
    for n, entry in enumerate(entries):
        before = [read_dataset(p) for p in in_series[f"head{n:03d}"]]
        uid = KEY.uid(str(before[0].SeriesInstanceUID))
        assert uid != str(before[0].SeriesInstanceUID) and uid in out_series
        after = [read_dataset(p) for p in out_series[uid]]
        vol_in, vol_out = sv.series_to_volume(before), sv.series_to_volume(after)
        assert np.allclose(vol_in.affine, vol_out.affine, atol=1e-9)  # geometry unchanged
        for a, b in zip(vol_in.datasets, vol_out.datasets, strict=True):
            for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
                assert a[keyword].value == b[keyword].value
        brain = _in_series_order(np.asarray(nib.load(root / entry["brain"]).dataobj) > 0, vol_in.affine)
        face = _in_series_order(np.asarray(nib.load(root / entry["face"]).dataobj) > 0, vol_in.affine)
        assert np.array_equal(vol_in.array[brain], vol_out.array[brain])  # not one brain voxel changed
        codes = {str(it.CodeValue) for it in vol_out.datasets[0].DeidentificationMethodCodeSequence}
        if entry["kind"] == "full":
            assert float((vol_out.array[face] == 0).mean()) >= 0.98
            assert {"113100", "113102"} <= codes
            assert all(ds.RecognizableVisualFeatures == "NO" for ds in after)
        else:  # face out of view, brain only: the voxels pass unchanged and the audit says so
            assert np.array_equal(vol_in.array, vol_out.array)
            assert "113102" not in codes
    # auto leaves a series whose body part is another region alone, face and all
    knee_in = [read_dataset(p) for p in sorted((src / "knee").glob("*.dcm"))]
    knee_out = [read_dataset(p) for p in out_series[KEY.uid(str(knee_in[0].SeriesInstanceUID))]]
    assert np.array_equal(sv.series_to_volume(knee_out).array, sv.series_to_volume(knee_in).array)

    # dciodvfy: no error in a defaced slice that its input did not have
    by_instance = {KEY.uid(str(read_dataset(p, stop_before_pixels=True).SOPInstanceUID)): p
                   for p in in_series["head001"]}
    uid = KEY.uid(str(read_dataset(in_series["head001"][0], stop_before_pixels=True).SeriesInstanceUID))
    for p in out_series[uid][:: max(1, len(out_series[uid]) // 3)]:
        source = by_instance[str(read_dataset(p, stop_before_pixels=True).SOPInstanceUID)]
        assert dciodvfy_errors(p) - dciodvfy_errors(source) == set()


@pytest.mark.slow
def test_zip_with_interleaved_series_equals_the_folder(heads, output, tmp_path) -> None:
    """A streamed source whose members of two series alternate: each series is gathered whole before the
    defacing stage, and the output is the folder run's, byte for byte."""
    root, _ = heads
    dst, _ = output
    src = root / "dicom"
    members = [p for name in ("head001", "gap") for p in sorted((src / name).glob("*.dcm"))]
    random.Random(1).shuffle(members)
    with zipfile.ZipFile(tmp_path / "heads.zip", "w") as zf:
        for p in members:
            zf.write(p, p.relative_to(src).as_posix())
    report = run(tmp_path / "heads.zip", tmp_path / "zip", Policy.basic(), key=KEY, workers=1, chunk=8)
    assert report.source_kind == "zip"
    assert report.actions["defaced"] == len(list((src / "head001").glob("*.dcm")))
    assert report.quarantined == len(list((src / "gap").glob("*.dcm")))
    written = _audit(tmp_path / "zip").filter(pl.col("status") == "written")
    for rel in written["output"]:
        assert (tmp_path / "zip" / rel).read_bytes() == (dst / rel).read_bytes()
