"""Defacing QC, step 1 of issue 10: render the skin surface and look for a face with a stock face detector.

``render_views(volume)`` ray-casts the head's skin surface from the front and two obliques (rotated about the
superior axis) into shaded uint8 images; ``detect_faces(image)`` runs OpenCV's Haar cascades (shipped inside
opencv-python-headless 4.14, nothing downloads); ``face_check(before, after)`` renders both volumes and passes only
if no view of the defaced volume shows a face. Why this design:

* Rays are cast in RAS world millimetres through the image affine (nibabel's convention), so storage order and
  oblique acquisitions do not change the picture: the same head gives the same render whatever the scanner wrote.
* The skin is the tissue mask of ``mask.head_outline`` (relative threshold, works for MR and CT), smoothed so
  that the surface is subvoxel: a 2 mm volume would otherwise render as terraces, which Haar features take for
  edges.
* Shading is Lambertian with a light from the front and above, as a photograph lit from the camera side: the
  Haar cascades were trained on photographs, where the eye sockets and the area under the nose are darker than
  the forehead and cheeks. Measured on 4 synth heads: depth alone (near = bright) gave the alt2 cascade at most 11
  neighbouring hits in a front render (0-3 without equalisation), the Lambertian render 70-156 (12 heads). The image
  is histogram-equalised, as OpenCV's face-detection examples do.

``face_check`` also runs dlib's HOG detector and 68-point landmarks (``deidpipe.deface.attack``) on each render;
``deface_volume`` runs ``face_check`` and refuses a volume that still shows a face (docs/deface.md, QC).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SIZE = 256  # render side in pixels
FOV_MM = 256.0  # square field of view of a render in mm (1 mm per pixel at SIZE 256: a whole adult head)
STEP_MM = 1.5  # ray sampling step along the view direction, mm; the crossing is then interpolated
RAY_EVERY = 2  # one ray per 2x2 render pixels (2 mm), depth interpolated between: 4x faster, and the heads
# tested are 2 mm volumes, so finer rays add no surface detail (0.9 s -> 0.25 s a view on this CPU)
RENDER_MM = 2.0  # volumes finer than this are block-averaged to about it before rendering (``_coarse``)
BEHIND_MM = 40.0  # rays stop this far behind the head's centroid: the skin seen from the front lies before it
VIEWS: dict[str, float] = {"front": 0.0, "left30": 30.0, "right30": -30.0}  # degrees about the superior axis
LIGHT = np.array([0.0, -0.5, 1.0]) / np.linalg.norm([0.0, -0.5, 1.0])  # (column, row, toward viewer): front-top
AMBIENT = 0.15  # share of brightness that is not directional, so that surfaces turned away are not pure black

# Haar parameters, tuned on 12 synthetic heads (docs/deface.md, QC): alt2 found 70-156 neighbouring hits on the
# front render before defacing and at most 6 on any render after; the default cascade gave up to 29 after
# defacing (false faces on the cut surface), so it is not used. A face fills about 150 of the 256 pixels.
CASCADES = ("haarcascade_frontalface_alt2.xml",)
SCALE_FACTOR = 1.05
MIN_NEIGHBORS = 12  # twice the most seen after defacing, a sixth of the fewest on a face
MIN_SIZE = 64  # pixels (64 mm at 1 mm per pixel): smaller hits on a head render are texture, not a face


# dlib's HOG detector with 68 landmarks (deidpipe.deface.attack) runs on the same renders. A HOG detection with a
# score of at least DLIB_MIN_SCORE on a render after defacing counts as a face found; whether that refuses the
# volume is DLIB_FAIL_CLOSED (docs/deface.md, QC: measured false positives on the cut surface).
DLIB_MIN_SCORE = 0.0
DLIB_FAIL_CLOSED = False


@dataclass
class QCResult:
    """Faces found per view (list of (x, y, w, h) boxes in render pixels) before and after defacing.

    ``passed``: no face in any view after defacing (the fail-closed condition of issue 10): by the Haar cascade,
    and by dlib too when ``DLIB_FAIL_CLOSED``;
    ``face_before``: the front render found a face before defacing, i.e. the check could see a face at all
    (a False here means the check had no power on this volume, not that defacing failed).
    ``dlib_before`` / ``dlib_after``: per view, dlib's landmarks (``attack.Landmarks``: source "hog" when dlib's
    own detector found the face, with its score and 68 points); ``dlib_face_after``: a HOG face with a score of at
    least ``DLIB_MIN_SCORE`` on any view after defacing. ``renders_before`` / ``renders_after``: the images, kept so
    that callers (the recognition attack, the benchmark) need not render again.
    """

    before: dict[str, list[tuple[int, int, int, int]]]
    after: dict[str, list[tuple[int, int, int, int]]]
    seconds: float
    dlib_before: dict[str, Any] = field(default_factory=dict)
    dlib_after: dict[str, Any] = field(default_factory=dict)
    renders_before: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    renders_after: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    passed: bool = field(init=False)
    face_before: bool = field(init=False)
    dlib_face_after: bool = field(init=False)

    def __post_init__(self) -> None:
        self.dlib_face_after = any(m.source == "hog" and m.score >= DLIB_MIN_SCORE for m in self.dlib_after.values())
        self.passed = not any(self.after.values()) and not (DLIB_FAIL_CLOSED and self.dlib_face_after)
        self.face_before = bool(self.before.get("front"))


def _ras_volume(volume: Any, spacing: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(data, voxel-to-RAS-mm affine) of a nibabel image (reoriented to RAS storage by ``volume.canonical``) or of
    an array already in RAS order with ``spacing`` (mm per axis, default 1 mm)."""
    if isinstance(volume, np.ndarray):
        if volume.ndim != 3:
            raise ValueError(f"expected a 3-D array, got shape {volume.shape}")
        affine = np.diag([*(np.broadcast_to(np.asarray(spacing if spacing is not None else 1.0, float), 3)), 1.0])
        return _coarse(volume.astype(np.float32, copy=False), affine)
    from deidpipe.deface.volume import canonical

    can = canonical(volume)
    return _coarse(can.data, can.affine)


def _coarse(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block-average axes finer than RENDER_MM / 2 by whole factors up to about RENDER_MM. The rays are
    RENDER_MM apart and the surface is smoothed by a voxel, so finer voxels add no detail to the render, only time:
    on a 1 mm head the tissue outline and smoothing took 2 s of a 4.3 s render (shared 2-core CPU)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    factors = [max(1, int(RENDER_MM / s + 1e-6)) for s in spacing]
    if max(factors) == 1:
        return data, affine
    shape = [n // f * f for n, f in zip(data.shape, factors, strict=True)]
    cut = data[: shape[0], : shape[1], : shape[2]]
    blocks = cut.reshape(shape[0] // factors[0], factors[0], shape[1] // factors[1], factors[1],
                         shape[2] // factors[2], factors[2]).mean(axis=(1, 3, 5), dtype=np.float32)
    scaled = affine.copy()
    scaled[:3, :3] = affine[:3, :3] * np.asarray(factors, float)
    scaled[:3, 3] = affine[:3, :3] @ ((np.asarray(factors, float) - 1) / 2) + affine[:3, 3]  # block centres
    return np.ascontiguousarray(blocks), scaled


def _skin(data: np.ndarray) -> np.ndarray:
    """Tissue mask (``mask.head_outline``) as float32 in [0, 1], Gaussian-smoothed by 1 voxel so that the 0.5
    crossing along a ray is a smooth surface rather than voxel steps."""
    from scipy import ndimage

    from deidpipe.deface.mask import head_outline

    return ndimage.gaussian_filter(head_outline(data).astype(np.float32), 1.0)


def _depth(skin: np.ndarray, affine: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    """Depth map (mm from the near plane, NaN where the ray misses the head) seen from the front rotated by
    ``degrees`` about the superior axis. Rows run superior to inferior, columns from the subject's right to left
    (as a camera facing the subject sees it)."""
    from scipy import ndimage

    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    col, row, into = rot @ [-1.0, 0.0, 0.0], np.array([0.0, 0.0, -1.0]), rot @ [0.0, -1.0, 0.0]
    rays = SIZE // RAY_EVERY
    pix = FOV_MM / rays
    near = -FOV_MM / 2  # near plane: half the field of view in front of the head's centroid
    count = int(round((FOV_MM / 2 + BEHIND_MM) / STEP_MM))
    # output index (row, column, step) -> RAS mm -> input voxel; one affine, resampled by scipy in one pass
    inv = np.linalg.inv(affine)
    axes = np.stack([row * pix, col * pix, into * STEP_MM], axis=1)
    start = centre - (row + col) * pix * (rays - 1) / 2 + into * near
    vals = ndimage.affine_transform(skin, inv[:3, :3] @ axes, offset=inv[:3, :3] @ start + inv[:3, 3],
                                    output_shape=(rays, rays, count), order=1, mode="constant", cval=0.0)
    inside = vals >= 0.5
    hit = inside.any(axis=2)
    k = np.argmax(inside, axis=2)
    v1 = np.take_along_axis(vals, k[..., None], 2)[..., 0]
    v0 = np.take_along_axis(vals, np.maximum(k - 1, 0)[..., None], 2)[..., 0]
    frac = np.where(k > 0, (0.5 - v0) / np.maximum(v1 - v0, 1e-6), 0.0)
    depth = (k - 1 + np.clip(frac, 0, 1)) * STEP_MM
    if RAY_EVERY > 1:  # up to the render size: bilinear depth (a smooth surface), the silhouette from the hit mask
        import cv2

        far = float(depth[hit].max()) if hit.any() else 0.0
        depth = cv2.resize(np.where(hit, depth, far).astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        hit = cv2.resize(hit.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) >= 0.5
    return np.where(hit, depth, np.nan)


def _shade(depth: np.ndarray) -> np.ndarray:
    """Lambertian shading of a depth map (light ``LIGHT`` from the front and above), histogram-equalised, uint8.
    The normal comes from the depth map's gradient (mm per mm); background (NaN) is black."""
    import cv2

    hit = np.isfinite(depth)
    d = np.where(hit, depth, np.nanmax(depth) if hit.any() else 0.0)
    px = FOV_MM / SIZE
    gy, gx = np.gradient(d, px)
    # image axes (column, row down, toward the viewer); depth grows away from the viewer, so where the depth grows
    # to the right the surface faces right: the normal is (gx, gy, 1), normalised.
    n = np.stack([gx, gy, np.ones_like(d)])
    n /= np.linalg.norm(n, axis=0)
    lam = np.clip(np.einsum("i,i...->...", LIGHT, n), 0.0, 1.0)
    shade = np.where(hit, AMBIENT + (1 - AMBIENT) * lam, 0.0)
    img = np.clip(shade * 255.0, 0, 255).astype(np.uint8)
    out: np.ndarray = cv2.equalizeHist(img)
    out[~hit] = 0
    return out


def render_views(volume: Any, spacing: Any = None) -> dict[str, np.ndarray]:
    """Shaded renders (uint8, SIZE x SIZE, 1 mm per pixel at the default size) of the skin surface from each view
    in ``VIEWS``. ``volume``: a nibabel image, or a 3-D array in RAS order with ``spacing`` in mm. The rays are
    centred on the tissue's centroid; a volume with no tissue gives black images."""
    data, affine = _ras_volume(volume, spacing)
    skin = _skin(data)
    tissue = skin >= 0.5
    if not tissue.any():
        return {name: np.zeros((SIZE, SIZE), np.uint8) for name in VIEWS}
    centre_vox = np.argwhere(tissue).mean(axis=0)
    centre = affine[:3, :3] @ centre_vox + affine[:3, 3]
    return {name: _shade(_depth(skin, affine, deg, centre)) for name, deg in VIEWS.items()}


_LOADED: dict[str, Any] = {}


def _cascade(name: str) -> Any:
    """An OpenCV cascade from the files inside the opencv-python-headless wheel (cached per process)."""
    import cv2

    if name not in _LOADED:
        path = f"{cv2.data.haarcascades}{name}"
        clf = cv2.CascadeClassifier(path)
        if clf.empty():
            raise FileNotFoundError(f"OpenCV Haar cascade {name} missing or unreadable at {path}")
        _LOADED[name] = clf
    return _LOADED[name]


def detect_faces(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Face boxes (x, y, w, h in pixels) in a uint8 render, from every cascade in ``CASCADES`` (union: QC must
    not miss a face that any one of them sees)."""
    boxes: list[tuple[int, int, int, int]] = []
    for name in CASCADES:
        found = _cascade(name).detectMultiScale(image, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                                minSize=(MIN_SIZE, MIN_SIZE))
        boxes.extend((int(x), int(y), int(w), int(h)) for x, y, w, h in found)
    return boxes


def face_check(before: Any, after: Any, spacing: Any = None, *, landmarks: bool = True) -> QCResult:
    """Render ``before`` and ``after`` (nibabel images, or RAS arrays with ``spacing`` mm) from every view and run
    the detectors on each render: OpenCV's Haar cascade and (``landmarks``) dlib's HOG detector with its 68-point
    landmarks. ``passed`` is False if any after-view shows a face (see ``QCResult``)."""
    t0 = time.perf_counter()
    renders = [render_views(vol, spacing) for vol in (before, after)]
    found = [{k: detect_faces(v) for k, v in r.items()} for r in renders]
    marks: list[dict[str, Any]] = [{}, {}]
    if landmarks:
        from deidpipe.deface.attack import landmarks as find_landmarks

        # after defacing, no box is given: only a detector's own find counts
        marks = [{k: find_landmarks(v, haar=f[k]) for k, v in r.items()} for r, f in zip(renders, found, strict=True)]
    return QCResult(found[0], found[1], time.perf_counter() - t0, marks[0], marks[1], renders[0], renders[1])
