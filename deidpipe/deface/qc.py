"""Defacing QC, step 1 of issue 10: render the skin surface and look for a face with a stock face detector.

``face_check(before, after)`` renders both volumes from the front and two obliques
(:func:`deidpipe.deface.face_finding.render_views`), runs OpenCV's Haar cascades
(:func:`~deidpipe.deface.face_finding.detect_faces`) and dlib's HOG detector with its 68 landmarks
(:func:`~deidpipe.deface.face_finding.landmarks`) on each render, and passes only if no view of the defaced volume
shows a face. ``deface_volume`` runs ``face_check`` and refuses a volume that still shows a face (docs/deface.md, QC);
why the render and the detectors are made as they are is told in :mod:`deidpipe.deface.face_finding`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deidpipe.deface.face_finding import detect_faces, render_views
from deidpipe.deface.face_finding import landmarks as find_landmarks

# dlib's HOG detector with 68 landmarks (deidpipe.deface.face_finding) runs on the same renders. A HOG detection
# with a score of at least DLIB_MIN_SCORE on a render after defacing counts as a face found; whether that refuses
# the volume is DLIB_FAIL_CLOSED (docs/deface.md, QC: measured false positives on the cut surface).
DLIB_MIN_SCORE = 0.0
DLIB_FAIL_CLOSED = False


@dataclass
class QCResult:
    """Faces found per view (list of (x, y, w, h) boxes in render pixels) before and after defacing.

    ``passed``: no face in any view after defacing (the fail-closed condition of issue 10): by the Haar cascade,
    and by dlib too when ``DLIB_FAIL_CLOSED``;
    ``face_before``: the front render found a face before defacing, i.e. the check could see a face at all
    (a False here means the check had no power on this volume, not that defacing failed).
    ``dlib_before`` / ``dlib_after``: per view, dlib's landmarks (``face_finding.Landmarks``: source "hog" when dlib's
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


def face_check(before: Any, after: Any, spacing: Any = None, *, landmarks: bool = True) -> QCResult:
    """Render ``before`` and ``after`` (nibabel images, or RAS arrays with ``spacing`` mm) from every view and run
    the detectors on each render: OpenCV's Haar cascade and (``landmarks``) dlib's HOG detector with its 68-point
    landmarks. ``passed`` is False if any after-view shows a face (see ``QCResult``)."""
    t0 = time.perf_counter()
    renders = [render_views(vol, spacing) for vol in (before, after)]
    found = [{k: detect_faces(v) for k, v in r.items()} for r in renders]
    marks: list[dict[str, Any]] = [{}, {}]
    if landmarks:
        # after defacing, no box is given: only a detector's own find counts
        marks = [{k: find_landmarks(v, haar=f[k]) for k, v in r.items()} for r, f in zip(renders, found, strict=True)]
    return QCResult(found[0], found[1], time.perf_counter() - t0, marks[0], marks[1], renders[0], renders[1])
