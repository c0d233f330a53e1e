"""Defacing QC, steps 2-3 of issue 10: a face-recognition attack on the skin renders.

A defaced volume is safe only if a face-recognition system cannot match its render to the person. This module
runs dlib's ResNet face descriptor on the shaded renders of :func:`deidpipe.deface.face_finding.render_views`, on the
face that :func:`deidpipe.deface.face_finding.landmarks` finds (dlib's HOG detector, else OpenCV's Haar box, then
the 68-point shape predictor):

* ``embedding(render, box=None)``: dlib's ResNet face descriptor (128 numbers). A defaced render usually has no
  detectable face, but an attacker would still crop where the face was (the box found on the render before
  defacing, or the same place on a head of the same pose), so ``box`` lets the attack always produce a number;
* ``attack_rank(probe, gallery, true_index)``: where the true identity falls when the gallery is sorted by
  distance to the probe (1 = nearest). Absolute descriptor distances were calibrated on photographs and mean
  little on MRI renders, so only ranks are used.

The model files are checked against their recorded SHA-256 before loading
(:func:`deidpipe.deface.face_finding.load_model`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deidpipe.deface.face_finding import Box, Landmarks, face_shape, landmarks, load_model, render_views


def embedding(render: np.ndarray, box: Box | None = None) -> tuple[np.ndarray, Landmarks]:
    """(128-d dlib face descriptor, the landmarks it was aligned on) of a render. The face is the one
    :func:`landmarks` finds, else ``box``; with neither, the descriptor is NaN (no rank can be given)."""
    marks = landmarks(render, box)
    if marks.box is None:
        return np.full(128, np.nan), marks
    shape = face_shape(render, marks.box)
    rgb = np.ascontiguousarray(np.repeat(render[..., None], 3, axis=2))
    recognizer = load_model("dlib_face_recognition_resnet_model_v1.dat")
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
