"""Defacing QC, steps 2-3 of issue 10: face landmarks and a face-recognition attack on the skin renders.

A defaced volume is safe only if a face-recognition system cannot match its render to the person. This module
runs dlib's stock models (the ``face_recognition_models`` 0.3.0 wheel, installed with the project; nothing
downloads) on the shaded renders of :func:`deidpipe.deface.qc.render_views`:

* ``landmarks(render)``: dlib's HOG frontal face detector, falling back to OpenCV's Haar box
  (:func:`deidpipe.deface.qc.detect_faces`) when HOG finds nothing (HOG was trained on photographs; a render is
  close, not equal), then the 68-point shape predictor inside the box;
* ``embedding(render, box=None)``: dlib's ResNet face descriptor (128 numbers). A defaced render usually has no
  detectable face, but an attacker would still crop where the face was (the box found on the render before
  defacing, or the same place on a head of the same pose), so ``box`` lets the attack always produce a number;
* ``attack_rank(probe, gallery, true_index)``: where the true identity falls when the gallery is sorted by
  distance to the probe (1 = nearest). Absolute descriptor distances were calibrated on photographs and mean
  little on MRI renders, so only ranks are used.

Why the model files are checked: they are pickled dlib networks read by C++ code; a wrong or truncated file is a
crash or a silent misuse, so each file's SHA-256 is compared with the value recorded here before loading, and a
difference raises :class:`AttackModelError` naming the file. ``face_recognition_models`` itself is not imported:
its ``__init__`` needs ``pkg_resources``, which is not installed; the folder is found by ``importlib``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

MODEL_SHA256 = {
    "dlib_face_recognition_resnet_model_v1.dat": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "shape_predictor_68_face_landmarks.dat": "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
    "shape_predictor_5_face_landmarks.dat": "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    "mmod_human_face_detector.dat": "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
}
USED = ("dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_68_face_landmarks.dat")
HOG_UPSAMPLE = 0  # a face on a render is ~150 of 256 pixels, far above HOG's 80-pixel window: no upsampling
HOG_MIN_SCORE = 0.0  # dlib's own default threshold for a detection


class AttackModelError(RuntimeError):
    """A dlib model file is missing or differs from the recorded SHA-256: nothing is loaded."""


Box = tuple[int, int, int, int]  # x, y, w, h in render pixels (OpenCV's convention, as qc.detect_faces)


def models_dir() -> Path:
    """The ``models`` folder of the installed ``face_recognition_models`` package (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AttackModelError("face_recognition_models is not installed (pinned in pyproject.toml)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def check_models(folder: Path | None = None, names: tuple[str, ...] = USED) -> dict[str, Path]:
    """Paths of the model files ``names`` in ``folder`` (default :func:`models_dir`), each checked against
    ``MODEL_SHA256``; raises :class:`AttackModelError` for a missing or different file."""
    folder = Path(folder) if folder is not None else models_dir()
    paths: dict[str, Path] = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise AttackModelError(f"dlib model file missing: {path}")
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != MODEL_SHA256[name]:
            raise AttackModelError(f"dlib model file {path} has SHA-256 {digest.hexdigest()}, "
                                   f"expected {MODEL_SHA256[name]}: refusing to load it")
        paths[name] = path
    return paths


@lru_cache(maxsize=1)
def _detector() -> Any:
    """dlib's HOG frontal face detector (built into dlib, no file)."""
    import dlib

    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=4)
def _model(name: str, folder: Path | None = None) -> Any:
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


def _shape(render: np.ndarray, box: Box) -> Any:
    return _model("shape_predictor_68_face_landmarks.dat")(render, _rect(box))


def landmarks(render: np.ndarray, box: Box | None = None, haar: list[Box] | None = None) -> Landmarks:
    """Find a face on ``render`` (HOG, else the largest Haar box) and place the 68 landmarks in it. With no face
    found and a ``box`` given, the landmarks are placed in ``box`` (source "given"). ``haar``: the Haar boxes if
    the caller already ran :func:`deidpipe.deface.qc.detect_faces` on this render."""
    from deidpipe.deface.qc import detect_faces

    hog = hog_faces(render)
    if hog:
        source, (found, score) = "hog", hog[0]
    else:
        haar = sorted(detect_faces(render) if haar is None else haar, key=lambda b: -b[2] * b[3])
        source, found, score = ("haar", haar[0], 0.0) if haar else ("given", box, 0.0)
    if found is None:
        return Landmarks("", None)
    shape = _shape(render, found)
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=int)
    return Landmarks(source, tuple(int(v) for v in found), points, score)  # type: ignore[arg-type]


def embedding(render: np.ndarray, box: Box | None = None) -> tuple[np.ndarray, Landmarks]:
    """(128-d dlib face descriptor, the landmarks it was aligned on) of a render. The face is the one
    :func:`landmarks` finds, else ``box``; with neither, the descriptor is NaN (no rank can be given)."""
    marks = landmarks(render, box)
    if marks.box is None:
        return np.full(128, np.nan), marks
    shape = _shape(render, marks.box)
    rgb = np.ascontiguousarray(np.repeat(render[..., None], 3, axis=2))
    recognizer = _model("dlib_face_recognition_resnet_model_v1.dat")
    vec = np.array(recognizer.compute_face_descriptor(rgb, shape), dtype=float)
    return vec, marks


def _rank(dist: np.ndarray, true_index: int) -> int:
    """Rank of ``true_index`` among distances (1 = nearest); ties count against the defacer (the true identity is
    placed first among equals); a non-finite distance is never nearer than a finite one."""
    dist = np.where(np.isfinite(dist), dist, np.inf)
    if not np.isfinite(dist[true_index]):
        return int(dist.shape[0])
    return int((dist < dist[true_index]).sum()) + 1


def attack_rank(probe_embedding: np.ndarray, gallery_embeddings: np.ndarray, true_index: int) -> int:
    """Rank of the true identity (1 = nearest) when the gallery (n x 128) is sorted by Euclidean distance to the
    probe. A NaN probe ranks last, a NaN gallery entry is never nearest."""
    gallery = np.atleast_2d(np.asarray(gallery_embeddings, dtype=float))
    probe = np.asarray(probe_embedding, dtype=float)
    return _rank(np.linalg.norm(gallery - probe, axis=1), true_index)


@dataclass
class ViewEmbeddings:
    """Descriptors of one volume's renders, one per view (NaN rows where no face box was available)."""

    vectors: dict[str, np.ndarray]
    marks: dict[str, Landmarks]
    seconds: float

    def distance(self, other: ViewEmbeddings) -> float:
        """Mean Euclidean distance over the views both volumes have a descriptor for (inf when none). One number
        per pair of volumes, so that a volume gives one rank: a rank per view would give the attacker three tries,
        and chance alone would then be rank 1 far more often than 1 in n."""
        d = [float(np.linalg.norm(v - other.vectors[k])) for k, v in self.vectors.items() if k in other.vectors]
        d = [x for x in d if np.isfinite(x)]
        return float(np.mean(d)) if d else float("inf")


def volume_embeddings(volume: Any, boxes: dict[str, Box | None] | None = None,
                      renders: dict[str, np.ndarray] | None = None) -> ViewEmbeddings:
    """Descriptors of every view of ``volume`` (a nibabel image; or pass its ``renders``). ``boxes``: per view,
    where to crop if no detector finds a face (e.g. the boxes found before defacing)."""
    from deidpipe.deface.qc import render_views

    t0 = time.perf_counter()
    renders = renders if renders is not None else render_views(volume)
    vectors, marks = {}, {}
    for name, image in renders.items():
        vectors[name], marks[name] = embedding(image, (boxes or {}).get(name))
    return ViewEmbeddings(vectors, marks, time.perf_counter() - t0)


@dataclass
class AttackResult:
    """Ranks of the true identity for each probe (1 = recognised), before and after defacing, for a gallery of
    ``n`` identities. ``rank1_before`` / ``rank1_after``: share of probes ranked first."""

    ranks_before: list[int]
    ranks_after: list[int]
    n: int
    seconds: float

    @property
    def rank1_before(self) -> float:
        return sum(r == 1 for r in self.ranks_before) / max(1, len(self.ranks_before))

    @property
    def rank1_after(self) -> float:
        return sum(r == 1 for r in self.ranks_after) / max(1, len(self.ranks_after))


def run_attack(gallery: list[ViewEmbeddings], probes_before: list[ViewEmbeddings],
               probes_after: list[ViewEmbeddings], truth: list[int]) -> AttackResult:
    """Rank each probe (before and after defacing) against the gallery; ``truth[i]`` is probe i's gallery index.
    The gallery stands for photographs of the participants: undefaced renders in another pose."""
    t0 = time.perf_counter()
    before = [_rank(np.array([p.distance(g) for g in gallery]), t) for p, t in zip(probes_before, truth, strict=True)]
    after = [_rank(np.array([p.distance(g) for g in gallery]), t) for p, t in zip(probes_after, truth, strict=True)]
    return AttackResult(before, after, len(gallery), time.perf_counter() - t0)
