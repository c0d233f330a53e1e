"""Volumes in and out: nibabel images, RAS reorientation, and SimpleITK images for registration.

Conventions: nibabel affines map voxel indices to RAS+ millimetres; ITK images live in LPS+ millimetres, so the
first two world axes change sign between them. Arrays are indexed (i, j, k) as nibabel stores them; SimpleITK's
``GetArrayFromImage`` gives (k, j, i), hence the transposes below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deidpipe.deface.errors import VolumeError

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

# RAS+ (nibabel) <-> LPS+ (ITK): flip the first two world axes.
_LPS = np.diag([-1.0, -1.0, 1.0])

SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")


@dataclass
class Canonical:
    """A volume reoriented to RAS storage (the closest axis-aligned order), with the way back.

    ``data`` is float32 in RAS storage order; ``affine`` maps its indices to RAS+ mm (any oblique rotation that no
    permutation removes stays in the affine); ``to_original`` maps an RAS-ordered array back to the input's
    storage order (a permutation and flips, no interpolation: every voxel keeps its value).
    """

    data: np.ndarray
    affine: np.ndarray
    _back: np.ndarray
    _forth: np.ndarray

    def to_original(self, array: np.ndarray) -> np.ndarray:
        """An RAS-ordered array in the input's storage order."""
        from nibabel.orientations import apply_orientation

        return np.ascontiguousarray(apply_orientation(array, self._back))

    def to_ras(self, array: np.ndarray) -> np.ndarray:
        """An array in the input's storage order (same shape as the input) in RAS order."""
        from nibabel.orientations import apply_orientation

        if tuple(array.shape) != tuple(self._back_shape()):
            raise VolumeError(f"mask shape {tuple(array.shape)} is not the volume's {self._back_shape()}")
        return np.ascontiguousarray(apply_orientation(array, self._forth))

    def _back_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.to_original(np.empty(self.data.shape, dtype=bool)).shape)


def suffix_of(path: Path) -> str:
    """The volume suffix of ``path`` (``.nii.gz`` counts as one), or raise VolumeError."""
    name = path.name.lower()
    for s in SUFFIXES:
        if name.endswith(s):
            return s
    raise VolumeError("unsupported file type (use .nii, .nii.gz, .mgz or .mgh)", str(path))


def load(path: Path) -> Any:
    """A nibabel image from a NIfTI or MGH/MGZ file, checked to be a 3-D volume."""
    import nibabel as nib

    suffix_of(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many kinds; its message may quote header text
        raise VolumeError(f"unreadable volume ({type(exc).__name__})", str(path)) from None
    volume_data(img)
    return img


def volume_data(img: Any) -> np.ndarray:
    """The image's voxels as a 3-D array (a trailing axis of length 1 is dropped); 4-D data is refused."""
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3 or min(shape) < 2:
        raise VolumeError(f"not a 3-D volume (shape {shape})")
    data = np.asanyarray(img.dataobj).reshape(shape)
    if not np.isfinite(np.linalg.det(img.affine[:3, :3])) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        raise VolumeError("the volume has no usable geometry (singular affine)")
    return data


def canonical(img: Any) -> Canonical:
    """Reorient to RAS storage first, so that 'anterior' and 'inferior' mean the same array axes for every input
    (pydeface loses frontal brain when a scan arrives in an unexpected orientation: its issues #9, #41, #6)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    data = volume_data(img)
    ornt = io_orientation(img.affine)
    ras = axcodes2ornt("RAS")
    to_ras = ornt_transform(ornt, ras)
    out = np.ascontiguousarray(apply_orientation(data, to_ras), dtype=np.float32)
    affine = img.affine @ inv_ornt_aff(to_ras, data.shape)
    return Canonical(out, affine, ornt_transform(ras, ornt), to_ras)


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of ``data`` (indexed i, j, k) placed by the RAS affine ``affine`` (mm)."""
    import SimpleITK as sitk

    lin = np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    direction = _LPS @ lin / spacing
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction.ravel()])
    image.SetOrigin([float(v) for v in _LPS @ np.asarray(affine, dtype=float)[:3, 3]])
    return image


def from_sitk(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(array indexed i, j, k; RAS affine in mm) of a SimpleITK image."""
    import SimpleITK as sitk

    data = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _LPS @ np.array(image.GetOrigin(), dtype=float)
    return np.ascontiguousarray(data), affine


def background_value(data: np.ndarray) -> float:
    """What a removed voxel becomes, in the volume's read units: 0, or the 1st intensity percentile where that is
    below 0. MR background is ~0; CT air is about -1000 HU (or a padding value below it), so a CT face becomes air
    rather than 0 HU, which would read as water and draw the face's outline for a renderer."""
    low = float(np.percentile(data, 1)) if data.size else 0.0
    return min(0.0, low)


def zeroed(img: Any, mask: np.ndarray, value: float = 0.0) -> Any:
    """A new image of the same class, affine and header as ``img`` with the voxels in ``mask`` (its storage order)
    set to ``value`` (read units; 0 by default) and every other stored value left bit for bit as it was (scaled
    data keep their raw integers)."""
    dataobj = img.dataobj
    raw = np.array(dataobj.get_unscaled() if hasattr(dataobj, "get_unscaled") else dataobj)
    raw = raw.reshape(mask.shape) if raw.size == mask.size else raw
    slope = float(getattr(dataobj, "slope", 1.0) or 1.0)
    inter = float(getattr(dataobj, "inter", 0.0) or 0.0)
    zero = (value - inter) / slope  # the stored value that reads as ``value``
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        zero = float(np.clip(np.rint(zero), info.min, info.max))
    raw[mask] = zero
    header = img.header.copy()
    if slope != 1.0 or inter != 0.0:
        # A new image would be written with fresh scaling: store the read values as float64 instead, exactly.
        header.set_data_dtype(np.float64)
        return img.__class__((raw * slope + inter).reshape(img.shape), img.affine, header)
    return img.__class__(raw.reshape(img.shape), img.affine, header)
