"""Affine registration of the template to a subject head with SimpleITK.

Choices, and why (figures measured on this 2-core CPU, see docs/deface.md):
- fixed = the subject, moving = the template: the result maps subject points to template points, which is what
  pulling the template's masks back onto the subject's own grid needs (no resampling of the subject at all);
- both images resampled to ``resolution_mm`` (3 mm) isotropic after a Gaussian blur of half that width: the face
  and the skull outline are tens of millimetres across, and at 1 mm the same fit took 96 s instead of ~2-10 s;
- initialised by moments (centres of intensity mass), after the caller reoriented the subject to RAS, so the
  optimiser starts within a few centimetres and a few degrees;
- Mattes mutual information (32 bins): MR contrast, scanner scaling and CT versus T1 differ between subject and
  template, so no intensity relation is assumed; a fixed random sample (seeded: the same input gives the same
  result) of the voxels;
- two resolutions (shrink 2 then 1 on the 3 mm grid), rigid first then a full affine (12 parameters: head size
  and shape differ between people, children included), gradient descent with scales from physical shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from deidpipe.deface.errors import RegistrationError

SEED = 20261201  # fixed metric sampling: the same volume is always defaced the same way
SAMPLING = 0.2  # share of the 3 mm voxels the metric samples each iteration (~100,000 for a head)


@dataclass(frozen=True)
class Registration:
    """The fitted transform (subject LPS mm -> template LPS mm), its final metric value and the seconds taken."""

    transform: sitk.Transform
    metric: float
    seconds: float

    def linear(self) -> np.ndarray:
        """The 3x3 linear part of the transform (subject -> template, LPS; its singular values are the scales)."""
        return np.array(self.transform.GetMatrix(), dtype=float).reshape(3, 3)


def coarse(image: sitk.Image, resolution_mm: float) -> sitk.Image:
    """``image`` blurred (sigma = resolution/2 mm) and resampled to an isotropic grid of ``resolution_mm``."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    spacing = np.array(image.GetSpacing())
    if resolution_mm > float(spacing.min()) * 1.2:
        image = sitk.SmoothingRecursiveGaussian(image, resolution_mm / 2.0)
    size = [max(2, int(np.ceil(n * s / resolution_mm))) for n, s in zip(image.GetSize(), spacing, strict=True)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [resolution_mm] * 3,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def _stage(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
           iterations: int) -> tuple[sitk.Transform, float]:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING, SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=iterations,
                                         convergenceMinimumValue=1e-6, convergenceWindowSize=10,
                                         estimateLearningRate=method.EachIteration)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(transform, inPlace=False)
    try:
        out = method.Execute(fixed, moving)
    except RuntimeError:  # ITK stops when too few samples overlap: the template left the volume
        raise RegistrationError("registration diverged (template and volume stopped overlapping)") from None
    return out, float(method.GetMetricValue())


def register(subject: sitk.Image, template: sitk.Image, resolution_mm: float = 3.0,
             iterations: int = 50, *, coarse_template: sitk.Image | None = None) -> Registration:
    """Fit ``template`` onto ``subject`` (both SimpleITK images in physical space); see the module docstring.
    ``coarse_template``: :func:`coarse` of ``template`` at ``resolution_mm``, where the caller keeps it (it is
    the same for every head: :func:`deidpipe.deface.core.deface_volume` makes it once per process)."""
    import time

    start = time.perf_counter()
    fixed = coarse(subject, resolution_mm)
    moving = coarse_template if coarse_template is not None else coarse(template, resolution_mm)
    try:
        init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.MOMENTS)
    except RuntimeError:  # an all-zero volume has no centre of mass
        raise RegistrationError("volume has no intensity to register to") from None
    rigid, _ = _stage(fixed, moving, init, iterations)
    rigid = rigid.Downcast() if not isinstance(rigid, sitk.CompositeTransform) else rigid.GetNthTransform(0).Downcast()
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    fitted, metric = _stage(fixed, moving, affine, iterations)
    if isinstance(fitted, sitk.CompositeTransform):
        fitted = fitted.GetNthTransform(0)
    return Registration(fitted.Downcast(), metric, time.perf_counter() - start)
