"""Typed defacing errors. Each carries a fixed reason (never a voxel value or a patient detail)."""

from __future__ import annotations

from deidpipe.errors import DeidError


class DefaceError(DeidError):
    """A volume cannot be defaced safely; it must be quarantined, never written half-done."""

    def __init__(self, reason: str, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


class TemplateError(DefaceError):
    """pydeface's template or face mask is missing or is not the file whose SHA-256 is recorded here."""


class VolumeError(DefaceError):
    """The input is not a usable 3-D volume (4-D, empty, no geometry, unsupported file type)."""


class RegistrationError(DefaceError):
    """The template did not land on the head: the face mask cannot be trusted, so nothing is cut."""


class NoTissueError(RegistrationError):
    """No head in the volume at all (nothing above the background): a series that is no volume of a head, which
    the pipeline's defacing stage may pass unchanged (unless a face detector sees a face on it)."""
