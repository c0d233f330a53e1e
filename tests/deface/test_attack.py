"""Defacing QC steps 2-3 (deidpipe.deface.attack, deidpipe.deface.face_finding, deidpipe.deface.geometry): dlib
landmarks and a recognition attack on skin renders of synthetic heads, and the geometry figures of a defacing.

Real dlib (dlib-bin) with the stock models of the face_recognition_models wheel, real renders, real defacing; no
mocks. The attack: a gallery of synthetic identities (``make_head(identity=...)``), each rendered in one pose, and
probes of some of them scanned again in another random pose and storage orientation; dlib's face descriptor
ranks the gallery by distance to each probe. Before defacing the true identity must rank first for (nearly)
every probe; after defacing (``deface_volume``, QC on) it must not. Figures: docs/deface.md, QC.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from deidpipe.deface import attack, deface_volume, face_finding
from deidpipe.deface.attack import ViewEmbeddings, attack_rank, run_attack, volume_embeddings
from deidpipe.deface.face_finding import MODEL_SHA256, VIEWS, FaceModelError, check_models, models_dir, render_views
from deidpipe.deface.qc import face_check
from deidpipe.synth.heads import ORIENTATIONS, make_head

# Identities: face deformation up to 16 mm (dlib cannot tell the default 4 mm apart across poses: docs/deface.md),
# pose rotation up to 5 degrees, no contrast noise (noise changes the rendered surface more than 4-8 mm of face
# shape does). PROBES identities are scanned twice; DISTRACTORS only once (in the gallery), so that chance alone
# ranks a probe first 1 time in GALLERY.
FACE_MM, MAX_DEGREES, VOXEL_MM = 16.0, 5.0, 2.0
PROBES, DISTRACTORS = 6, 2
GALLERY = PROBES + DISTRACTORS


def _head(seed: int, identity: int, **kw: object):
    return make_head(seed, identity=identity, face_mm=FACE_MM, max_degrees=MAX_DEGREES, noise=False,
                     voxel_mm=VOXEL_MM, **kw)


@dataclass
class AttackSet:
    gallery: list[ViewEmbeddings]
    before: list[ViewEmbeddings]
    after: list[ViewEmbeddings]
    results: list  # DefaceResult of each probe
    checks: list  # QCResult of each probe


@pytest.fixture(scope="module")
def attack_set() -> AttackSet:
    """The gallery (every identity, RAS, straight) and the probes (another seed: pose, size, storage orientation,
    oblique or not), each probe defaced; the QC's renders are reused for the descriptors. The QC runs outside
    ``deface_volume`` so that its verdict is recorded here rather than raised: on a noise-free 12 mm identity head
    the Haar cascade found a face on the cut surface (docs/deface.md, QC), and the attack test is about the
    attack."""
    gallery = [volume_embeddings(_head(3000 + i, i, orientation="RAS", oblique=False).image) for i in range(GALLERY)]
    before, after, results, checks = [], [], [], []
    for i in range(PROBES):
        head = _head(4000 + i, i, orientation=ORIENTATIONS[(i + 1) % len(ORIENTATIONS)], oblique=i % 2 == 0)
        result = deface_volume(head.image, qc=False)
        qc = face_check(head.image, result.image)
        b = volume_embeddings(None, renders=qc.renders_before)
        # the attacker crops where the face was: the boxes found before defacing
        a = volume_embeddings(None, boxes={k: m.box for k, m in b.marks.items()}, renders=qc.renders_after)
        before.append(b)
        after.append(a)
        results.append(result)
        checks.append(qc)
    return AttackSet(gallery, before, after, results, checks)


def _faulty_folder(tmp_path: Path, name: str) -> Path:
    """A models folder holding a copy of ``name`` with one byte changed."""
    folder = tmp_path / "models"
    folder.mkdir()
    data = bytearray((models_dir() / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / name).write_bytes(bytes(data))
    return folder


def test_installed_models_match_their_hashes() -> None:
    paths = check_models(names=tuple(MODEL_SHA256))
    assert set(paths) == set(MODEL_SHA256)


def test_changed_or_missing_model_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "shape_predictor_5_face_landmarks.dat"  # the small one: 9 MB
    folder = _faulty_folder(tmp_path, name)
    with pytest.raises(FaceModelError, match="SHA-256.*refusing"):
        check_models(folder, (name,))
    with pytest.raises(FaceModelError, match="missing"):
        check_models(folder, ("shape_predictor_68_face_landmarks.dat",))
    # the default folder is the installed package's; pointed elsewhere, the loader refuses too (not cached)
    monkeypatch.setattr(face_finding, "models_dir", lambda: folder)
    with pytest.raises(FaceModelError, match="missing"):
        check_models()
    with pytest.raises(FaceModelError, match="SHA-256"):
        face_finding.load_model(name, folder)


def test_attack_rank() -> None:
    gallery = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    assert attack_rank(np.array([0.9, 0.0]), gallery, 1) == 1
    assert attack_rank(np.array([0.9, 0.0]), gallery, 0) == 2
    assert attack_rank(np.array([0.9, 0.0]), gallery, 2) == 3
    assert attack_rank(np.array([0.5, 0.0]), gallery, 1) == 1  # a tie counts against the defacer
    assert attack_rank(np.array([np.nan, 0.0]), gallery, 0) == 3  # no descriptor: last


def test_landmarks_on_a_render_before_defacing() -> None:
    views = render_views(_head(3000, 0, orientation="LPS", oblique=True).image)
    marks = face_finding.landmarks(views["front"])
    assert marks.source == "hog" and marks.found and marks.score > 0
    assert marks.points.shape == (68, 2)
    x, y, w, h = marks.box
    inside = (marks.points[:, 0] >= x - w * 0.2) & (marks.points[:, 0] <= x + w * 1.2)
    assert inside.all() and (marks.points[:, 1] >= y - h * 0.2).all()
    # iBUG order: the nose tip (30) lies between the eyes (36, 45) left-right and below them
    assert marks.points[36, 0] < marks.points[30, 0] < marks.points[45, 0]
    assert marks.points[30, 1] > marks.points[36, 1]
    vec, _ = attack.embedding(views["front"])
    assert vec.shape == (128,) and np.isfinite(vec).all()


def test_no_face_and_no_box_gives_no_descriptor() -> None:
    vec, marks = attack.embedding(np.zeros((256, 256), np.uint8))
    assert marks.source == "" and not marks.found and np.isnan(vec).all()


@pytest.mark.slow
def test_landmarks_found_before_on_every_probe(attack_set: AttackSet) -> None:
    for qc in attack_set.checks:
        assert qc.dlib_before["front"].source == "hog", qc.dlib_before
        assert qc.dlib_before["front"].points.shape == (68, 2)
        assert set(qc.dlib_before) == set(qc.dlib_after) == set(VIEWS)
        assert qc.face_before  # and the Haar cascade sees it too


@pytest.mark.slow
def test_recognised_before_and_not_after_defacing(attack_set: AttackSet) -> None:
    res = run_attack(attack_set.gallery, attack_set.before, attack_set.after, list(range(PROBES)))
    print(f"ranks before {res.ranks_before} after {res.ranks_after} (gallery {res.n})")
    assert res.rank1_before >= (PROBES - 1) / PROBES, res.ranks_before
    # chance alone ranks a probe first 1 time in GALLERY (12.5%); issue target: at most 10% of volumes
    assert sum(r == 1 for r in res.ranks_after) <= 1, res.ranks_after
    # an attacker always gets a rank: the after-descriptors come from the boxes found before
    assert all(np.isfinite(e.vectors["front"]).all() for e in attack_set.after)


@pytest.mark.slow
def test_geometry_figures_after_defacing(attack_set: AttackSet) -> None:
    for result in attack_set.results:
        f = result.figures
        assert f["nose_retreat_mm"] > 10.0 and f["nose_tip_retreat_mm"] > 10.0, f
        assert 0.0 <= f["face_skin_left"] < 0.05, f
