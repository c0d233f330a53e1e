"""DICOM series <-> volume for defacing (deidpipe.deface.series): real pydicom, real files, dciodvfy.

Synthetic heads (deidpipe.synth.heads, 2 mm) are written as MR series on a slice of the synthetic archive
(deidpipe.synth), saved in shuffled file order, read back, assembled, defaced and written back.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from deidpipe.deface import series as sv
from deidpipe.deface.errors import VolumeError
from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.synth import generate_archive
from deidpipe.synth.heads import make_head
from tests.helpers import dciodvfy_errors

GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The first MR slice of a synthetic archive, with a DeidentificationMethodCodeSequence of one item."""
    root = tmp_path_factory.mktemp("archive")
    generate_archive(root, patients=1, real_world=False)
    ds = read_dataset(next(p for p in sorted(root.rglob("*.dcm")) if "_MR" in p.parent.name))
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "113100", "DCM"
    item.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([item])
    return ds


def _write_shuffled(datasets: list[Dataset], folder: Path, seed: int = 0) -> list[Path]:
    """Write each slice under a random name; return the paths in shuffled order."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{n:04d}.dcm" for n in random.Random(seed).sample(range(10000), len(datasets))]
    paths = []
    for ds, name in zip(datasets, names, strict=True):
        write_dataset(ds, folder / name)
        paths.append(folder / name)
    random.Random(seed + 1).shuffle(paths)
    return paths


def _read(paths: list[Path]) -> list[Dataset]:
    return [read_dataset(p) for p in paths]


def _in_series_order(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI's array and affine in the order series_to_volume gives: slices ascending along the normal
    (row x column cosines), i.e. the third axis reversed when the affine is left-handed."""
    if np.linalg.det(affine[:3, :3]) > 0:
        return array, affine
    n = array.shape[2]
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, n - 1
    return array[:, :, ::-1], affine @ flip


@pytest.mark.parametrize(("orientation", "oblique"), [("LPS", True), ("LAS", False)])
def test_series_round_trip(template: Dataset, tmp_path: Path, orientation: str, oblique: bool) -> None:
    head = make_head(7, orientation=orientation, oblique=oblique, noise=True)
    data = np.asarray(head.image.dataobj)
    made = sv.volume_to_new_series(head.image, template)
    assert len(made) == data.shape[2] >= 50
    before_paths = _write_shuffled(made, tmp_path / "in")
    series = sv.series_to_volume(_read(before_paths))

    want, want_affine = _in_series_order(data, head.image.affine)
    assert np.array_equal(series.array, want)
    assert np.allclose(series.affine, want_affine, atol=1e-4)
    assert sorted(series.order) == list(range(len(made)))
    assert np.allclose(series.image().affine, want_affine, atol=1e-4)

    out = sv.volume_to_series(series.array, series)
    after_paths = []
    for k, (src, ds) in enumerate(zip(series.datasets, out, strict=True)):
        for keyword in GEOMETRY:
            assert ds[keyword].value == src[keyword].value, keyword
        assert np.array_equal(ds.pixel_array.T, want[:, :, k])
        assert ds.RecognizableVisualFeatures == "NO"
        codes = [(it.CodeValue, it.CodingSchemeDesignator) for it in ds.DeidentificationMethodCodeSequence]
        assert codes == [("113100", "DCM"), ("113102", "DCM")]
        after_paths.append(tmp_path / "out" / f"{k:04d}.dcm")
    (tmp_path / "out").mkdir()
    for ds, p in zip(out, after_paths, strict=True):
        write_dataset(ds, p)

    again = sv.series_to_volume(_read(after_paths))
    assert np.array_equal(again.array, want) and np.allclose(again.affine, series.affine, atol=1e-9)
    twice = sv.volume_to_series(again.array, again)  # marking twice does not duplicate the code
    assert [it.CodeValue for it in twice[0].DeidentificationMethodCodeSequence] == ["113100", "113102"]

    by_uid = {read_dataset(p, stop_before_pixels=True).SOPInstanceUID: p for p in before_paths}
    for k in (0, len(out) // 2, len(out) - 1):
        before = dciodvfy_errors(by_uid[out[k].SOPInstanceUID])
        assert dciodvfy_errors(after_paths[k]) - before == set()


def test_deface_series_zeroes_the_face(template: Dataset, tmp_path: Path) -> None:
    from deidpipe.deface import deface_volume

    head = make_head(11, orientation="RPI", oblique=True)
    paths = _write_shuffled(sv.volume_to_new_series(head.image, template), tmp_path / "in", seed=3)
    series = sv.series_to_volume(_read(paths))
    result = deface_volume(series.image())
    assert result.face_in_view and result.brain_voxels_changed == 0
    defaced = np.asarray(result.image.dataobj)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for k, ds in enumerate(sv.volume_to_series(defaced, series)):
        write_dataset(ds, out_dir / f"{k:04d}.dcm")
    back = sv.series_to_volume(_read(sorted(out_dir.glob("*.dcm"))))
    face, _ = _in_series_order(head.face, head.image.affine)
    brain, _ = _in_series_order(head.brain, head.image.affine)
    removed = float((back.array[face] == 0).mean())
    assert removed >= 0.98, removed
    assert np.array_equal(back.array[brain], series.array[brain])
    assert np.allclose(back.affine, series.affine, atol=1e-9)


def _small(template: Dataset, shape: tuple[int, int, int] = (12, 10, 6)) -> list[Dataset]:
    """A small oblique series (2 x 1.5 x 3 mm) of random stored values."""
    rng = np.random.default_rng(5)
    angle = np.deg2rad(17)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 1.5, 3.0])
    affine[:3, 3] = [-10.0, 20.0, 30.0]
    img = nib.Nifti1Image(rng.integers(0, 4000, shape).astype(np.int16), affine)
    return sv.volume_to_new_series(img, template)


def _refused(datasets: list[Dataset]) -> str:
    with pytest.raises(sv.SeriesError) as info:
        sv.series_to_volume(datasets)
    assert isinstance(info.value, VolumeError)
    assert str(info.value) == info.value.reason  # a fixed reason, no value from the file
    return info.value.reason


def _move(ds: Dataset, delta: tuple[float, float, float]) -> None:
    ds.ImagePositionPatient = [float(v) + d for v, d in zip(ds.ImagePositionPatient, delta, strict=True)]


def test_refusals(template: Dataset) -> None:
    good = _small(template)
    assert sv.series_to_volume(good).array.shape == (12, 10, 6)

    gap = [ds for n, ds in enumerate(good) if n != 3]
    assert _refused(gap) == sv.UNEVEN_SPACING

    mixed = copy.deepcopy(good)
    mixed[2].ImageOrientationPatient = ["1", "0", "0", "0", "0.9", "0.43588989435"]
    assert _refused(mixed) == sv.MIXED_ORIENTATION

    duplicate = copy.deepcopy(good)
    duplicate[4].ImagePositionPatient = duplicate[1].ImagePositionPatient
    assert _refused(duplicate) == sv.DUPLICATE_POSITION

    rows = copy.deepcopy(good)
    rows[0].Rows = 9
    rows[0].PixelData = rows[0].PixelData[: 9 * 12 * 2]
    assert _refused(rows) == sv.DIFFERING_FORMAT

    stacks = copy.deepcopy(good)
    for ds in stacks[3:]:
        _move(ds, (5.0, 0.0, 0.0))  # a second stack beside the first
    assert _refused(stacks) == sv.SEVERAL_STACKS

    missing = copy.deepcopy(good)
    del missing[1].PixelSpacing
    assert _refused(missing) == sv.MISSING_GEOMETRY
    assert _refused(good[:2]) == sv.TOO_FEW
    frames = copy.deepcopy(good)
    frames[0].NumberOfFrames = 2
    assert _refused(frames) == sv.MULTI_FRAME
    rescale = copy.deepcopy(good)
    rescale[0].RescaleSlope, rescale[0].RescaleIntercept = "2", "0"
    assert _refused(rescale) == sv.DIFFERING_RESCALE

    # within tolerance (0.01 mm or 1% of the 3 mm spacing): accepted
    jitter = copy.deepcopy(good)
    normal = np.cross(*np.array([float(v) for v in good[0].ImageOrientationPatient]).reshape(2, 3))
    _move(jitter[2], tuple(normal * 0.02))
    assert sv.series_to_volume(jitter).array.shape == (12, 10, 6)

    series = sv.series_to_volume(good)
    with pytest.raises(sv.SeriesError, match="stored bit range"):
        sv.volume_to_series(series.array.astype(np.int32) + 70000, series)
    with pytest.raises(sv.SeriesError, match="shape"):
        sv.volume_to_series(series.array[:, :, 1:], series)


def test_compressed_input_is_written_as_explicit_little_endian(template: Dataset, tmp_path: Path) -> None:
    good = _small(template)
    for ds in good:
        ds.compress(RLELossless)
    paths = _write_shuffled(good, tmp_path / "in")
    series = sv.series_to_volume(_read(paths))
    assert all(ds.file_meta.TransferSyntaxUID == RLELossless for ds in series.datasets)
    zeroed = series.array.copy()
    zeroed[:4] = 0
    out = sv.volume_to_series(zeroed, series)
    for k, ds in enumerate(out):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        write_dataset(ds, tmp_path / f"{k}.dcm")
        back = read_dataset(tmp_path / f"{k}.dcm")
        assert np.array_equal(back.pixel_array.T, zeroed[:, :, k])
        assert back.ImagePositionPatient == series.datasets[k].ImagePositionPatient


def _enhanced(template: Dataset) -> tuple[Dataset, list[Dataset]]:
    """An Enhanced MR Image object holding the small series, its frames in shuffled order; and the slices."""
    slices = _small(template)
    ds = copy.deepcopy(slices[0])
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "SliceLocation", "InstanceNumber", "ReferencedImageSequence", "SourceImageSequence"):
        if keyword in ds:
            del ds[keyword]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    shared, measures, plane = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = slices[0].PixelSpacing, slices[0].SliceThickness
    plane.ImageOrientationPatient = slices[0].ImageOrientationPatient
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([plane])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = random.Random(9).sample(range(len(slices)), len(slices))
    per_frame = []
    for n in frames:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = slices[n].ImagePositionPatient
        item.PlanePositionSequence = Sequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = b"".join(slices[n].PixelData for n in frames)
    return ds, slices


def test_enhanced_multiframe(template: Dataset, tmp_path: Path) -> None:
    ds, slices = _enhanced(template)
    write_dataset(ds, tmp_path / "in.dcm")
    series = sv.series_to_volume([read_dataset(tmp_path / "in.dcm")])
    plain = sv.series_to_volume(slices)
    assert series.multiframe and np.array_equal(series.array, plain.array)
    assert np.allclose(series.affine, plain.affine, atol=1e-9)
    zeroed = series.array.copy()
    zeroed[:3, :4] = 0
    (out,) = sv.volume_to_series(zeroed, series)
    write_dataset(out, tmp_path / "out.dcm")
    back = read_dataset(tmp_path / "out.dcm")
    assert back.PerFrameFunctionalGroupsSequence == ds.PerFrameFunctionalGroupsSequence
    assert back.SharedFunctionalGroupsSequence == ds.SharedFunctionalGroupsSequence
    assert np.array_equal(sv.series_to_volume([back]).array, zeroed)
    assert back.RecognizableVisualFeatures == "NO"
    assert dciodvfy_errors(tmp_path / "out.dcm") - dciodvfy_errors(tmp_path / "in.dcm") == set()

    duplicate = copy.deepcopy(ds)
    duplicate.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient = \
        ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    assert _refused([duplicate]) == sv.DUPLICATE_POSITION
    del duplicate.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    assert _refused([duplicate]) == sv.MISSING_GEOMETRY
