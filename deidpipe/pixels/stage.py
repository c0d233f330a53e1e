"""The ``pixel_text`` stage as the pipeline sees it: one object in, the object and counts out."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from deidpipe.pixels.find import PixelOptions
from deidpipe.pixels.redact import redact_dataset


def options_from_policy(policy: Any) -> PixelOptions:
    """The pixel options a :class:`~deidpipe.policy.Policy` asks for (``auto`` / ``all-text`` by default)."""
    return PixelOptions(selection=getattr(policy, "pixels", "auto"),
                        mode=getattr(policy, "pixel_redaction", "all-text"),
                        detector=getattr(policy, "pixel_detector", "lines"))


def pixel_text_stage(ds: Dataset, policy: Any, source: Dataset | None = None) -> tuple[Dataset, dict[str, int]]:
    """Redact burned-in text of ``ds`` (the header-scrubbed object) using ``source`` (the object as read)
    for known regions and identifiers. Raises a typed error (the object is quarantined) on any failure."""
    result = redact_dataset(ds, options_from_policy(policy), source=source)
    return ds, {k: v for k, v in result.actions().items() if v}
