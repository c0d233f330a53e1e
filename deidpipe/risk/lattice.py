"""The generalisation lattice on a table collapsed to its distinct quasi-identifier tuples, and ARX's Loss metric.

Why collapse: every figure the search needs (class sizes, which records are suppressed, the loss) depends only on
how many records share each combination of original values. A table is therefore grouped once, by polars, into
its distinct tuples with their counts (adult.csv: 30,162 rows -> 20,000-odd tuples; a million rows of five
quasi-identifiers -> at most the product of their domains), and a node of the lattice (one level per
quasi-identifier) is evaluated on those tuples with numpy: each quasi-identifier's level-0 code is mapped to its
code at the node's level, the codes are combined into one integer key per tuple, and ``np.unique`` gives the
equivalence classes. Memory after the grouping does not depend on the number of rows.

The Loss metric is ARX's ``MetricMDNMLoss`` as ``Metric.createLossMetric()`` builds it (gs-factor 0.5, so
generalisation and suppression weigh the same; attribute weights 1; geometric mean over attributes), i.e. Iyengar's
generalised information loss with ARX's normalisation (``src/main/org/deidentifier/arx/metric/v2/``, ARX 3.9.2):

* a cell generalised to label g costs share(g) = (rows of the hierarchy under g) / (rows of the hierarchy)
  (``DomainShareMaterialized``); a suppressed record costs 1 in every attribute;
* attribute d sums its costs over all records, L_d, and normalises: (L_d - n / |domain_d|) / (n - n / |domain_d|),
  clipped at 0 and floored to 10 digits (``normalizeGeneralized``, ``Metric.round``); n counts every record;
* the node's loss is the geometric mean prod_d (1 + v_d)^(1/D) - 1 (``ILMultiDimensionalGeometricMean``).

The sum is kept as an exact integer numerator over |domain_d| (shares are integer counts over the hierarchy's
rows), so it does not depend on the order of summation. With every record unsuppressed the same formula is a lower
bound of the loss (a suppressed cell costs 1, at least its share), known for every node before any data pass: the
search (:mod:`deidpipe.risk.generalise`) visits nodes by increasing bound and stops once the bound passes the best
loss found, which makes it exact while evaluating only a part of the lattice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from deidpipe.risk.classes import SUPPRESSED, check_qi
from deidpipe.risk.errors import RiskError
from deidpipe.risk.hierarchy import Hierarchy

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

ROW = "__deidpipe_row"
COUNT = "__deidpipe_count"
FIRST = "__deidpipe_first"
_DIGITS = 1e10  # ARX's Metric.round: floor to 10 decimal digits
_KEY_LIMIT = 1 << 62
CHUNK_ROWS = 200_000
"""Rows encoded and grouped at a time (:func:`collapse`, and the suppression mask in :mod:`deidpipe.risk.release`)."""


@dataclass(frozen=True)
class Dimension:
    """One quasi-identifier's levels as integer arrays. Level-0 codes are the hierarchy's rows (plus one code for
    ``*`` when the hierarchy does not list it); ``maps[l][code0]`` is the code of the value at level l,
    ``numerators[l][code]`` the hierarchy rows under that label (share = numerator / ``domain``) and
    ``stars[l][code]`` whether the label is ``*``."""

    column: str
    hierarchy: Hierarchy
    maps: tuple[np.ndarray, ...]
    numerators: tuple[np.ndarray, ...]
    stars: tuple[np.ndarray, ...]
    domain: int

    @property
    def height(self) -> int:
        return len(self.maps)

    @property
    def level0(self) -> list[str]:
        """The level-0 labels in code order (the values the table's cells are encoded with)."""
        values = list(self.hierarchy.values)
        return values if SUPPRESSED in values else [*values, SUPPRESSED]

    def cardinality(self, level: int) -> int:
        return len(self.numerators[level])

    @classmethod
    def build(cls, hierarchy: Hierarchy) -> Dimension:
        rows = hierarchy.rows
        extra = SUPPRESSED not in hierarchy.values  # a null or '*' cell: '*' at every level
        maps, numerators, stars = [], [], []
        for level in range(hierarchy.height):
            codes: dict[str, int] = {}
            count: list[int] = []
            mapped = []
            for row in rows:
                code = codes.setdefault(row[level], len(codes))
                if code == len(count):
                    count.append(0)
                count[code] += 1
                mapped.append(code)
            if extra:
                code = codes.get(SUPPRESSED)
                if code is None:  # a label of its own, costing as much as a suppressed cell
                    code = codes[SUPPRESSED] = len(codes)
                    count.append(len(rows))
                mapped.append(code)
            labels = sorted(codes, key=codes.__getitem__)
            maps.append(np.asarray(mapped, dtype=np.int64))
            numerators.append(np.asarray(count, dtype=np.int64))
            stars.append(np.asarray([label == SUPPRESSED for label in labels], dtype=bool))
        return cls(hierarchy.column, hierarchy, tuple(maps), tuple(numerators), tuple(stars), len(rows))


@dataclass(frozen=True)
class Tuples:
    """A table collapsed to its distinct quasi-identifier tuples: ``codes[d]`` the level-0 codes of dimension d,
    ``counts`` how many records share the tuple, ``first`` the first row that holds it. Tuples are in order of
    first row, so that the first tuple of a class is the class's first record (ARX's representative)."""

    codes: tuple[np.ndarray, ...]
    counts: np.ndarray
    first: np.ndarray
    records: int

    @property
    def size(self) -> int:
        return len(self.counts)


def encode_expressions(dimensions: Sequence[Dimension]) -> list[pl.Expr]:
    """polars expressions that turn each quasi-identifier column into its level-0 codes (UInt32)."""
    import polars as pl

    out = []
    for dim in dimensions:
        old = dim.level0
        out.append(pl.col(dim.column).cast(pl.String, strict=False).fill_null(SUPPRESSED)
                   .replace_strict(old, list(range(len(old))), return_dtype=pl.UInt32).alias(dim.column))
    return out


def collapse(df: pl.DataFrame, dimensions: Sequence[Dimension], chunk: int = CHUNK_ROWS) -> Tuples:
    """Group ``df`` into its distinct tuples of level-0 codes. The rows are encoded and grouped ``chunk`` at a
    time (zero-copy slices) and the partial groups merged, so that what polars allocates on the way is bounded by
    the chunk and the distinct tuples, not by the table's rows."""
    import polars as pl

    qi = [d.column for d in dimensions]
    encode = encode_expressions(dimensions)
    parts = []
    for offset in range(0, max(df.height, 1), chunk):
        part = df.slice(offset, chunk).lazy().with_row_index(ROW, offset=offset).select([*encode, pl.col(ROW)])
        parts.append(part.group_by(qi).agg(pl.len().alias(COUNT), pl.col(ROW).min().alias(FIRST)).collect())
    grouped = pl.concat(parts) if len(parts) > 1 else parts[0]
    if len(parts) > 1:
        grouped = grouped.group_by(qi).agg(pl.col(COUNT).sum(), pl.col(FIRST).min())
    grouped = grouped.sort(FIRST)
    records = int(grouped.get_column(COUNT).sum()) if grouped.height else 0
    return Tuples(tuple(grouped.get_column(c).to_numpy().astype(np.int64) for c in qi),
                  grouped.get_column(COUNT).to_numpy().astype(np.int64),
                  grouped.get_column(FIRST).to_numpy().astype(np.int64), records)


@dataclass(frozen=True)
class Classes:
    """The equivalence classes of a node: ``inverse[t]`` the class of tuple t, ``sizes`` records per class,
    ``first`` the index of each class's first tuple (its representative), ``everything_suppressed`` the classes
    whose every quasi-identifier is ``*`` (in no class for the risk models, as in :mod:`deidpipe.risk.classes`)."""

    inverse: np.ndarray
    sizes: np.ndarray
    first: np.ndarray
    everything_suppressed: np.ndarray


def node_keys(dimensions: Sequence[Dimension], codes: Sequence[np.ndarray], levels: Sequence[int]) -> np.ndarray:
    """One int64 key per tuple, equal for tuples that the node maps to the same generalised values."""
    key = np.zeros(len(codes[0]) if codes else 0, dtype=np.int64)
    span = 1
    for dim, code, level in zip(dimensions, codes, levels, strict=True):
        card = dim.cardinality(level)
        if span * card >= _KEY_LIMIT:  # re-number densely before the mixed-radix key could overflow
            _, key = np.unique(key, return_inverse=True)
            span = int(key.max()) + 1 if key.size else 1
        key = key * card + dim.maps[level][code]
        span *= card
    return key


def classes_of(dimensions: Sequence[Dimension], tuples: Tuples, levels: Sequence[int]) -> Classes:
    key = node_keys(dimensions, tuples.codes, levels)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    sizes = np.bincount(inverse, weights=tuples.counts, minlength=len(first)).astype(np.int64)
    star = np.ones(len(first), dtype=bool)
    for dim, code, level in zip(dimensions, tuples.codes, levels, strict=True):
        star &= dim.stars[level][dim.maps[level][code[first]]]
    return Classes(inverse, sizes, first, star)


# --------------------------------------------------------------------------------------------------- the loss


@dataclass(frozen=True)
class Loss:
    """ARX's Loss of one node: ``value`` the aggregate (geometric mean) that ARX reports as the information
    loss, ``per_attribute`` the normalised loss of each quasi-identifier."""

    value: float
    per_attribute: tuple[float, ...]


class LossMetric:
    """ARX's ``MetricMDNMLoss`` (default parameters) over collapsed tuples, with exact integer sums."""

    def __init__(self, dimensions: Sequence[Dimension], tuples: Tuples) -> None:
        self.dimensions = tuple(dimensions)
        self.records = tuples.records
        # generalised[d][l]: sum over all records of the numerator of their label at level l (share * domain)
        self.generalised = tuple(
            tuple(int((tuples.counts * dim.numerators[lv][dim.maps[lv][code]]).sum()) for lv in range(dim.height))
            for dim, code in zip(self.dimensions, tuples.codes, strict=True))

    def normalised(self, d: int, numerator: float) -> float:
        """ARX's ``normalizeGeneralized`` of a sum given as numerator / domain."""
        dim = self.dimensions[d]
        n = float(self.records)
        low = n / dim.domain
        if n - low == 0.0:  # a one-value domain: ARX divides 0 by 0 and clips the NaN to 0
            return 0.0
        value = (numerator / dim.domain - low) / (n - low)
        value = value if value >= 0.0 else 0.0
        return math.floor(value * _DIGITS) / _DIGITS

    @staticmethod
    def aggregate(values: Sequence[float]) -> float:
        """``ILMultiDimensionalGeometricMean.getAggregate`` with every weight 1, in ARX's order of operations."""
        result = 1.0
        for v in values:
            result *= math.pow(v + 1.0, 1.0 / len(values))
        return result - 1.0

    def lower_bound(self, levels: Sequence[int]) -> float:
        """The loss of the node if no record were suppressed: a lower bound of its loss."""
        return self.aggregate([self.normalised(d, self.generalised[d][lv]) for d, lv in enumerate(levels)])

    def bounds(self, nodes: np.ndarray) -> np.ndarray:
        """:meth:`lower_bound` of every node (rows of ``nodes``), vectorised over the lattice."""
        result = np.ones(len(nodes), dtype=np.float64)
        dims = len(self.dimensions)
        for d in range(dims):
            per_level = np.asarray([self.normalised(d, g) for g in self.generalised[d]], dtype=np.float64)
            result *= np.power(per_level[nodes[:, d]] + 1.0, 1.0 / dims)
        return result - 1.0

    def loss(self, tuples: Tuples, levels: Sequence[int], suppressed: np.ndarray) -> Loss:
        """The node's loss with the tuples where ``suppressed`` is true suppressed (1 per cell)."""
        count = tuples.counts[suppressed]
        records = int(count.sum())
        values = []
        for d, (dim, code, level) in enumerate(zip(self.dimensions, tuples.codes, levels, strict=True)):
            shared = int((count * dim.numerators[level][dim.maps[level][code[suppressed]]]).sum())
            numerator = self.generalised[d][level] - shared + records * dim.domain
            values.append(self.normalised(d, numerator))
        return Loss(self.aggregate(values), tuple(values))

    def class_losses(self, classes: Classes, tuples: Tuples, levels: Sequence[int]) -> np.ndarray:
        """Each class's own loss as ARX ranks classes for suppression (``getInformationLossInternal`` of one
        entry: count * share per attribute, unnormalised, geometric mean)."""
        result = np.ones(len(classes.sizes), dtype=np.float64)
        dims = len(self.dimensions)
        for dim, code, level in zip(self.dimensions, tuples.codes, levels, strict=True):
            share = dim.numerators[level][dim.maps[level][code[classes.first]]] / float(dim.domain)
            result *= np.power(classes.sizes * share + 1.0, 1.0 / dims)
        return result - 1.0


def check_hierarchies(df: pl.DataFrame, qi: Sequence[str], hierarchies: dict[str, Hierarchy]) -> list[Dimension]:
    """The dimensions of ``qi`` in order; a QI without a hierarchy gets :meth:`Hierarchy.identity` (kept or
    suppressed). Every value of the table must be in its hierarchy (:meth:`Hierarchy.check`)."""
    import polars as pl

    qi = check_qi(df, qi)
    extra = sorted(set(hierarchies) - set(qi))
    if extra:
        raise RiskError(f"a hierarchy is given for column {extra[0]!r}, which is not a quasi-identifier")
    dims = []
    for column in qi:
        h = hierarchies.get(column)
        if h is None:
            h = Hierarchy.identity(column, df.get_column(column).cast(pl.String, strict=False).unique().to_list())
        elif h.column != column:
            raise RiskError(f"the hierarchy for column {column!r} was made for column {h.column!r}")
        h.check(df)
        dims.append(Dimension.build(h))
    return dims
