"""Defacing (deidpipe.deface) on synthetic heads with known face and brain (deidpipe.synth.heads).

Real SimpleITK, nibabel and pydeface template data throughout. Each registration takes a few seconds at 3 mm,
so the heads are 2 mm volumes; ``DEIDPIPE_DEFACE_HEADS`` (default 20, the issue's check: every storage
orientation two or three times, half of them oblique, each under its own random pose, size and contrast) sets
how many random heads the main test defaces; its figures are in docs/deface.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deidpipe.deface import DefaceError, RegistrationError, TemplateError, deface_file, deface_volume
from deidpipe.deface.face_finding import VIEWS
from deidpipe.deface.qc import QCResult
from deidpipe.deface.volume import canonical
from deidpipe.synth.heads import ORIENTATIONS, make_head
from tests.helpers import run_cli

HEADS = int(os.environ.get("DEIDPIPE_DEFACE_HEADS", "20"))
# Every storage orientation in turn, alternately straight and oblique; seeds fixed so a failure reproduces.
CASES = [(100 + n, ORIENTATIONS[n % len(ORIENTATIONS)], n % 2 == 1) for n in range(HEADS)]


def _data(img) -> np.ndarray:
    return np.asarray(img.dataobj)


def test_template_is_checked_by_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    from deidpipe.deface import template

    t = template.load_template()
    assert t.face_core.any() and t.brain.any() and t.head.any()
    assert not (t.face_core & t.brain).any()
    # about 1.1-1.5 litres: a brain, not a head or a ventricle
    assert 1.0e6 < t.brain.sum() * t.voxel_mm3 < 1.6e6
    monkeypatch.setitem(template.SHA256, template.FACEMASK_FILE, "0" * 64)
    with pytest.raises(TemplateError, match="differs from the recorded SHA-256"):
        template._read(template.FACEMASK_FILE)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_synth_storage_orientation_and_ras_round_trip(orientation: str) -> None:
    head = make_head(1, orientation=orientation, oblique=False, noise=False)
    assert "".join(nib.aff2axcodes(head.image.affine)) == orientation
    can = canonical(head.image)
    assert "".join(nib.aff2axcodes(can.affine)) == "RAS"
    assert np.array_equal(can.to_original(can.data), _data(head.image).astype(np.float32))
    assert head.face.sum() > 10_000 and head.brain.sum() > 100_000 and not (head.face & head.brain).any()


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "orientation", "oblique"), CASES,
                         ids=[f"{s}-{o}{'-oblique' if b else ''}" for s, o, b in CASES])
def test_defaces_synth_head(seed: int, orientation: str, oblique: bool) -> None:
    head = make_head(seed, orientation=orientation, oblique=oblique)
    before = _data(head.image)
    result = deface_volume(head.image)
    after = _data(result.image)
    assert after.shape == before.shape and after.dtype == before.dtype
    assert np.allclose(result.image.affine, head.image.affine)
    removed = float(((after == 0) & head.face).sum() / head.face.sum())
    changed = after != before
    assert removed >= 0.98, removed
    assert head.ears is not None and head.ears.sum() > 100  # the pinnae go too (ears=True by default)
    assert float(((after == 0) & head.ears).sum() / head.ears.sum()) >= 0.98
    assert int((changed & head.brain).sum()) == 0
    assert result.brain_voxels_changed == 0
    assert not (changed & result.protected).any()
    assert not (changed & ~result.face_mask).any()  # only the face region is ever touched
    assert result.face_in_view and result.changed and result.reason == "defaced"
    assert result.face_voxels_removed == int(changed.sum())
    assert result.qc is not None and result.qc.passed and result.qc.face_before  # QC saw the face, then none
    assert isinstance(result.qc, QCResult) and set(result.qc.before) == set(result.qc.after) == set(VIEWS)


@pytest.mark.slow
def test_ears_kept_on_request() -> None:
    head = make_head(104, orientation="ASR", oblique=True)
    before = _data(head.image)
    after = _data(deface_volume(head.image, ears=False).image)
    assert not ((after != before) & head.ears).any()  # ears=False: not one ear voxel changed
    assert float(((after == 0) & head.face).sum() / head.face.sum()) >= 0.98


@pytest.mark.slow
def test_ct_face_becomes_air() -> None:
    """A CT-like volume (signed values, air at -1024): removed voxels read as air, not as 0 (water)."""
    head = make_head(105, orientation="PIL", oblique=False)
    ct = nib.Nifti1Image(_data(head.image).astype(np.int16) - 1024, head.image.affine)
    after = _data(deface_volume(ct).image)
    # the fill is the background (1st percentile: -1021 here, the noise floor of the air), not 0 (water)
    assert float((after[head.face] <= -1000).mean()) >= 0.98


def test_qc_refuses_a_volume_whose_face_is_still_there() -> None:
    """Fail closed: a protection margin so wide that nothing is cut leaves the face, and the detector refuses."""
    head = make_head(100, orientation="RAS")
    with pytest.raises(DefaceError, match="QC: the face detector still finds a face"):
        deface_volume(head.image, margin_mm=300.0)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "seed", "orientation"), [("face_out", 201, "LPS"), ("brain_only", 202, "ASR")])
def test_volume_without_face_passes_unchanged(kind: str, seed: int, orientation: str) -> None:
    head = make_head(seed, kind=kind, orientation=orientation)
    result = deface_volume(head.image)
    assert not result.face_in_view and not result.changed
    assert "no face in the field of view" in result.reason
    assert np.array_equal(_data(result.image), _data(head.image))
    assert result.face_voxels_removed == 0 and result.brain_voxels_changed == 0


@pytest.mark.slow
def test_head_cut_at_the_top_is_still_defaced() -> None:
    """A field of view that misses the top 40% of the head (face and lower brain in view) is defaced all the same,
    without touching the brain that is there."""
    head = make_head(801, orientation="RAS", oblique=False)
    keep = int(head.image.shape[2] * 0.6)
    image = nib.Nifti1Image(_data(head.image)[:, :, :keep], head.image.affine)
    face, brain = head.face[:, :, :keep], head.brain[:, :, :keep]
    result = deface_volume(image)
    after = _data(result.image)
    assert result.face_in_view and ((after == 0) & face).sum() >= 0.98 * face.sum()
    assert not ((after != _data(image)) & brain).any()


@pytest.mark.slow
def test_scaled_nifti_keeps_every_other_value(tmp_path: Path) -> None:
    """A file stored with scl_slope / scl_inter: the face reads as 0 afterwards and every other voxel reads exactly
    as before."""
    head = make_head(501, orientation="LAS", oblique=False)
    src, dst = tmp_path / "scaled.nii.gz", tmp_path / "out.nii.gz"
    img = nib.Nifti1Image(_data(head.image), head.image.affine)
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, str(src))
    result = deface_file(src, dst)
    before = np.asarray(nib.load(str(src)).get_fdata())
    after = np.asarray(nib.load(str(dst)).get_fdata())
    changed = after != before
    assert result.changed and np.all(after[changed] == 0)
    assert ((after == 0) & head.face).sum() >= 0.98 * head.face.sum() and not (changed & head.brain).any()


@pytest.mark.slow
def test_noise_volume_is_refused_not_cut(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    noise = nib.Nifti1Image(rng.integers(0, 1000, (96, 112, 104)).astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    src, dst = tmp_path / "noise.nii.gz", tmp_path / "out.nii.gz"
    nib.save(noise, str(src))
    with pytest.raises(RegistrationError) as info:
        deface_file(src, dst)
    assert info.value.reason.startswith("registration failed") and info.value.path == str(src)
    assert not dst.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_face_mask_over_the_brain_is_refused() -> None:
    """A brain mask (from the caller, e.g. a brain-extraction model) that the face region overlaps means the fit
    cannot be trusted: refused with a fixed reason, nothing cut."""
    head = make_head(301, orientation="RAS", oblique=False)
    with pytest.raises(RegistrationError, match="overlaps the brain"):
        deface_volume(head.image, brain_mask=head.face | head.brain)


@pytest.mark.slow
def test_files_and_cli(tmp_path: Path) -> None:
    head = make_head(401, orientation="LIP", oblique=True)
    src = tmp_path / "head.nii.gz"
    nib.save(head.image, str(src))
    out = tmp_path / "out" / "head.mgz"
    proc = run_cli("deface", str(src), str(out), text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "defaced" in proc.stdout and "brain voxels changed 0" in proc.stdout
    mgz = nib.load(str(out))
    assert isinstance(mgz, nib.MGHImage) and np.allclose(mgz.affine, head.image.affine, atol=1e-4)
    data = np.asarray(mgz.dataobj)
    assert ((data == 0) & head.face).sum() >= 0.98 * head.face.sum()
    assert np.array_equal(data[head.brain], _data(head.image)[head.brain])

    # a volume without the face: the same bytes out
    faceless = make_head(402, kind="face_out", orientation="RAS")
    src2, out2 = tmp_path / "faceless.nii", tmp_path / "faceless_out.nii"
    nib.save(faceless.image, str(src2))
    result = deface_file(src2, out2)
    assert not result.changed and out2.read_bytes() == src2.read_bytes()

    # refused: exit 2, nothing written; an unsupported suffix is refused before any work
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.int16), np.eye(4)), str(bad))
    proc = run_cli("deface", str(bad), str(tmp_path / "x.nii"), text=True)
    assert proc.returncode == 2 and "refused" in proc.stderr and not (tmp_path / "x.nii").exists()
    with pytest.raises(DefaceError, match="unsupported file type"):
        deface_file(src, tmp_path / "out.png")
