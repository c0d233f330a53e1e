"""Defacing head MR/CT volumes: register a template that carries a face mask, zero the face, never a brain voxel.

``deface_volume(image) -> DefaceResult`` works on a nibabel image; ``deface_file(in, out)`` on .nii, .nii.gz and
.mgz files. Names load on first use (PEP 562): importing this package does not import SimpleITK or nibabel.
See docs/deface.md for the method and why each choice was made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.lazy import lazy_names

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.deface.core import DefaceResult, deface_file, deface_volume
    from deidpipe.deface.errors import DefaceError, RegistrationError, TemplateError, VolumeError
    from deidpipe.deface.face_finding import detect_faces, render_views
    from deidpipe.deface.qc import QCResult, face_check

_WHERE = {
    **dict.fromkeys(("DefaceResult", "deface_volume", "deface_file"), ".core"),
    **dict.fromkeys(("DefaceError", "RegistrationError", "TemplateError", "VolumeError"), ".errors"),
    **dict.fromkeys(("SeriesError", "SeriesVolume", "series_to_volume", "volume_to_series"), ".series"),
    **dict.fromkeys(("QCResult", "face_check"), ".qc"),
    **dict.fromkeys(("render_views", "detect_faces"), ".face_finding"),
}

__all__ = [
    "DefaceError",
    "DefaceResult",
    "QCResult",
    "RegistrationError",
    "TemplateError",
    "VolumeError",
    "deface_file",
    "deface_volume",
    "detect_faces",
    "face_check",
    "render_views",
]


__getattr__ = lazy_names(__name__, _WHERE)
