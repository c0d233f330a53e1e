"""The ``header`` stage as the pipeline sees it: every object goes through it first (the confidentiality profile,
:func:`deidpipe.header.engine.deidentify`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.pipeline.contract import SCOPE_OBJECT, Stage, StageOutput, always

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

    from deidpipe.keys import ProjectKey
    from deidpipe.policy import Policy


def header_stage(ds: Dataset, policy: Policy, key: ProjectKey, source: Dataset | None = None) -> StageOutput:
    """Apply ``policy`` to the header of ``ds`` with pseudonyms from ``key``; the action counts for the audit."""
    from deidpipe.header.engine import deidentify

    result = deidentify(ds, policy, key)
    return StageOutput(result.dataset, dict(result.actions))


HEADER = Stage("header", SCOPE_OBJECT, needs_source=False, needed=always, run=header_stage)
