"""The ``pixel_text`` stage as the pipeline sees it: one object in, the object and counts out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.pipeline.contract import SCOPE_OBJECT, SeriesFacts, Stage, StageOutput

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

    from deidpipe.keys import ProjectKey
    from deidpipe.pixels.find import PixelOptions
    from deidpipe.policy import Policy


def options_from_policy(policy: Policy) -> PixelOptions:
    """The pixel options a :class:`~deidpipe.policy.Policy` asks for."""
    from deidpipe.pixels.find import PixelOptions

    return PixelOptions(selection=policy.pixels, mode=policy.pixel_redaction, detector=policy.pixel_detector)


def pixel_text_needed(facts: SeriesFacts, policy: Policy) -> bool:
    """Series with an image, unless the policy turns pixels off; per object the stage decides the rest
    (policy selection, header, cheap screen)."""
    return policy.pixels != "off" and facts.has_image


def pixel_text_stage(ds: Dataset, policy: Policy, key: ProjectKey | None = None,
                     source: Dataset | None = None) -> StageOutput:
    """Redact burned-in text of ``ds`` (the header-scrubbed object) using ``source`` (the object as read)
    for known regions and identifiers. Raises a typed error (the object is quarantined) on any failure."""
    from deidpipe.pixels.redact import redact_dataset

    result = redact_dataset(ds, options_from_policy(policy), source=source)
    return StageOutput(ds, {k: v for k, v in result.actions().items() if v})


PIXEL_TEXT = Stage("pixel_text", SCOPE_OBJECT, needs_source=True, needed=pixel_text_needed, run=pixel_text_stage)
