"""Equivalence classes over quasi-identifiers, and their size histogram, on any polars table.

Conventions (ARX's, ``org/deidentifier/arx/risk/RiskModelHistogram.java`` and ``DataHandleInput.internalIsOutlier``):

* Every quasi-identifier is compared as text: a column is cast to ``String`` and a null becomes ``"*"``, ARX's
  suppressed value. A row whose quasi-identifiers are all ``"*"`` (null or ``*``) is *fully suppressed*: it is in no
  equivalence class (ARX issue #259), so it does not count towards the classes, k, the class-based risks or sample
  uniqueness, but it is one of the table's ``records`` and it counts towards the population size N when N comes
  from a sampling fraction (N = round(records / fraction)).
* A row with only some quasi-identifiers suppressed is an ordinary row: ``"*"`` is a value like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deidpipe.risk.errors import RiskError

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

SUPPRESSED = "*"
SIZE = "_class_size"
WEIGHT = "_class_weight"


@dataclass(frozen=True)
class Histogram:
    """Equivalence classes grouped by size, as ARX's ``RiskModelHistogram``: ``sizes[i]`` records in each of
    ``counts[i]`` classes, ascending by size. ``suppressed`` counts the fully suppressed rows left out."""

    sizes: tuple[int, ...]
    counts: tuple[int, ...]
    suppressed: int = 0

    @property
    def classes(self) -> int:
        return sum(self.counts)

    @property
    def records(self) -> int:
        """Records in a class (fully suppressed rows excluded)."""
        return sum(s * c for s, c in zip(self.sizes, self.counts, strict=True))

    @property
    def k(self) -> int:
        """The smallest class size; 0 when there is no class."""
        return self.sizes[0] if self.sizes else 0

    def count_of_size(self, size: int) -> int:
        for s, c in zip(self.sizes, self.counts, strict=True):
            if s == size:
                return c
        return 0

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.sizes, self.counts, strict=True))

    @classmethod
    def from_sizes(cls, class_sizes: Sequence[int], suppressed: int = 0) -> Histogram:
        """From a list of class sizes (one per class)."""
        grouped: dict[int, int] = {}
        for size in class_sizes:
            if size <= 0:
                raise RiskError("a class size must be positive")
            grouped[int(size)] = grouped.get(int(size), 0) + 1
        ordered = sorted(grouped.items())
        return cls(tuple(s for s, _ in ordered), tuple(c for _, c in ordered), suppressed)


def check_columns(df: pl.DataFrame, columns: Sequence[str], what: str = "quasi-identifier") -> None:
    """A :class:`RiskError` naming the first column that ``df`` lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise RiskError(f"unknown {what} column {missing[0]!r} (the table has {len(df.columns)} columns)")


def check_qi(df: pl.DataFrame, qi: Sequence[str]) -> list[str]:
    """``qi`` as a list, checked: at least one column, none twice, each in ``df`` (else a :class:`RiskError`)."""
    qi = list(qi)
    if not qi:
        raise RiskError("no quasi-identifier column given")
    if len(set(qi)) != len(qi):
        raise RiskError("a quasi-identifier column is given twice")
    check_columns(df, qi)
    return qi


def normalised(df: pl.DataFrame, qi: Sequence[str]) -> pl.DataFrame:
    """The quasi-identifier columns as text, nulls as ``"*"``, plus a boolean ``_suppressed`` column."""
    import polars as pl

    qi = check_qi(df, qi)
    try:
        text = df.select([pl.col(c).cast(pl.String, strict=False).fill_null(SUPPRESSED).alias(c) for c in qi])
    except Exception as exc:  # noqa: BLE001 - polars' message may quote a value
        raise RiskError(f"a quasi-identifier column cannot be read as text ({type(exc).__name__})") from None
    return text.with_columns(pl.all_horizontal([pl.col(c) == SUPPRESSED for c in qi]).alias("_suppressed"))


def equivalence_classes(df: pl.DataFrame, qi: Sequence[str], weight: str | None = None, *,
                        sort: bool = True) -> pl.DataFrame:
    """One row per equivalence class: the quasi-identifiers (as text, nulls as ``"*"``), ``_class_size`` and, with
    ``weight``, ``_class_weight`` (the sum of the weights: sdcMicro's F_k). Fully suppressed rows are in no class.
    Sorted by size, then by the quasi-identifiers, so that the result is deterministic; ``sort=False`` skips that
    (the order is then arbitrary) where only the sizes are used: on a million mostly unique rows the sort of the
    text columns is most of the time."""
    import polars as pl

    text = normalised(df, qi)
    aggs = [pl.len().alias(SIZE)]
    if weight is not None:
        check_columns(df, [weight], "weight")
        text = text.with_columns(_weight_column(df, weight))
        aggs.append(pl.col(WEIGHT).sum().alias(WEIGHT))
    kept = text.filter(~pl.col("_suppressed")).drop("_suppressed")
    classes = kept.group_by(list(qi)).agg(aggs)
    classes = classes.with_columns(pl.col(SIZE).cast(pl.Int64))
    return classes.sort([SIZE, *qi]) if sort else classes


def _weight_column(df: pl.DataFrame, weight: str) -> pl.Series:
    import polars as pl

    try:
        w = df.get_column(weight).cast(pl.Float64, strict=True)
    except Exception as exc:  # noqa: BLE001 - a value that is not a number: never quoted
        raise RiskError(f"weight column {weight!r} is not numeric ({type(exc).__name__})") from None
    if w.null_count():
        raise RiskError(f"weight column {weight!r} has {w.null_count()} empty cells")
    if (w <= 0).any():
        raise RiskError(f"weight column {weight!r} has weights that are not positive")
    return w.alias(WEIGHT)


def suppressed_rows(df: pl.DataFrame, qi: Sequence[str]) -> int:
    """How many rows have every quasi-identifier suppressed (null or ``"*"``)."""
    return int(normalised(df, qi).get_column("_suppressed").sum())


def histogram(df: pl.DataFrame, qi: Sequence[str]) -> Histogram:
    """The class-size histogram of ``df`` over ``qi`` (ARX's ``RiskModelHistogram``)."""
    import polars as pl

    text = normalised(df, qi)
    suppressed = int(text.get_column("_suppressed").sum())
    sizes = (text.filter(~pl.col("_suppressed")).group_by(list(qi)).len()
             .group_by("len").agg(pl.len().alias("n")).sort("len"))
    return Histogram(tuple(int(s) for s in sizes.get_column("len")), tuple(int(c) for c in sizes.get_column("n")),
                     suppressed)


def histogram_of_classes(classes: pl.DataFrame, suppressed: int = 0) -> Histogram:
    """The histogram of an :func:`equivalence_classes` table."""
    import polars as pl

    sizes = classes.group_by(SIZE).agg(pl.len().alias("n")).sort(SIZE)
    return Histogram(tuple(int(s) for s in sizes.get_column(SIZE)), tuple(int(c) for c in sizes.get_column("n")),
                     suppressed)
