"""Defacing head MR/CT volumes: register a template that carries a face mask, zero the face, never a brain voxel.

``deface_volume(image) -> DefaceResult`` works on a nibabel image; ``deface_file(in, out)`` on .nii, .nii.gz and
.mgz files. Names load on first use (PEP 562): importing this package does not import SimpleITK or nibabel.
See docs/deface.md for the method and why each choice was made.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.deface.core import DefaceResult, deface_file, deface_volume
    from deidpipe.deface.errors import DefaceError, RegistrationError, TemplateError, VolumeError

_WHERE = {
    "DefaceResult": "core",
    "deface_volume": "core",
    "deface_file": "core",
    "DefaceError": "errors",
    "RegistrationError": "errors",
    "TemplateError": "errors",
    "VolumeError": "errors",
}

__all__ = [
    "DefaceError",
    "DefaceResult",
    "RegistrationError",
    "TemplateError",
    "VolumeError",
    "deface_file",
    "deface_volume",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name here."""
    if name not in _WHERE:
        raise AttributeError(f"module 'deidpipe.deface' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"deidpipe.deface.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
