"""sdcMicro's individual risk and global risk for weighted samples (sdcTools/sdcMicro, ``R/indivRisk.R`` and
``R/measure_risk.R``; Benedetti and Franconi's estimator as Franconi and Polettini approximate it).

For a record in a class with f_k records in the sample and F_k = the sum of their sampling weights (the estimated
class size in the population), p_k = f_k / F_k and the record's risk r_k is

* ``approx`` (sdcMicro's default in ``measure_risk``):
  f_k = 1: p/(1-p) * log(1/p);  f_k = 2: p/(1-p) - (p/(1-p))^2 * log(1/p);  f_k > 2: p / (f_k - (1-p));
* ``exact``: as ``approx`` for f_k <= 2; for f_k > 2 the series of Benedetti and Franconi (``indivRisk``'s
  ``method = "exact"``);
* r_k = 1/f_k wherever f_k = F_k (the whole class is in the sample).

Global risk: the expected number of re-identifications sum_i r_i over the records, and the global risk, its
share of the records. sdcMicro treats a missing key value as matching any value; deidpipe (like ARX) treats a null
as the suppressed value ``*``, and leaves fully suppressed rows out (they are in no class), so the global risk is
over the records in a class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from deidpipe.risk.classes import SIZE, WEIGHT, equivalence_classes
from deidpipe.risk.errors import RiskError

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl


def class_risk(fk: float, big_fk: float, method: str = "approx") -> float:
    """sdcMicro's r_k for one class (``indivRisk``, ``survey = TRUE``, ``qual = 1``)."""
    if method not in ("approx", "exact"):
        raise RiskError("method must be 'approx' or 'exact'")
    if fk == big_fk:
        return 1.0 / fk
    with np.errstate(all="ignore"):
        pk = np.float64(fk) / np.float64(big_fk)
        if fk == 1:
            return float((pk / (1 - pk)) * np.log(1 / pk))
        if fk == 2:
            return float((pk / (1 - pk)) - ((pk / (1 - pk)) ** 2) * np.log(1 / pk))
        if method == "approx":
            return float(pk / (fk - (1 - pk)))
        return float(_exact(int(fk), pk))


def _exact(fk: int, pk: np.float64) -> np.float64:
    """``indivRisk``'s exact series for f_k > 2 (A, B, BB, eins, drei as there)."""
    a = (pk ** (1 - fk) - 1) / (fk - 1)

    def b(i: int) -> np.float64:
        return ((fk - 1 - i) ** 2 / ((i + 1) * (fk - 2 - i)) * (pk ** (i + 2 - fk) - 1) / (pk ** (i + 1 - fk) - 1))

    bb = np.float64(0.0)
    for m in range(0, fk - 2):  # R: for (m in 0:(fk - 3))
        prod = np.float64(1.0)
        for m2 in range(0, m + 1):
            prod = prod * b(m2)
        bb = bb + (-1) ** (m + 1) * prod
    eins = (pk / (1 - pk)) ** fk
    drei = (-1) ** fk * np.log(pk)
    return eins * ((a * (1 + bb)) + drei)


@dataclass(frozen=True)
class WeightedRisk:
    """sdcMicro's figures for a weighted sample: ``expected_reidentifications`` = sum of the records' individual
    risks (``global_risk_ER``), ``global_risk`` = that over the records, ``highest_individual_risk``, and
    ``records_at_risk`` = share of records whose individual risk exceeds the threshold."""

    global_risk: float
    expected_reidentifications: float
    highest_individual_risk: float
    records_at_risk: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def individual_risk(df: pl.DataFrame, qi: Sequence[str], weight: str, method: str = "approx") -> pl.Series:
    """Each row's individual risk r_k (Float64; null for a fully suppressed row), in the table's row order."""
    import polars as pl

    classes = _risk_classes(df, qi, weight, method)
    from deidpipe.risk.classes import normalised

    text = normalised(df, qi).with_row_index("_row")
    joined = text.join(classes.select([*qi, "_risk"]), on=list(qi), how="left").sort("_row")
    risk = joined.select(pl.when(pl.col("_suppressed")).then(None).otherwise(pl.col("_risk")).alias("risk"))
    return risk.get_column("risk")


def _risk_classes(df: pl.DataFrame, qi: Sequence[str], weight: str, method: str) -> pl.DataFrame:
    import polars as pl

    classes = equivalence_classes(df, qi, weight=weight)
    risks = [class_risk(float(f), float(w), method) for f, w in
             zip(classes.get_column(SIZE), classes.get_column(WEIGHT), strict=True)]
    return classes.with_columns(pl.Series("_risk", risks, dtype=pl.Float64))


def weighted_risk(df: pl.DataFrame, qi: Sequence[str], weight: str, threshold: float = 0.2,
                  method: str = "approx") -> WeightedRisk:
    """Global risk and expected re-identifications (``measure_risk``) of a weighted sample."""
    classes = _risk_classes(df, qi, weight, method)
    if classes.height == 0:
        return WeightedRisk(0.0, 0.0, 0.0, 0.0)
    sizes = classes.get_column(SIZE).to_numpy().astype(np.float64)
    risks = classes.get_column("_risk").to_numpy()
    records = float(sizes.sum())
    expected = float(np.sum(sizes * risks))
    highest = float(np.max(risks))
    at_risk = float(np.sum(sizes[risks > threshold])) / records
    if math.isnan(expected):
        raise RiskError("the individual risk is undefined for these weights (a class weight below its size?)")
    return WeightedRisk(expected / records, expected, highest, at_risk)
