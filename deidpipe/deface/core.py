"""``deface_volume`` and ``deface_file``: the defacing core for NIfTI / MGH head volumes.

Order of work (each step's reason is in docs/deface.md):
1. reorient to RAS storage (no interpolation; undone at the end, so the output has the input's grid and header);
2. register pydeface's template to the subject (register.py), coarse and affine;
3. pull the template's face, head and brain masks back onto the subject grid (nearest neighbour);
4. refuse (RegistrationError, nothing written) when the fit is implausible: a scale outside 0.7-1.45 on any
   axis, less than 85% of the subject's own tissue lying inside the pulled-back template head, or the face
   region overlapping the brain by more than ``max_overlap`` of the face region;
5. if (almost) no tissue of the subject lies in the face region, the face is not in the field of view: the volume
   passes through unchanged and the result says so;
6. otherwise zero the face region outside the brain grown by ``margin_mm``: no voxel inside that margin is ever
   changed, and the result counts the brain voxels that changed (0, checked on the written values).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deidpipe.deface.errors import DefaceError, NoTissueError, RegistrationError

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.deface.qc import QCResult

# Plausible per-axis scale between a head and the template (singular values of the fitted matrix): a small
# child's head to a large adult's. Outside it the fit latched on to something else (noise, a brain alone, a neck).
SCALE_RANGE = (0.7, 1.45)
MIN_TISSUE_INSIDE = 0.85  # share of the subject's tissue voxels that must fall inside the fitted template head
FACE_IN_VIEW_MIN = 0.05  # share of the template's face tissue that must be present for "face in view"
QC_FAILED = "QC: the face detector still finds a face after defacing: refused"
#: The registration's refusal of a volume with no tissue above its background (nothing to deface, no face).
NO_TISSUE = "no head found in the volume (no tissue above the background)"


@dataclass
class DefaceResult:
    """What ``deface_volume`` did. Masks are bool arrays in the input's own storage order and grid.

    ``face_mask``: the template face region, and with ``ears`` the ear region, pulled back (what would be
    removed); ``brain_mask``: the brain that
    was protected (given by the caller or pulled back from the template), before the margin; ``protected``: the
    brain grown by the margin (computed near the face region, where anything is cut), never changed.
    ``face_voxels_removed`` counts voxels whose value changed to 0;
    ``brain_voxels_changed`` counts brain-mask voxels whose value changed (always 0, or an error is raised).
    """

    image: Any
    face_mask: np.ndarray
    brain_mask: np.ndarray
    protected: np.ndarray
    seconds: float
    face_voxels_removed: int
    brain_voxels_changed: int
    face_in_view: bool
    changed: bool
    reason: str
    figures: dict[str, float] = field(default_factory=dict)
    qc: QCResult | None = None  # the face detector's findings before and after (None: not run, or no face in view)


def _checks(tissue: np.ndarray, head_t: np.ndarray, face: np.ndarray, brain: np.ndarray, scales: np.ndarray,
            max_overlap: float) -> dict[str, float]:
    """The plausibility figures of a fit; raises RegistrationError (with a fixed reason) when one fails."""
    inside = float((tissue & head_t).sum() / max(1, tissue.sum()))
    overlap = float((face & brain).sum() / max(1, face.sum()))
    figures = {"scale_min": float(scales.min()), "scale_max": float(scales.max()),
               "tissue_inside_template_head": inside, "face_brain_overlap": overlap}
    if not tissue.any():
        raise NoTissueError(NO_TISSUE)
    if scales.min() < SCALE_RANGE[0] or scales.max() > SCALE_RANGE[1]:
        raise RegistrationError("registration failed: implausible head scale")
    if inside < MIN_TISSUE_INSIDE:
        raise RegistrationError("registration failed: the template head does not cover the volume's tissue")
    if overlap > max_overlap:
        raise RegistrationError("registration failed: the face mask overlaps the brain")
    return figures


@lru_cache(maxsize=2)
def _coarse_template(resolution_mm: float) -> Any:
    """The template blurred and resampled for registration (:func:`deidpipe.deface.register.coarse`): the same
    for every head, so made once per process (0.15 CPU-s a head before)."""
    from deidpipe.deface.register import coarse
    from deidpipe.deface.template import load_template

    return coarse(load_template().sitk("image"), resolution_mm)


def deface_volume(image: Any, *, brain_mask: np.ndarray | None = None, margin_mm: float = 8.0,
                  max_overlap: float = 0.02, resolution_mm: float = 3.0, qc: bool = True,
                  fill: float | None = None, ears: bool = True) -> DefaceResult:
    """Deface a head volume (a nibabel image: Nifti1/2, MGH) and return the new image with its figures.

    ``brain_mask`` (bool, the image's storage order) replaces the template's pulled-back brain, e.g. from a
    brain-extraction model; ``margin_mm`` grows it before protection; ``max_overlap`` is the share of the face
    region allowed to touch the brain before the fit is refused; ``resolution_mm`` is the registration grid.
    ``qc``: where the face is in view, render the skin before and after and run the face detector
    (:func:`deidpipe.deface.qc.face_check`, 2 to 3 s); a face found after defacing refuses the volume.
    ``fill``: the value removed voxels get (read units); by default the background (``volume.background_value``:
    0 for MR, air for CT). ``ears``: remove the ears too (the template's ear region pulled back, as UK Biobank's
    defacing does), together with the face; a volume whose face is not in view keeps its ears as well.
    Raises :class:`RegistrationError` (refuse, quarantine) or :class:`VolumeError`; never cuts on a doubtful fit.
    """
    from deidpipe.deface.mask import dilate_mm, head_outline, pull_back
    from deidpipe.deface.register import register
    from deidpipe.deface.template import load_template
    from deidpipe.deface.volume import background_value, canonical, to_sitk, zeroed

    start = time.perf_counter()
    can = canonical(image)
    subject = to_sitk(can.data, can.affine)
    finest = float(np.linalg.norm(can.affine[:3, :3], axis=0).min())
    tissue = head_outline(can.data, step=2 if finest <= 1.25 else 1)  # 1 mm volumes: outline on 2 mm blocks
    if not tissue.any():  # before the costly fit: an empty or constant volume has no head to deface
        raise NoTissueError(NO_TISSUE)
    template = load_template()
    fit = register(subject, template.sitk("image"), resolution_mm=resolution_mm,
                   coarse_template=_coarse_template(resolution_mm))
    face = pull_back(template.sitk("face"), subject, fit.transform)
    regions = [face]  # apart, so that each one's brain margin is computed in its own box (fast)
    if ears:  # the removal region: the face, and the ears with their surroundings (template.ear_region)
        regions += [pull_back(template.sitk(side), subject, fit.transform) for side in ("ears_left", "ears_right")]
        face = regions[0] | regions[1] | regions[2]
    face_core = pull_back(template.sitk("face_core"), subject, fit.transform)
    head_t = pull_back(template.sitk("head"), subject, fit.transform)
    if brain_mask is None:
        brain = pull_back(template.sitk("brain"), subject, fit.transform)
        brain_source = 0.0
    else:
        brain = can.to_ras(np.asarray(brain_mask) > 0)
        brain_source = 1.0
    scales = np.linalg.svd(fit.linear(), compute_uv=False)
    figures = _checks(tissue, head_t, face_core, brain, scales, max_overlap)
    figures.update(registration_seconds=fit.seconds, metric=fit.metric, brain_from_caller=brain_source)

    spacing = np.linalg.norm(can.affine[:3, :3], axis=0)
    voxel_mm3 = float(np.prod(spacing))
    # Expected face tissue (mm3) in subject space: the template's, divided by the fit's volume scale.
    expected = float((template.face_core & template.head).sum()) * template.voxel_mm3 / float(np.prod(scales))
    present = float((face_core & tissue).sum()) * voxel_mm3
    figures["face_tissue_in_view"] = present / max(expected, 1e-9)
    face_in_view = figures["face_tissue_in_view"] >= FACE_IN_VIEW_MIN

    protected = dilate_mm(brain, margin_mm, spacing, near=regions[0])
    for region in regions[1:]:
        protected |= dilate_mm(brain, margin_mm, spacing, near=region)
    if fill is None:
        fill = background_value(can.data)
    figures["fill_value"] = float(fill)
    cut = face & ~protected & (can.data != fill) if face_in_view else np.zeros_like(face)
    cut_original = can.to_original(cut)
    out = zeroed(image, cut_original, fill) if cut.any() else image
    after = np.asarray(out.dataobj, dtype=np.float32).reshape(image.shape[:3]) if cut.any() else None
    brain_original = can.to_original(brain)
    if after is not None:
        diff = after != np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3])
        brain_changed = int((diff & brain_original).sum())
        removed = int(diff.sum())
    else:
        brain_changed = removed = 0
    if brain_changed:  # cannot happen by construction; checked on the written values all the same
        raise DefaceError("a brain voxel would change: refused")
    if not face_in_view:
        reason = "no face in the field of view (face region outside the volume or empty): unchanged"
    elif removed == 0:
        reason = "face region holds no tissue to remove: unchanged"
    else:
        reason = "defaced"
    figures["face_voxels_in_region"] = float(face.sum())
    if face_in_view:  # how far the front of the face went back, and how much face skin is left (geometry.py)
        from deidpipe.deface.geometry import face_geometry, template_nose

        nose = template_nose(template, fit.transform)
        figures.update(face_geometry(tissue, cut, face_core, can.affine, nose).figures())
    qc_result = None
    if qc and face_in_view:  # fail closed: a detector that still sees a face after defacing refuses the volume
        from deidpipe.deface.qc import face_check

        qc_result = face_check(image, out)
        figures["qc_seconds"] = qc_result.seconds
        figures["qc_face_before"] = float(qc_result.face_before)
        figures["qc_dlib_face_before"] = float(qc_result.dlib_before.get("front") is not None
                                               and qc_result.dlib_before["front"].source == "hog")
        figures["qc_dlib_face_after"] = float(qc_result.dlib_face_after)
        if not qc_result.passed:
            raise DefaceError(QC_FAILED)
    return DefaceResult(image=out, face_mask=can.to_original(face), brain_mask=brain_original,
                        protected=can.to_original(protected), seconds=time.perf_counter() - start,
                        face_voxels_removed=removed, brain_voxels_changed=brain_changed,
                        face_in_view=face_in_view, changed=removed > 0, reason=reason, figures=figures,
                        qc=qc_result)


def deface_file(in_path: str | Path, out_path: str | Path, **options: Any) -> DefaceResult:
    """Deface ``in_path`` (.nii, .nii.gz, .mgz, .mgh) into ``out_path`` (same kinds). The output is written only
    after every check passed (to a temporary name, then renamed); on any error nothing is written."""
    import os

    from deidpipe.deface.volume import load, suffix_of

    in_path, out_path = Path(in_path), Path(out_path)
    suffix_of(out_path)
    image = load(in_path)
    try:
        result = deface_volume(image, **options)
    except DefaceError as exc:
        raise type(exc)(exc.reason, str(in_path)) from None
    import nibabel as nib

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial{suffix_of(out_path)}")
    out = result.image
    if suffix_of(out_path) in (".mgz", ".mgh") and not isinstance(out, nib.MGHImage):
        out = nib.MGHImage(np.asarray(out.dataobj, dtype=np.float32), out.affine)
    elif suffix_of(out_path) in (".nii", ".nii.gz") and isinstance(out, nib.MGHImage):
        out = nib.Nifti1Image(np.asarray(out.dataobj), out.affine)
    if not result.changed and suffix_of(out_path) == suffix_of(in_path):
        import shutil

        shutil.copyfile(in_path, tmp)  # unchanged: the same bytes, header included
    else:
        nib.save(out, str(tmp))
    os.replace(tmp, out_path)
    return result
