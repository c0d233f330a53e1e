"""Defacing QC (deidpipe.deface.qc, deidpipe.deface.face_finding): shaded skin renders and OpenCV's Haar face
detector, on synthetic heads.

Real nibabel, SciPy, OpenCV (the cascades inside the opencv-python-headless wheel) and real defacing; no mocks.
Renders exist only at run time and are never written to the repository. Figures over more heads: docs/deface.md, QC.
"""

from __future__ import annotations

import numpy as np
import pytest

from deidpipe.deface.face_finding import SIZE, VIEWS, _cascade, detect_faces, render_views
from deidpipe.deface.qc import face_check
from deidpipe.deface.volume import canonical
from deidpipe.synth.heads import make_head

# A face seen before defacing and none after, on every view, is checked on every synth head where it is
# defaced: tests/deface/test_volume.py, test_defaces_synth_head (deface_volume runs this QC).


def test_renders_shape_dtype_and_array_input() -> None:
    head = make_head(100, orientation="RAS", oblique=False)
    views = render_views(head.image)
    assert set(views) == set(VIEWS)
    for image in views.values():
        assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8
        # a head in the middle on a black background
        assert image[SIZE // 2, SIZE // 2] > 0 and image[0, 0] == 0 and image[-1, -1] == 0
        assert 0.15 < float((image > 0).mean()) < 0.8
    # an RAS array with its spacing renders the same head (same skin, centred the same way)
    can = canonical(head.image)
    spacing = np.linalg.norm(can.affine[:3, :3], axis=0)
    front = render_views(can.data, spacing)["front"]
    assert float(((front > 0) == (views["front"] > 0)).mean()) > 0.97


def test_storage_orientation_does_not_change_the_render() -> None:
    """Rays are cast in RAS millimetres: the same head stored PIR and RAS renders the same silhouette."""
    a = render_views(make_head(7, orientation="RAS", oblique=False, noise=False).image)["front"]
    b = render_views(make_head(7, orientation="PIR", oblique=False, noise=False).image)["front"]
    assert float(((a > 0) == (b > 0)).mean()) > 0.97


def test_brain_only_volume_shows_no_face() -> None:
    head = make_head(202, kind="brain_only", orientation="ASR")
    views = render_views(head.image)
    assert all(detect_faces(image) == [] for image in views.values())
    qc = face_check(head.image, head.image)
    assert qc.passed and not qc.face_before


def test_empty_volume_renders_black_and_missing_cascade_is_an_error() -> None:
    views = render_views(np.zeros((40, 40, 40), np.float32), 2.0)
    assert all(not image.any() and image.shape == (SIZE, SIZE) for image in views.values())
    with pytest.raises(FileNotFoundError, match="missing or unreadable"):
        _cascade("haarcascade_no_such_file.xml")
