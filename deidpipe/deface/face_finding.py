"""Finding a face on a head volume: the skin-surface render, OpenCV's Haar cascade and dlib's landmarks.

One module for the face finding that the defacing QC (:mod:`deidpipe.deface.qc`), the recognition attack
(:mod:`deidpipe.deface.attack`) and ``scan``'s face rule (:mod:`deidpipe.scan.faces`) share:

* ``render_views(volume)`` ray-casts the head's skin surface from the front and two obliques (rotated about the
  superior axis) into shaded uint8 images;
* ``detect_faces(image)`` runs OpenCV's Haar cascades (shipped inside opencv-python-headless 4.14, nothing
  downloads) on a render;
* ``landmarks(render)``: dlib's HOG frontal face detector, falling back to the Haar box when HOG finds nothing (HOG
  was trained on photographs; a render is close, not equal), then dlib's 68-point shape predictor inside the box.
  dlib's stock models come from the ``face_recognition_models`` 0.3.0 wheel, installed with the project.

Why the render is made this way:

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

Why the model files are checked: they are pickled dlib networks read by C++ code; a wrong or truncated file is a
crash or a silent misuse, so each file's SHA-256 is compared with the value recorded here before loading, and a
difference raises :class:`FaceModelError` naming the file. ``face_recognition_models`` itself is not imported:
its ``__init__`` needs ``pkg_resources``, which is not installed; the folder is found by ``importlib``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
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

# dlib's stock model files (face_recognition_models 0.3.0) by SHA-256; USED: those QC (the 68-point predictor) and
# the recognition attack (the ResNet descriptor) load.
MODEL_SHA256 = {
    "dlib_face_recognition_resnet_model_v1.dat": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "shape_predictor_68_face_landmarks.dat": "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
    "shape_predictor_5_face_landmarks.dat": "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    "mmod_human_face_detector.dat": "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
}
USED = ("dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_68_face_landmarks.dat")
HOG_UPSAMPLE = 0  # a face on a render is ~150 of 256 pixels, far above HOG's 80-pixel window: no upsampling
HOG_MIN_SCORE = 0.0  # dlib's own default threshold for a detection


class FaceModelError(RuntimeError):
    """A dlib model file is missing or differs from the recorded SHA-256: nothing is loaded."""


Box = tuple[int, int, int, int]  # x, y, w, h in render pixels (OpenCV's convention, as detect_faces)


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


@cache
def _cascade(name: str) -> Any:
    """An OpenCV cascade from the files inside the opencv-python-headless wheel (cached per process)."""
    import cv2

    path = f"{cv2.data.haarcascades}{name}"
    clf = cv2.CascadeClassifier(path)
    if clf.empty():
        raise FileNotFoundError(f"OpenCV Haar cascade {name} missing or unreadable at {path}")
    return clf


def detect_faces(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Face boxes (x, y, w, h in pixels) in a uint8 render, from every cascade in ``CASCADES`` (union: QC must
    not miss a face that any one of them sees)."""
    boxes: list[tuple[int, int, int, int]] = []
    for name in CASCADES:
        found = _cascade(name).detectMultiScale(image, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                                minSize=(MIN_SIZE, MIN_SIZE))
        boxes.extend((int(x), int(y), int(w), int(h)) for x, y, w, h in found)
    return boxes


def models_dir() -> Path:
    """The ``models`` folder of the installed ``face_recognition_models`` package (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelError("face_recognition_models is not installed (pinned in pyproject.toml)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def check_models(folder: Path | None = None, names: tuple[str, ...] = USED) -> dict[str, Path]:
    """Paths of the model files ``names`` in ``folder`` (default :func:`models_dir`), each checked against
    ``MODEL_SHA256``; raises :class:`FaceModelError` for a missing or different file."""
    folder = Path(folder) if folder is not None else models_dir()
    paths: dict[str, Path] = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FaceModelError(f"dlib model file missing: {path}")
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != MODEL_SHA256[name]:
            raise FaceModelError(f"dlib model file {path} has SHA-256 {digest.hexdigest()}, "
                                 f"expected {MODEL_SHA256[name]}: refusing to load it")
        paths[name] = path
    return paths


@lru_cache(maxsize=1)
def _detector() -> Any:
    """dlib's HOG frontal face detector (built into dlib, no file)."""
    import dlib

    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=4)
def load_model(name: str, folder: Path | None = None) -> Any:
    """One dlib model, loaded after its hash check (cached per process: the shape predictor is 99 MB, about 1 s).
    Only the files in use are read: the QC needs the predictor, the attack the recognizer too."""
    import dlib

    path = check_models(folder, (name,))[name]
    if name.startswith("shape_predictor"):
        return dlib.shape_predictor(str(path))
    return dlib.face_recognition_model_v1(str(path))


@dataclass
class Landmarks:
    """What the detector and landmarker found on one render.

    ``source``: "hog" (dlib found the face), "haar" (only OpenCV's cascade did; dlib then placed the landmarks in
    its box), "given" (no detector found a face; the caller's box was used) or "" (nothing, ``points`` is empty).
    ``points``: 68 (x, y) pixel positions in dlib's iBUG order. ``score``: the HOG detection score (0 if not HOG).
    """

    source: str
    box: Box | None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), int))
    score: float = 0.0

    @property
    def found(self) -> bool:
        """A detector (HOG or Haar), not the caller, found a face on the render."""
        return self.source in ("hog", "haar")


def _rect(box: Box) -> Any:
    import dlib

    x, y, w, h = box
    return dlib.rectangle(int(x), int(y), int(x + w), int(y + h))


def hog_faces(render: np.ndarray) -> list[tuple[Box, float]]:
    """dlib HOG detections (box, score) on a uint8 grey render, best first."""
    rects, scores, _ = _detector().run(render, HOG_UPSAMPLE, HOG_MIN_SCORE)
    found = [((r.left(), r.top(), r.width(), r.height()), float(s)) for r, s in zip(rects, scores, strict=True)]
    return sorted(found, key=lambda item: -item[1])


def face_shape(render: np.ndarray, box: Box) -> Any:
    """dlib's 68-point shape (``full_object_detection``) of the face in ``box`` on ``render``."""
    return load_model("shape_predictor_68_face_landmarks.dat")(render, _rect(box))


def landmarks(render: np.ndarray, box: Box | None = None, haar: list[Box] | None = None) -> Landmarks:
    """Find a face on ``render`` (HOG, else the largest Haar box) and place the 68 landmarks in it. With no face
    found and a ``box`` given, the landmarks are placed in ``box`` (source "given"). ``haar``: the Haar boxes if
    the caller already ran :func:`detect_faces` on this render."""
    hog = hog_faces(render)
    if hog:
        source, (found, score) = "hog", hog[0]
    else:
        haar = sorted(detect_faces(render) if haar is None else haar, key=lambda b: -b[2] * b[3])
        source, found, score = ("haar", haar[0], 0.0) if haar else ("given", box, 0.0)
    if found is None:
        return Landmarks("", None)
    shape = face_shape(render, found)
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=int)
    return Landmarks(source, tuple(int(v) for v in found), points, score)  # type: ignore[arg-type]
