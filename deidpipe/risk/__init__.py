"""Quasi-identifier re-identification risk on any polars table: ARX's models and sdcMicro's individual risk.

``assess(df, qi, population=N | fraction=F, threshold=T, weight=COL)`` returns a :class:`RiskReport` (typed, with
``to_json``); the pieces are public too: :func:`equivalence_classes`, :func:`histogram`, :func:`sample_risks`,
:func:`sample_uniqueness`, :func:`population_uniqueness` (Zayatz, Pitman, SNB, Dankar's rule),
:func:`individual_risk` and :func:`weighted_risk` (sdcMicro). See ``docs/risk.md``.

Releasing a table, ARX's lattice search with its Loss metric: :class:`Hierarchy` (ARX hierarchy files, or
interval widths), :class:`Target` (k, highest or average risk; prosecutor, journalist or marketer; suppression
limit), :func:`search` (the transformation with the least loss that meets the target), :func:`apply_levels`,
:func:`suppression_mask` and :func:`release_table` (re-apply a stored choice), and :func:`anonymise` (all of it,
with the risk before and after, as an :class:`Anonymisation`).

Names are loaded on first use (PEP 562), so that ``deidpipe.risk.cli`` builds the command line without polars.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.lazy import lazy_names

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.risk.classes import Histogram, equivalence_classes, histogram
    from deidpipe.risk.errors import RiskError
    from deidpipe.risk.generalise import NoTransformation, Target, Transformation, search, size_threshold
    from deidpipe.risk.hierarchy import Hierarchy
    from deidpipe.risk.models import (
        PopulationUniqueness,
        dankar,
        pitman,
        population_size,
        population_uniqueness,
        snb,
        zayatz,
    )
    from deidpipe.risk.release import (
        Anonymisation,
        anonymise,
        apply_levels,
        release_table,
        render_anonymisation,
        suppression_mask,
    )
    from deidpipe.risk.report import RiskReport, assess, render
    from deidpipe.risk.sample import MarketerRisk, RiskSummary, SampleRisks, sample_risks, sample_uniqueness
    from deidpipe.risk.sdc import WeightedRisk, class_risk, individual_risk, weighted_risk

_WHERE = {
    **dict.fromkeys(("Histogram", "equivalence_classes", "histogram"), ".classes"),
    "RiskError": ".errors",
    **dict.fromkeys(("NoTransformation", "Target", "Transformation", "search", "size_threshold"), ".generalise"),
    "Hierarchy": ".hierarchy",
    **dict.fromkeys(("Anonymisation", "anonymise", "apply_levels", "release_table", "render_anonymisation",
                     "suppression_mask"), ".release"),
    **dict.fromkeys(("PopulationUniqueness", "dankar", "pitman", "population_size", "population_uniqueness",
                     "snb", "zayatz"), ".models"),
    **dict.fromkeys(("RiskReport", "assess", "render"), ".report"),
    **dict.fromkeys(("MarketerRisk", "RiskSummary", "SampleRisks", "sample_risks", "sample_uniqueness"),
                    ".sample"),
    **dict.fromkeys(("WeightedRisk", "class_risk", "individual_risk", "weighted_risk"), ".sdc"),
}

__all__ = [
    "Anonymisation",
    "Hierarchy",
    "Histogram",
    "MarketerRisk",
    "NoTransformation",
    "PopulationUniqueness",
    "RiskError",
    "RiskReport",
    "RiskSummary",
    "SampleRisks",
    "Target",
    "Transformation",
    "WeightedRisk",
    "anonymise",
    "apply_levels",
    "assess",
    "class_risk",
    "dankar",
    "equivalence_classes",
    "histogram",
    "individual_risk",
    "pitman",
    "population_size",
    "population_uniqueness",
    "release_table",
    "render",
    "render_anonymisation",
    "sample_risks",
    "sample_uniqueness",
    "search",
    "size_threshold",
    "snb",
    "suppression_mask",
    "weighted_risk",
    "zayatz",
]

assert set(__all__) == set(_WHERE)

__getattr__ = lazy_names(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
