"""Choose a generalisation: the lattice node with the least loss (ARX's Loss) whose risk meets a target after
suppressing at most a given share of the records.

Targets (:class:`Target`), in ARX's terms (``org/deidentifier/arx/criteria``):

* ``k`` or ``max_risk`` (the *highest* risk of any record): every equivalence class has at least k records, with
  k = ``size_threshold(max_risk)`` (ARX's ``ParameterTranslation.getSizeThreshold``: 0.2 -> 5, 0.1 -> 10). The
  records of smaller classes are suppressed (ARX's ``KAnonymity``; for the journalist model the class's size in
  the population table counts).
* ``average_risk``: the average risk, 1 / (average class size) for the prosecutor (ARX's
  ``AverageReidentificationRisk``; ``deidpipe risk``'s prosecutor "success rate"), the marketer's success rate
  sum_j (f_j / F_j) / n, or the journalist's max(classes / sum_j F_j, that). The smallest classes are suppressed
  first, ties broken by the class's own loss and then its first record, until the average meets the target
  (ARX's ``HashGroupifyDistribution.suppressWhileNotFulfilledBinary``).

Both may be given (ARX checks ``k`` first, then the average on the classes left). A node *meets* the target when at
most floor(suppression * records) records had to be suppressed. Classes whose every quasi-identifier is ``*`` are
in no class (as in :mod:`deidpipe.risk.classes`; ARX's "completely generalised" classes): never suppressed, never
at risk.

Search: the lower bound of each node's loss (:meth:`LossMetric.lower_bound`) is known without a data pass. Nodes
are visited from the top of the lattice down (by total level, then bound); a node is skipped when its bound
exceeds the best loss found so far or when a node above it failed the target. The latter uses the criteria's
monotonicity: a generalisation merges classes, so if a node fails, every node below it fails. ARX relies on it for
k-anonymity and the prosecutor's average risk (``monotonicWithSuppression`` true in both); for the marketer's and
journalist's average against a population table it is not guaranteed, and those searches skip on the bound only.
The result is the exact optimum (ties: the lower total level, then the lexicographically smaller levels; ARX's
``trackOptimum`` prefers the lower total level too). On adult.csv it checks a few hundred of the 6,480 nodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from deidpipe.risk.errors import RiskError
from deidpipe.risk.hierarchy import Hierarchy
from deidpipe.risk.lattice import (
    Classes,
    Dimension,
    Loss,
    LossMetric,
    Tuples,
    check_hierarchies,
    classes_of,
    collapse,
)

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

Model = Literal["prosecutor", "journalist", "marketer"]
MODELS: tuple[str, ...] = ("prosecutor", "journalist", "marketer")
MAX_NODES = 2_000_000
"""Lattices larger than this are refused: the search keeps a few arrays over all nodes."""

_RELATIVE_THRESHOLD_PRECISION = 0.01  # ARX's ParameterTranslation.RELATIVE_THRESHOLD_PRECISION


class NoTransformation(RiskError):
    """No node of the lattice meets the target within the suppression limit."""


def size_threshold(risk: float) -> int:
    """The smallest class size whose risk 1/size is at most ``risk``, as ARX rounds it
    (``ParameterTranslation.getSizeThreshold``: 1/0.3 = 3.33 -> 4, but 1/(1/3 - 1e-12) -> 3)."""
    if not (0.0 < risk <= 1.0):
        raise RiskError("a risk threshold must be in (0, 1]")
    size = 1.0 / risk
    floor = math.floor(size)
    if (1.0 / floor) - (1.0 / size) >= _RELATIVE_THRESHOLD_PRECISION * risk:
        floor += 1.0
    return int(floor)


@dataclass(frozen=True)
class Target:
    """What the released table must meet. ``k`` / ``max_risk``: the highest risk of a record; ``average_risk``:
    the average risk; ``model``: whose risk (prosecutor: 1/f_j; journalist: 1/F_j with F_j the class's size in a
    population table; marketer: average only). Without a population table the journalist's and marketer's
    figures equal the prosecutor's (ARX then takes the sample as the population). ``suppression``: the largest
    share of records that may be suppressed. ``population`` / ``fraction`` (N, or N = round(rows / F)) and
    ``threshold`` only feed the risk reports before and after (population uniqueness, records at risk)."""

    k: int | None = None
    max_risk: float | None = None
    average_risk: float | None = None
    model: Model = "prosecutor"
    suppression: float = 0.05
    population: int | None = None
    fraction: float | None = None
    threshold: float = 0.2

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise RiskError(f"the model must be one of {', '.join(MODELS)}")
        if self.k is None and self.max_risk is None and self.average_risk is None:
            raise RiskError("give a target: k, a highest risk or an average risk")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise RiskError("k must be a whole number of at least 1")
        for name in ("max_risk", "average_risk", "suppression", "threshold", "fraction"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise RiskError(f"the {name.replace('_', ' ')} must be a number")  # YAML's true is not 1.0
        for name in ("max_risk", "average_risk"):
            value = getattr(self, name)
            if value is not None and not (0.0 < value <= 1.0):
                raise RiskError(f"the {name.replace('_', ' ')} must be in (0, 1]")
        if self.model == "marketer" and (self.k is not None or self.max_risk is not None):
            raise RiskError("the marketer model has only an average risk: give an average risk, not k or a "
                            "highest risk")
        if not (0.0 <= self.suppression <= 1.0):
            raise RiskError("the suppression limit must be in [0, 1]")
        if self.population is not None and self.fraction is not None:
            raise RiskError("give either a population size or a sampling fraction, not both")
        if not (0.0 < self.threshold <= 1.0):
            raise RiskError("the risk threshold must be in (0, 1]")

    @property
    def min_class_size(self) -> int | None:
        """The k that ``k`` and ``max_risk`` together require (None: no highest-risk target)."""
        sizes = [s for s in (self.k, None if self.max_risk is None else size_threshold(self.max_risk))
                 if s is not None]
        return max(sizes) if sizes else None

    def limit(self, records: int) -> int:
        """How many records may be suppressed: floor(share * records), as ARX's absolute suppression limit."""
        return int(math.floor(self.suppression * records))

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["min_class_size"] = self.min_class_size
        return out


@dataclass(frozen=True)
class Evaluation:
    """One node checked: does it meet the target, how many records it suppresses (``suppressed_tuples`` marks
    the collapsed tuples), and its loss (None for a node that fails: it cannot be chosen)."""

    levels: tuple[int, ...]
    passes: bool
    suppressed: int
    suppressed_tuples: np.ndarray
    loss: Loss | None


class Problem:
    """A table prepared for the search: its dimensions, its collapsed tuples (and the population table's, for the
    journalist and marketer models), the loss metric and the suppression limit."""

    def __init__(self, df: pl.DataFrame, qi: Sequence[str], hierarchies: Mapping[str, Hierarchy], target: Target,
                 population_table: pl.DataFrame | None = None) -> None:
        self.target = target
        self.dimensions: list[Dimension] = check_hierarchies(df, qi, dict(hierarchies))
        self.qi = [d.column for d in self.dimensions]
        self.sample = collapse(df, self.dimensions)
        self.metric = LossMetric(self.dimensions, self.sample)
        self.limit = target.limit(self.sample.records)
        self.population: np.ndarray | None = None  # population counts aligned with self.tuples
        self.tuples: Tuples = self.sample
        if population_table is not None and target.model != "prosecutor":
            for dim in self.dimensions:
                dim.hierarchy.check(population_table)
            pop = collapse(population_table, self.dimensions)
            u = self.sample.size
            self.tuples = Tuples(tuple(np.concatenate([s, p]) for s, p in zip(self.sample.codes, pop.codes,
                                                                                strict=True)),
                                 np.concatenate([self.sample.counts, np.zeros(pop.size, dtype=np.int64)]),
                                 np.concatenate([self.sample.first, pop.first + len(df)]), self.sample.records)
            self.population = np.concatenate([np.zeros(u, dtype=np.int64), pop.counts])
            bottom = self._classes([0] * len(self.dimensions))
            missing = int((self._population_sizes(bottom)[bottom.inverse[:u]] == 0).sum())
            if missing:
                raise RiskError(f"{missing} distinct records of the table do not occur in the population table")
        # Pruning on failure is sound only for monotonic criteria (see the module's docstring).
        self.monotone = target.average_risk is None or target.model == "prosecutor" or self.population is None

    @property
    def heights(self) -> list[int]:
        return [d.height for d in self.dimensions]

    def _classes(self, levels: Sequence[int]) -> Classes:
        return classes_of(self.dimensions, self.tuples, levels)

    def _population_sizes(self, classes: Classes) -> np.ndarray:
        if self.population is None:
            return classes.sizes
        return np.bincount(classes.inverse, weights=self.population, minlength=len(classes.sizes)).astype(np.int64)

    def evaluate(self, levels: Sequence[int]) -> Evaluation:
        """Check one node: which classes are suppressed, whether the target is met, and (if so) the loss."""
        levels = tuple(int(v) for v in levels)
        classes = self._classes(levels)
        f = classes.sizes
        big_f = self._population_sizes(classes)
        eligible = (f > 0) & ~classes.everything_suppressed
        suppressed = np.zeros(len(f), dtype=bool)
        k = self.target.min_class_size
        if k is not None:
            suppressed = eligible & (big_f < k)
        count = int(f[suppressed].sum())
        if count <= self.limit and self.target.average_risk is not None:
            count += self._suppress_for_average(classes, f, big_f, eligible & ~suppressed, suppressed, levels)
        passes = count <= self.limit
        per_tuple = suppressed[classes.inverse[:self.sample.size]]
        loss = self.metric.loss(self.sample, levels, per_tuple) if passes else None
        return Evaluation(levels, passes, count, per_tuple, loss)

    def _suppress_for_average(self, classes: Classes, f: np.ndarray, big_f: np.ndarray, candidates: np.ndarray,
                              suppressed: np.ndarray, levels: tuple[int, ...]) -> int:
        """Suppress the fewest smallest classes (ARX's order) after which the average risk meets the target;
        marks them in ``suppressed`` and returns their records."""
        index = np.flatnonzero(candidates)
        if not index.size:
            return 0
        own_loss = self.metric.class_losses(classes, self.tuples, levels)[index]
        order = index[np.lexsort((classes.first[index], own_loss, f[index]))]
        fs = f[order].astype(np.float64)
        # remaining after suppressing the first m classes, m = 0 .. len: suffix sums
        records_left = np.concatenate([np.cumsum(fs[::-1])[::-1], [0.0]])
        classes_left = np.arange(len(fs), -1, -1, dtype=np.float64)
        risk = self.target.average_risk
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.population is None:  # every model: 1 / average class size, as ARX computes it
                ok = 1.0 / (records_left / classes_left) <= risk
            else:
                ratio = f[order] / big_f[order].astype(np.float64)
                marketer = np.concatenate([np.cumsum(ratio[::-1])[::-1], [0.0]]) / records_left
                if self.target.model == "marketer":
                    ok = marketer <= risk
                else:
                    pop_left = np.concatenate([np.cumsum(big_f[order][::-1])[::-1], [0]]).astype(np.float64)
                    ok = np.maximum(classes_left / pop_left, marketer) <= risk
        ok[-1] = True  # nothing left: ARX's empty distribution meets every average
        m = int(np.argmax(ok))
        suppressed[order[:m]] = True
        return int(fs[:m].sum())


@dataclass(frozen=True)
class Transformation:
    """The node the search chose: ``levels`` per quasi-identifier, ``suppressed`` records, ``loss`` (ARX's
    reported information loss), ``loss_per_attribute``, ``loss_relative`` (as ARX's GUI shows it: between the
    lattice's lowest and highest score, the bottom's and the top's bounds), the number of nodes checked and in
    the lattice."""

    levels: dict[str, int]
    suppressed: int
    records: int
    loss: float
    loss_per_attribute: dict[str, float]
    loss_relative: float
    nodes_checked: int
    lattice_size: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def lattice_nodes(heights: Sequence[int]) -> np.ndarray:
    """Every node of the lattice as a row of levels."""
    size = math.prod(heights)
    if size > MAX_NODES:
        raise RiskError(f"the generalisation lattice has {size} nodes, more than {MAX_NODES}: give fewer "
                        "quasi-identifiers or hierarchies with fewer levels")
    return np.indices(heights, dtype=np.int32).reshape(len(heights), -1).T


def search_problem(problem: Problem) -> tuple[Transformation, Evaluation]:
    """The search on a prepared :class:`Problem` (see the module's docstring); also returns the chosen node's
    :class:`Evaluation` so that callers can suppress without checking it again."""
    nodes = lattice_nodes(problem.heights)
    bounds = problem.metric.bounds(nodes)
    total = nodes.sum(axis=1)
    keys = [nodes[:, d] for d in reversed(range(nodes.shape[1]))]
    order = np.lexsort((*keys, bounds, -total))
    failing = np.zeros(len(nodes), dtype=bool)
    best: Evaluation | None = None
    best_key: tuple[float, int, tuple[int, ...]] = (math.inf, 0, ())
    checked = 0
    for pos, i in enumerate(order):
        if failing[i] or bounds[i] > best_key[0]:
            continue
        ev = problem.evaluate(nodes[i])
        checked += 1
        if ev.passes:
            assert ev.loss is not None
            key = (ev.loss.value, int(total[i]), ev.levels)
            if key < best_key:
                best, best_key = ev, key
        elif problem.monotone:  # every node below a failing node fails
            rest = order[pos + 1:]
            rest = rest[~failing[rest] & (bounds[rest] <= best_key[0])]
            failing[rest[np.all(nodes[rest] <= nodes[i], axis=1)]] = True
    if best is None or best.loss is None:
        raise NoTransformation("no generalisation meets the target with at most "
                               f"{problem.limit} records suppressed")
    bottom, top = float(bounds[0]), float(bounds[-1])  # np.indices: first row all 0, last row all at the top
    relative = 0.0 if top == bottom else (best.loss.value - bottom) / (top - bottom)
    qi = problem.qi
    result = Transformation(
        levels=dict(zip(qi, best.levels, strict=True)),
        suppressed=best.suppressed,
        records=problem.sample.records,
        loss=best.loss.value,
        loss_per_attribute=dict(zip(qi, best.loss.per_attribute, strict=True)),
        loss_relative=relative,
        nodes_checked=checked,
        lattice_size=len(nodes),
    )
    return result, best


def search(df: pl.DataFrame, qi: Sequence[str], hierarchies: Mapping[str, Hierarchy], target: Target, *,
           population_table: pl.DataFrame | None = None) -> Transformation:
    """The transformation with the least loss that meets ``target`` on ``df`` (see the module's docstring).
    A quasi-identifier without a hierarchy is kept or suppressed as a whole. Raises :class:`NoTransformation`
    when no node meets the target, :class:`RiskError` on bad input."""
    return search_problem(Problem(df, qi, hierarchies, target, population_table))[0]
