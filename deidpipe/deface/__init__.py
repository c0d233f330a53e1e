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
    from deidpipe.deface.qc import QCResult, detect_faces, face_check, render_views

_WHERE = {
    "DefaceResult": "core",
    "deface_volume": "core",
    "deface_file": "core",
    "DefaceError": "errors",
    "RegistrationError": "errors",
    "TemplateError": "errors",
    "VolumeError": "errors",
    "SeriesError": "series",
    "SeriesVolume": "series",
    "series_to_volume": "series",
    "volume_to_series": "series",
    "QCResult": "qc",
    "face_check": "qc",
    "render_views": "qc",
    "detect_faces": "qc",
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


__getattr__ = lazy_names(__name__, {name: f".{module}" for name, module in _WHERE.items()})
