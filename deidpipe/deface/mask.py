"""Masks on the subject's grid: template masks pulled back, the subject's own head outline, the brain margin."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from deidpipe.deface.volume import from_sitk


def pull_back(mask: sitk.Image, subject: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """A template mask on the subject's grid (bool, indexed i, j, k): nearest neighbour, so a mask stays a mask
    and no voxel is half in; outside the template's grid counts as not in the mask."""
    out = sitk.Resample(mask, subject, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return from_sitk(out)[0] > 0


def head_outline(data: np.ndarray, step: int = 1) -> np.ndarray:
    """The subject's tissue (bool): above 15% of the way from the 1st to the 99th intensity percentile, closed,
    holes filled. Works for MR (air ~0) and CT (air ~-1000 HU) alike because it is relative; noise is smoothed
    first by a 3-voxel mean so that speckle in the air does not count as tissue.

    ``step`` > 1 computes it on blocks of step^3 voxels (their mean) and returns it on the full grid: the defacer
    passes 2 for 1 mm volumes, where the outline only feeds figures and plausibility checks (never the cut), and
    the morphology on 17 million voxels cost 3-5 s; measured on a 1 mm synth head, Dice 0.99 with the full
    computation, 5x faster."""
    from scipy import ndimage

    if step > 1:
        shape = data.shape
        padded = np.pad(data, [(0, (-n) % step) for n in shape], mode="edge")
        blocks = padded.reshape([x for n in padded.shape for x in (n // step, step)]).mean(axis=(1, 3, 5))
        small = head_outline(blocks)
        full = np.repeat(np.repeat(np.repeat(small, step, 0), step, 1), step, 2)
        return np.ascontiguousarray(full[: shape[0], : shape[1], : shape[2]])

    lo, hi = np.percentile(data, [1, 99])
    if hi <= lo:
        return np.zeros(data.shape, dtype=bool)
    smooth = ndimage.uniform_filter(data, size=3)
    tissue = smooth > lo + 0.15 * (hi - lo)
    tissue = ndimage.binary_closing(tissue, iterations=2)
    filled: np.ndarray = ndimage.binary_fill_holes(tissue)
    return filled


def dilate_mm(mask: np.ndarray, margin_mm: float, spacing_mm: np.ndarray,
              near: np.ndarray | None = None) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` millimetres (Euclidean, with the true voxel spacing of each axis).

    With ``near`` (bool), the growth is computed only in the bounding box of ``near`` widened by the margin, and the
    result there is exact (any mask voxel within the margin of a voxel of ``near``'s box lies inside the widened
    box); elsewhere the mask is returned as it is. The defacer passes the face region: a 1 mm head then needs a
    distance transform of the face's neighbourhood, not of 12 million voxels.
    """
    from scipy import ndimage

    grown = mask.copy()
    if margin_mm <= 0 or not mask.any():
        return grown
    box = tuple(slice(None) for _ in mask.shape)
    if near is not None:
        if not near.any():
            return grown
        idx = np.argwhere(near)
        pad = np.ceil(margin_mm / np.asarray(spacing_mm, dtype=float)).astype(int) + 1
        lo = np.maximum(idx.min(0) - pad, 0)
        hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    part = mask[box]
    if part.any():
        grown[box] = ndimage.distance_transform_edt(~part, sampling=spacing_mm) <= margin_mm
    return grown
