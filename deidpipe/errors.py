"""Typed errors.

Every message here is built from file paths the caller already knows, tag numbers, VR names and fixed
reasons: never from an attribute value, so an exception can be logged or shown without leaking identity.
"""

from __future__ import annotations

from pathlib import Path


class DeidError(Exception):
    """Base class of every error deidpipe raises on purpose."""


class InputError(DeidError):
    """The input object cannot be de-identified as it is (not DICOM, truncated, undecodable)."""

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = str(path) if path is not None else None
        self.reason = reason
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{reason}")


class NotDicomError(InputError):
    """The file has neither a DICOM preamble nor a parseable implicit/explicit VR data set."""


class TruncatedError(InputError):
    """The file ends before an element or item it announces."""


class InvalidValueError(InputError):
    """An element's VR or value cannot be interpreted (unknown VR, bad length, undecodable charset)."""


class PolicyError(DeidError):
    """A policy, rule file or deid recipe is invalid."""


class KeyMissingError(DeidError):
    """The project secret could not be found, or is too short to be safe."""


class ReversibleError(DeidError):
    """The Encrypted Attributes Sequence could not be built or opened."""


class SkippedError(DeidError):
    """The object is deliberately not carried over (the policy skips it, e.g. an encapsulated document): not a
    failure. ``reason`` is the fixed words the audit records (status ``skipped``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def reason_of(exc: BaseException) -> str:
    """Why ``exc`` happened, in words that are safe to log or show: an input's error without its path (a folder or
    file name may name the patient), other typed errors by their fixed message, anything else only by its type."""
    if isinstance(exc, InputError | SkippedError):
        return exc.reason
    if isinstance(exc, DeidError):
        return str(exc) or type(exc).__name__
    return f"unexpected error ({type(exc).__name__})"
