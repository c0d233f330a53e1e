"""Sample-based re-identification risk: prosecutor, journalist and marketer risk as ARX computes them
(``org/deidentifier/arx/risk/RiskModelSampleSummary.java``, after El Emam's "Guide to the De-Identification of
Personal Health Information"), and sample uniqueness (``RiskModelSampleUniqueness.java``).

For each sample class j of size f_j, with F_j its size in the population table (F_j = f_j without one):

* prosecutor (the attacker knows the person is in the release): risk of a record 1/f_j;
  records at risk = share of records with 1/f_j > threshold; highest risk = 1/min f_j; success rate = classes / n.
* journalist (the attacker does not know whether the person is in it; needs the population table): risk 1/F_j;
  records at risk = share of sample records with 1/F_j > threshold; highest risk = 1/min F_j; success rate =
  max(classes / sum_j F_j, sum_j (f_j / F_j) / n). Without a population table ARX uses the sample as the
  population, and the journalist figures equal the prosecutor's.
* marketer (the attacker wants to re-identify as many as possible): success rate = sum_j (f_j / F_j) / n.

n is the number of records in a class (fully suppressed rows excluded). A table with no class gives zeros, as in
ARX.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from deidpipe.risk.classes import SIZE, Histogram, equivalence_classes
from deidpipe.risk.errors import RiskError

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl


@dataclass(frozen=True)
class RiskSummary:
    """ARX's ``RiskSummary``: records at risk (share of records whose risk exceeds the threshold), highest risk
    (of any record), success rate (share of records re-identified on average)."""

    records_at_risk: float
    highest_risk: float
    success_rate: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class MarketerRisk:
    success_rate: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class SampleRisks:
    threshold: float
    prosecutor: RiskSummary
    journalist: RiskSummary
    marketer: MarketerRisk


def check_threshold(threshold: float) -> None:
    if not (0.0 < threshold <= 1.0):
        raise RiskError("the risk threshold must be in (0, 1]")


def risks_from_sizes(sample_sizes: Sequence[int], population_sizes: Sequence[int] | None,
                     threshold: float) -> SampleRisks:
    """The three summaries from the classes' sizes in the sample (f_j) and in the population (F_j; None: the
    sample is the population), exactly as ``RiskModelSampleSummary``'s loops."""
    import numpy as np

    check_threshold(threshold)
    f = np.asarray(sample_sizes, dtype=np.int64)
    if not f.size:
        zero = RiskSummary(0.0, 0.0, 0.0)
        return SampleRisks(threshold, zero, zero, MarketerRisk(0.0))
    big_f = f if population_sizes is None else np.asarray(population_sizes, dtype=np.int64)
    if big_f.shape != f.shape:
        raise RiskError("one population size is needed per sample class")
    if (big_f < f).any():
        raise RiskError("a class is larger in the sample than in the population")
    # Vectorised (a million classes in milliseconds); sums of counts are exact integers, and the one sum of
    # fractions is math.fsum, correctly rounded, where ARX adds term by term.
    n = float(f.sum())
    classes = float(f.size)
    # Prosecutor
    at_risk = float(f[1.0 / f > threshold].sum())
    prosecutor = RiskSummary(at_risk / n, 1.0 / float(f.min()), classes / n)
    # Journalist
    j_at_risk = float(f[1.0 / big_f > threshold].sum())
    rc1 = float(big_f.sum())
    rc2 = math.fsum((f / big_f).tolist()) if population_sizes is not None else classes
    journalist = RiskSummary(j_at_risk / n, 1.0 / float(big_f.min()), max(classes / rc1, rc2 / n))
    marketer = MarketerRisk(rc2 / n)
    return SampleRisks(threshold, prosecutor, journalist, marketer)


def sample_risks(df: pl.DataFrame, qi: Sequence[str], threshold: float = 0.2,
                 population: pl.DataFrame | None = None) -> SampleRisks:
    """Prosecutor, journalist and marketer risk of ``df`` over ``qi``.

    ``population``: a table of the population the sample was drawn from (same quasi-identifier columns); every
    sample class must occur in it. Its fully suppressed rows are kept as a class of their own, as ARX groups the
    population with ``ignoreOutliers``."""
    import polars as pl

    check_threshold(threshold)
    classes = equivalence_classes(df, qi)
    sizes = [int(s) for s in classes.get_column(SIZE)]
    if population is None:
        return risks_from_sizes(sizes, None, threshold)
    from deidpipe.risk.classes import check_columns, normalised

    check_columns(population, qi)
    pop = normalised(population, qi).drop("_suppressed").group_by(list(qi)).len("_pop_size")
    joined = classes.join(pop, on=list(qi), how="left")
    if joined.get_column("_pop_size").null_count():
        raise RiskError(f"{joined.get_column('_pop_size').null_count()} sample classes do not occur in the "
                        "population table")
    return risks_from_sizes(sizes, [int(v) for v in joined.get_column("_pop_size").cast(pl.Int64)], threshold)


def sample_uniqueness(histogram: Histogram) -> float:
    """Share of the records (in a class) that are alone in their class (``RiskModelSampleUniqueness``)."""
    if histogram.records == 0:
        return 0.0
    return histogram.count_of_size(1) / histogram.records
