"""The stage registry: every stage of the pipeline, in execution order (see :mod:`deidpipe.pipeline.contract`).

Header first (everything after it sees pseudonymised values), then the release's risk target (the header's
quasi-identifiers generalised, when the policy sets one), then burned-in text (per object), then defacing (a whole
series at once, on the scrubbed objects).
"""

from __future__ import annotations

from deidpipe.deface.stage import DEFACE
from deidpipe.header.stage import HEADER
from deidpipe.pipeline.contract import SCOPE_SERIES, SeriesFacts, Stage
from deidpipe.pixels.stage import PIXEL_TEXT
from deidpipe.policy import Policy
from deidpipe.risk.stage import RISK

STAGES: list[Stage] = [HEADER, RISK, PIXEL_TEXT, DEFACE]

_BY_NAME = {stage.name: stage for stage in STAGES}


def stage_named(name: str) -> Stage:
    """The registered stage called ``name`` (a KeyError names it when there is none)."""
    return _BY_NAME[name]


def needed_stages(facts: SeriesFacts, policy: Policy) -> tuple[str, ...]:
    """The names of the stages a series with these facts needs under ``policy``, in execution order."""
    return tuple(stage.name for stage in STAGES if stage.needed(facts, policy))


def needs_whole_series(stages: tuple[str, ...]) -> bool:
    """Whether a task with these stages must hold its whole series (a series-scope stage among them)."""
    return any(_BY_NAME[name].scope == SCOPE_SERIES for name in stages)
