"""Synthetic head volumes with a known face, for testing defacing (``deidpipe synth --heads``).

Every head is pydeface's template (read from the installed package, checked by hash; no face is stored in this
repository) at 2 mm, changed in four independent ways:
- identity: a random smooth displacement (up to ``face_mm``, Gaussian-smoothed noise) applied only where the face
  region is, tapering to zero before the brain, so each identity has its own nose, lips and chin;
- pose and size: a random affine (rotation up to ``max_degrees`` about each axis, scale 0.9-1.1, shift +-15 mm);
- storage: the voxel axes in one of the orientations in ``ORIENTATIONS`` (RAS, LPS, flipped and permuted axes),
  optionally tilted (oblique) by up to 20 degrees;
- contrast: a random gamma, gain and Rician-like noise.
Field-of-view variants: ``face_out`` crops the volume along its anterior-posterior axis so that no face voxel is
left; ``brain_only`` keeps only the brain (a skull-stripped volume).

Ground truth, on the volume's own grid: ``face`` = tissue of this head inside the template's face region (the
template face mask is the definition of 'the face') and more than BRAIN_GAP_MM (12 mm) from the brain (12% of
the region's tissue, behind the eyes and beside the temporal poles, is nearer: the defacer keeps its 8 mm brain
margin there); ``brain`` = the template brain region derived by ``deidpipe.deface.template.brain_region``
(T1 intensity inside the head, 10 mm under the skin, above the foramen
magnum), moved with the head. Resampling is nearest neighbour for masks, linear for intensities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

ORIENTATIONS = ("RAS", "LPS", "LAS", "RPI", "LIP", "ASR", "PIL", "SAL")
KINDS = ("full", "face_out", "brain_only")
# Face-region voxels this close to the brain (mm) are not counted as face: the defacer keeps a margin round the
# brain, and what lies there (behind the eyes, beside the temporal poles) is not the recognisable face surface.
BRAIN_GAP_MM = 12.0
_AXIS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass
class SynthHead:
    """One synthetic head: the nibabel image and its ground-truth masks (bool, the image's storage order)."""

    image: Any
    face: np.ndarray
    brain: np.ndarray
    kind: str
    orientation: str
    oblique: bool
    seed: int
    scale: float = 1.0  # the head's size relative to the template's (subject mm -> template mm)
    ears: np.ndarray | None = None  # the pinnae (template.ear_core moved with the head), tissue only


def _rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _axes(code: str) -> np.ndarray:
    """3x3 matrix whose column n is the RAS world direction of voxel axis n for an orientation code like 'LPS'."""
    m = np.zeros((3, 3))
    for n, letter in enumerate(code):
        axis, sign = _AXIS[letter]
        m[axis, n] = sign
    return m


@lru_cache(maxsize=1)
def _static() -> tuple[np.ndarray, np.ndarray]:
    """(weight of the identity deformation: 1 in the face region, tapering to 0 before the brain; voxels farther
    than BRAIN_GAP_MM from the brain), on the template grid; computed once per process."""
    from scipy import ndimage

    from deidpipe.deface.template import load_template

    template = load_template()
    weight = ndimage.gaussian_filter(template.face_core.astype(np.float32), 3.0)
    weight[template.brain] = 0.0
    weight = np.clip(weight * 2.0, 0.0, 1.0)
    voxel = np.linalg.norm(template.affine[:3, :3], axis=0)
    far = ndimage.distance_transform_edt(~template.brain, sampling=voxel) > BRAIN_GAP_MM
    return weight, far


@lru_cache(maxsize=32)  # about 7 MB each; the attack benchmark's gallery has 10 identities, its test 8
def _identity_of(identity: int, face_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_identity` drawn from ``identity``'s own generator: the same person whatever the pose, so computed
    once per process (the recognition attack scans each person twice). Read-only arrays: callers share them."""
    from deidpipe.deface.template import load_template

    image, head = _identity(load_template(), np.random.default_rng([identity, 0x1D]), face_mm)
    image.flags.writeable = head.flags.writeable = False
    return image, head


def _identity(template: Any, rng: np.random.Generator, face_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(image, head) of the template with a random smooth deformation of the face region only."""
    from scipy import ndimage

    voxel = float(np.linalg.norm(template.affine[:3, 0]))
    weight = _static()[0]
    coords = np.indices(template.image.shape, dtype=np.float32)
    shape = template.image.shape
    small = tuple(-(-n // 4) for n in shape)  # the field is drawn at 1/4 resolution (8 mm), then interpolated
    for axis in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), 1.5)
        field = ndimage.zoom(field, [n / m for n, m in zip(shape, small, strict=True)], order=1)[
            : shape[0], : shape[1], : shape[2]]
        field *= (face_mm / voxel) / max(float(np.abs(field).max()), 1e-6)
        coords[axis] += field * weight
    image = ndimage.map_coordinates(template.image, coords, order=1, mode="constant")
    head = ndimage.map_coordinates(template.head.astype(np.uint8), coords, order=0, mode="constant") > 0
    return image, head


def make_head(seed: int, *, kind: str = "full", orientation: str | None = None, oblique: bool | None = None,
              voxel_mm: float = 2.0, max_degrees: float = 10.0, face_mm: float = 4.0, noise: bool = True,
              identity: int | None = None) -> SynthHead:
    """One synthetic head (see the module docstring). The same arguments give the same volume.

    ``identity``: when given, the face deformation (who the head is) is drawn from its own generator seeded by
    ``identity``, and ``seed`` then sets only pose, size, storage and contrast: the same person scanned twice, as
    the recognition attack (deidpipe.deface.attack) needs. ``None`` draws both from ``seed`` (as before).
    """
    import nibabel as nib
    from scipy import ndimage

    from deidpipe.deface.template import load_template

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    rng = np.random.default_rng(seed)
    template = load_template()
    orientation = orientation or ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    oblique = bool(rng.integers(2)) if oblique is None else oblique
    # identity given: its own stream, pose-independent
    image_t, head_t = _identity(template, rng, face_mm) if identity is None else _identity_of(identity, face_mm)
    face_t = template.face_core & head_t & _static()[1]

    # subject world -> template world: x_t = m @ x_s + t
    scale = float(rng.uniform(0.9, 1.1))
    m = _rotation(rng, max_degrees) * scale
    t = rng.uniform(-15, 15, 3)
    axes = _axes(orientation)
    if oblique:
        axes = _rotation(rng, 20.0) @ axes
    lin = axes * voxel_mm
    # the subject grid covers the template head
    idx = np.argwhere(template.head)
    corners = np.array([[a, b, c] for a in (idx[:, 0].min(), idx[:, 0].max()) for b in (idx[:, 1].min(),
                        idx[:, 1].max()) for c in (idx[:, 2].min(), idx[:, 2].max())], dtype=float)
    world_t = corners @ template.affine[:3, :3].T + template.affine[:3, 3]
    world_s = (world_t - t) @ np.linalg.inv(m).T
    vox = world_s @ np.linalg.inv(lin).T
    lo, hi = np.floor(vox.min(0)) - 3, np.ceil(vox.max(0)) + 3
    shape = tuple(int(n) for n in hi - lo + 1)
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = lin @ lo

    # subject voxel -> template voxel
    to_t = np.linalg.inv(template.affine) @ np.block([[m, t[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]) @ affine
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = (to_t[:3, :3] @ grid + to_t[:3, 3:]).reshape(3, *shape)
    image = ndimage.map_coordinates(image_t, coords, order=1, mode="constant")
    # the three masks as bits of one array, moved in one nearest-neighbour pass (the same voxel for each)
    bits = face_t.astype(np.uint8) | (template.brain.astype(np.uint8) << 1) | (
        (template.ear_core & head_t).astype(np.uint8) << 2)
    moved = ndimage.map_coordinates(bits, coords, order=0, mode="constant")
    face, brain, ears = (moved & 1) > 0, (moved & 2) > 0, (moved & 4) > 0

    if kind == "face_out":
        # crop along the storage axis closest to anterior-posterior, keeping the side without the face
        world_ap = (m.T @ np.array([0.0, 1.0, 0.0]))  # template anterior in subject world
        axis = int(np.argmax(np.abs(lin.T @ world_ap)))
        toward_face = float((lin.T @ world_ap)[axis]) > 0
        other = tuple(a for a in range(3) if a != axis)
        rows = np.flatnonzero(face.any(axis=other))
        keep = slice(0, int(rows.min()) - 1) if toward_face else slice(int(rows.max()) + 2, shape[axis])
        cut = [slice(None)] * 3
        cut[axis] = keep
        start = np.zeros(3)
        start[axis] = keep.start
        image, face, brain, ears = image[tuple(cut)], face[tuple(cut)], brain[tuple(cut)], ears[tuple(cut)]
        affine[:3, 3] = affine[:3, 3] + lin @ start
    elif kind == "brain_only":
        image = np.where(ndimage.binary_dilation(brain, iterations=1), image, 0.0)
        face = np.zeros_like(face)
        ears = np.zeros_like(ears)

    if noise:
        top = float(image.max()) or 1.0
        gain = rng.uniform(0.5, 3.0)
        image = gain * top * (np.clip(image, 0, None) / top) ** rng.uniform(0.8, 1.25)
        sigma = rng.uniform(0.005, 0.02) * gain * top
        image = np.hypot(image + rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape))
        if kind == "brain_only":
            image = np.where(ndimage.binary_dilation(brain, iterations=1), image, 0.0)
    data = np.clip(np.rint(image), 0, 32767).astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return SynthHead(img, face & (data > 0), brain, kind, orientation, oblique, seed, scale, ears & (data > 0))


def head_slice_template(seed: int = 0) -> Any:
    """An MR slice to build head series on: the first MR object of a one-patient synthetic archive (so its header
    carries the archive's planted PHI, names, IDs and dates for the header stage to remove), marked as a 3-D T1
    head acquisition (Body Part Examined HEAD, Series Description 'T1 MPRAGE HEAD'), its references to the
    archive's other images removed."""
    import tempfile

    from deidpipe.dicomio import read_dataset
    from deidpipe.synth.archive import generate_archive

    with tempfile.TemporaryDirectory() as tmp:
        generate_archive(Path(tmp), patients=1, seed=seed, real_world=False)
        ds = read_dataset(next(p for p in sorted(Path(tmp).rglob("*.dcm")) if "_MR" in p.parent.name))
    for keyword in ("ReferencedImageSequence", "SourceImageSequence"):
        if keyword in ds:
            del ds[keyword]
    ds.BodyPartExamined = "HEAD"
    ds.SeriesDescription = "T1 MPRAGE HEAD"
    ds.MRAcquisitionType = "3D"
    return ds


def write_head_series(head: SynthHead, folder: Path, template: Any, series_number: int) -> int:
    """Write one head as a DICOM MR series (one file per slice, ``folder/IM0001.dcm`` ...); returns the slice
    count. Geometry from the head's affine (:func:`deidpipe.deface.series.volume_to_new_series`)."""
    from deidpipe.deface.series import volume_to_new_series
    from deidpipe.dicomio import write_dataset

    template = template.copy()
    template.SeriesNumber = series_number
    folder.mkdir(parents=True, exist_ok=True)
    slices = volume_to_new_series(head.image, template)
    for n, ds in enumerate(slices, start=1):
        write_dataset(ds, folder / f"IM{n:04d}.dcm")
    return len(slices)


def write_heads(out: Path, count: int = 6, seed: int = 0, dicom: bool = True) -> list[dict[str, Any]]:
    """Write ``count`` synthetic heads (every orientation in turn; the last two a face-out and a brain-only
    volume when count >= 4) with their masks as NIfTI, and ``heads.json`` listing them. With ``dicom`` each head
    is also written as a DICOM MR series under ``dicom/headNNN/`` (an input for ``deidpipe run``)."""
    import nibabel as nib

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    template = head_slice_template(seed) if dicom else None
    entries = []
    for n in range(count):
        kind = "full"
        if count >= 4 and n >= count - 2:
            kind = "face_out" if n == count - 2 else "brain_only"
        head = make_head(seed * 1000 + n, kind=kind, orientation=ORIENTATIONS[n % len(ORIENTATIONS)])
        name = f"head{n:03d}"
        nib.save(head.image, str(out / f"{name}.nii.gz"))
        for mask in ("face", "brain"):
            nib.save(nib.Nifti1Image(getattr(head, mask).astype(np.uint8), head.image.affine),
                     str(out / f"{name}_{mask}.nii.gz"))
        entries.append({"file": f"{name}.nii.gz", "face": f"{name}_face.nii.gz", "brain": f"{name}_brain.nii.gz",
                        "kind": kind, "orientation": head.orientation, "oblique": head.oblique,
                        "face_voxels": int(head.face.sum()), "brain_voxels": int(head.brain.sum())})
        if template is not None:
            entries[-1]["dicom"] = f"dicom/{name}"
            entries[-1]["slices"] = write_head_series(head, out / "dicom" / name, template, 100 + n)
    (out / "heads.json").write_text(json.dumps(entries, indent=1) + "\n")
    return entries
