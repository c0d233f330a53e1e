"""pydeface's template head and face mask, read from the installed wheel and checked by SHA-256.

pydeface (MIT licence, Poldrack lab; see docs/deface.md) ships ``data/mean_reg2mean.nii.gz``, a mean
T1-weighted head (176 x 256 x 256 voxels of about 1 mm, used here at 2 mm, in its own space, not MNI) and
``data/facemask.nii.gz`` on the same grid, 0 over the face and 1 elsewhere. Nothing is downloaded: if the
package is missing or a file differs from the
hash recorded here, :class:`TemplateError` is raised and nothing is defaced.

The template carries no brain mask, so one is derived here (``brain_region``): head = intensity above 15% of the
99th percentile, holes filled; brain = voxels at least 10 mm inside the head, brighter than 45% of the 99th
percentile (grey and white matter of a T1; CSF, bone and air are dark), above the foramen magnum, outside the face
region, largest connected piece, closed by 4 mm and filled. It is a conservative outline of cerebrum, cerebellum
and brainstem, which the defacer then dilates by a margin before protecting it.

Nor does it carry an ear mask; ``ear_region`` derives one: the ears are what a morphological opening of the head
with a 10 mm ball takes away (thin protrusions) lateral to the brain, the two largest such pieces (the pinnae,
2-3 ml each in the mean head), grown by EAR_GROW_MM (12 mm), into the head so that the concha and the base of the
pinna go too, and into the air so that a fit a few millimetres off still covers the rim. The defacer's brain
margin still protects everything near the brain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from deidpipe.deface.errors import TemplateError

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

PACKAGE = "pydeface"
TEMPLATE_FILE = "data/mean_reg2mean.nii.gz"
FACEMASK_FILE = "data/facemask.nii.gz"
# SHA-256 of the files in pydeface 2.1.0's wheel (the version pinned in pyproject.toml / the Makefile).
SHA256 = {
    TEMPLATE_FILE: "fdc13571d66293f9919648cd8de9a7b3491b12175e09336353d2c9ce0466ecb6",
    FACEMASK_FILE: "8cba52c32c02e0cc28dd47606f6ef581b9c9804f1ae9d412da5a4addc57f0068",
}
# Template voxel index (k, inferior-superior) below which no brain is counted: the foramen magnum of the mean head.
_BRAIN_MIN_K = 70
_WORK_MM = 2.0
EAR_OPEN_MM = 10.0  # radius of the ball whose opening removes the pinnae (thin, 5-10 mm) but not the skull
EAR_GROW_MM = 12.0  # the pinnae grown by this much within the head: concha, tragus and the base of the ear
FACE_GROW_MM = 4.0  # grid (mm) on which the brain region is derived: 8x fewer voxels than 1 mm, same outline


@dataclass(frozen=True)
class Template:
    """The template in RAS storage, all on one grid whose RAS affine is ``affine`` (about 2 mm voxels):
    ``image`` (float32), ``face`` (to be removed: pydeface's face region grown by FACE_GROW_MM), ``head``
    (tissue), ``brain`` (derived brain region), ``face_core`` (pydeface's face region as it is)."""

    image: np.ndarray
    face: np.ndarray
    head: np.ndarray
    brain: np.ndarray
    affine: np.ndarray
    face_core: np.ndarray
    ears: np.ndarray  # both ears with their surroundings (``ear_region``), removed when the policy says so
    ear_core: np.ndarray  # the pinnae alone (what the opening took away): the measure of ears left

    @property
    def voxel_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def ears_left(self) -> np.ndarray:
        """The ear region on the left of the head (lower x in RAS storage), apart so that the brain margin near
        each ear is computed in that ear's own box (see ``mask.dilate_mm``)."""
        return self.ears & (np.arange(self.ears.shape[0]) < self._mid_x)[:, None, None]

    @property
    def ears_right(self) -> np.ndarray:
        return self.ears & (np.arange(self.ears.shape[0]) >= self._mid_x)[:, None, None]

    @property
    def _mid_x(self) -> float:
        x = np.flatnonzero(self.brain.any(axis=(1, 2)))
        return (x[0] + x[-1]) / 2.0

    def sitk(self, name: str) -> sitk.Image:
        """One of the arrays as a SimpleITK image in the template's space (masks as uint8)."""
        from deidpipe.deface.volume import to_sitk

        array = getattr(self, name)
        return to_sitk(array if name == "image" else array.astype(np.uint8), self.affine)


def _read(name: str) -> bytes:
    from importlib import resources

    try:
        data = (resources.files(PACKAGE) / name).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        raise TemplateError(f"{PACKAGE} template file {name} not installed (make install puts it there)") from None
    if hashlib.sha256(data).hexdigest() != SHA256[name]:
        raise TemplateError(f"{PACKAGE} template file {name} differs from the recorded SHA-256")
    return data


def _nifti(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.Nifti1Image.from_bytes(_gunzip(data))
    return np.asanyarray(img.dataobj), img.affine


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data)


def brain_region(image: np.ndarray, face: np.ndarray, voxel_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(head, brain) boolean masks of a T1 template (see the module docstring for the recipe and why)."""
    from scipy import ndimage

    p99 = float(np.percentile(image, 99))
    head = ndimage.binary_fill_holes(ndimage.binary_closing(image > 0.15 * p99, iterations=2))
    labels, n = ndimage.label(head)
    if n > 1:
        head = labels == (1 + int(np.argmax(ndimage.sum(head, labels, range(1, n + 1)))))
    depth = ndimage.distance_transform_edt(head, sampling=voxel_mm)
    brain = (depth >= 10.0) & (image > 0.45 * p99) & ~face
    brain[:, :, : int(round(_BRAIN_MIN_K / voxel_mm[2]))] = False
    brain = ndimage.binary_opening(brain, iterations=1)
    labels, n = ndimage.label(brain)
    if n > 1:
        brain = labels == (1 + int(np.argmax(ndimage.sum(brain, labels, range(1, n + 1)))))
    brain = ndimage.binary_closing(brain, iterations=2)
    brain = ndimage.binary_fill_holes(brain) & ~face
    return head, brain


def ear_region(head: np.ndarray, brain: np.ndarray, face: np.ndarray,
               voxel_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ears, ear_core) boolean masks of the template head in RAS storage (see the module docstring)."""
    from scipy import ndimage

    r = np.maximum(np.round(EAR_OPEN_MM / np.asarray(voxel_mm, float)).astype(int), 1)
    grid = np.mgrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1].astype(float)
    ball = np.sqrt(sum((g * v) ** 2 for g, v in zip(grid, voxel_mm, strict=True))) <= EAR_OPEN_MM
    thin = head & ~ndimage.binary_opening(head, structure=ball)
    x = np.flatnonzero(brain.any(axis=(1, 2)))
    i = np.arange(head.shape[0])[:, None, None]
    lateral = (i < x[0]) | (i > x[-1])  # beside the brain, left or right (RAS storage: axis 0 is x)
    labels, n = ndimage.label(thin & lateral & ~face)
    if n < 2:
        raise TemplateError("the template's ears were not found")
    sizes = ndimage.sum(np.ones(labels.shape), labels, range(1, n + 1))
    core = np.isin(labels, np.argsort(sizes)[-2:] + 1)
    # Not limited to the template's head: a fit a few millimetres off must still cover the rim of a real pinna,
    # which sticks out into the air; removing air changes nothing.
    ears = ndimage.distance_transform_edt(~core, sampling=voxel_mm) <= EAR_GROW_MM
    return ears, core


@lru_cache(maxsize=1)
def load_template() -> Template:
    """The checked template, face mask and derived head and brain masks at ~2 mm (cached for the process)."""
    from scipy import ndimage

    image, affine = _nifti(_read(TEMPLATE_FILE))
    keep, _ = _nifti(_read(FACEMASK_FILE))
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    # Everything at ~2 mm: registration runs at 3 mm anyway, and the brain is protected with a wider margin.
    step = max(1, int(round(_WORK_MM / float(voxel.mean()))))
    shape = tuple(n // step * step for n in image.shape)
    crop = tuple(slice(0, n) for n in shape)
    blocks = tuple(x for n in shape for x in (n // step, step))
    image = np.asarray(image[crop], dtype=np.float32).reshape(blocks).mean(axis=(1, 3, 5))
    # A block is face if any of its voxels is: the face is removed generously, the brain is protected below.
    face = (np.asarray(keep[crop]) < 0.5).reshape(blocks).any(axis=(1, 3, 5))
    affine = np.asarray(affine, dtype=float).copy()
    affine[:3, 3] += affine[:3, :3] @ np.full(3, (step - 1) / 2.0)  # block centres
    affine[:3, :3] *= step
    head, brain = brain_region(image, face, voxel * step)
    # The face region grown by FACE_GROW_MM, so that a fit a few millimetres off still covers the whole face; the
    # subject's brain (with its own margin) is protected from it later all the same.
    grown = ndimage.distance_transform_edt(~face, sampling=voxel * step) <= FACE_GROW_MM
    ears, ear_core = ear_region(head, brain, face, voxel * step)
    return Template(image=image, face=grown, head=head, brain=brain, affine=affine, face_core=face, ears=ears,
                    ear_core=ear_core)
