"""The ``risk`` stage as the pipeline sees it: with a policy's ``risk_target``, every object's header
quasi-identifiers are generalised to the levels the run chose for the whole release
(:func:`deidpipe.risk.archive.generalise_dataset`). It runs right after the header stage, on what that wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.pipeline.contract import SCOPE_OBJECT, SeriesFacts, Stage, StageOutput

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

    from deidpipe.keys import ProjectKey
    from deidpipe.policy import Policy


def _needed(facts: SeriesFacts, policy: Policy) -> bool:
    """Every object, when the policy sets a risk target."""
    return policy.risk_target is not None


def risk_stage(ds: Dataset, policy: Policy, key: ProjectKey, source: Dataset | None = None) -> StageOutput:
    """Generalise ``ds``'s quasi-identifiers to the chosen levels; a policy whose levels were not chosen (a
    target outside ``run``) fails the object closed."""
    from deidpipe.risk.archive import generalise_dataset

    assert policy.risk_target is not None  # _needed
    return StageOutput(ds, generalise_dataset(ds, policy.risk_target))


RISK = Stage("risk", SCOPE_OBJECT, needs_source=False, needed=_needed, run=risk_stage)
