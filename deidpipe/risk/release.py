"""Release a table: apply a chosen generalisation, suppress the records still at risk, and report it.

The pieces are separate because the archive pipeline needs them apart: it chooses the transformation once on a
per-patient table (:func:`deidpipe.risk.generalise.search`) and, on resume, re-applies a stored choice
(:func:`apply_levels` and :func:`suppression_mask`, which recompute the same suppressed records from the same table,
levels and target: the search's suppression rules are deterministic). :func:`anonymise` does all of it and scores
the table before and after with :func:`deidpipe.risk.assess`, so that ``deidpipe risk`` on the released file gives
the same figures.

Suppressed records keep their row and get ``*`` in every quasi-identifier (as ARX writes them), so a release has
as many rows as its source and other columns stay aligned; ``deidpipe risk`` puts such rows in no class. With
``suppressed="drop"`` they are left out instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from deidpipe.risk.classes import SUPPRESSED
from deidpipe.risk.errors import RiskError
from deidpipe.risk.generalise import Evaluation, Problem, Target, Transformation, search_problem
from deidpipe.risk.hierarchy import Hierarchy
from deidpipe.risk.lattice import CHUNK_ROWS, ROW, encode_expressions
from deidpipe.risk.models import population_size
from deidpipe.risk.report import RiskReport, assess, finite

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

Suppressed = Literal["star", "drop"]
_FLAG = "__deidpipe_suppressed"


def apply_levels(df: pl.DataFrame, hierarchies: Mapping[str, Hierarchy], levels: Mapping[str, int]) -> pl.DataFrame:
    """``df`` with each column of ``levels`` generalised to its level (one vectorised replace per column); other
    columns unchanged. A column in ``levels`` without a hierarchy is kept (level 0) or suppressed (level 1), as
    the search treats it."""
    import polars as pl

    exprs = []
    for column, level in levels.items():
        h = hierarchies.get(column)
        if h is None:
            if column not in df.columns:
                raise RiskError(f"unknown quasi-identifier column {column!r}")
            h = Hierarchy.identity(column, df.get_column(column).cast(pl.String, strict=False).unique().to_list())
        h.check(df)
        exprs.append(h.expression(int(level)))
    return df.with_columns(exprs)


def _mask(df: pl.DataFrame, problem: Problem, evaluation: Evaluation) -> pl.Series:
    """The evaluation's suppressed tuples as a boolean per row of ``df``: each chunk of rows encoded and joined
    on the level-0 codes with the suppressed tuples (bounded memory, as :func:`deidpipe.risk.lattice.collapse`)."""
    import polars as pl

    qi = problem.qi
    tuples = pl.DataFrame({c: pl.Series(codes, dtype=pl.UInt32) for c, codes in zip(qi, problem.sample.codes,
                                                                                        strict=True)})
    flagged = tuples.filter(pl.Series(evaluation.suppressed_tuples)).with_columns(pl.lit(True).alias(_FLAG)).lazy()
    encode = encode_expressions(problem.dimensions)
    parts = []
    for offset in range(0, df.height, CHUNK_ROWS):
        rows = (df.slice(offset, CHUNK_ROWS).lazy().with_row_index(ROW).select([*encode, pl.col(ROW)])
                .join(flagged, on=qi, how="left").sort(ROW).collect())
        parts.append(rows.get_column(_FLAG).fill_null(False))
    if not parts:
        return pl.Series("suppressed", [], dtype=pl.Boolean)
    return pl.concat(parts).alias("suppressed")


def suppression_mask(df: pl.DataFrame, qi: Sequence[str], hierarchies: Mapping[str, Hierarchy],
                     levels: Mapping[str, int], target: Target, *,
                     population_table: pl.DataFrame | None = None) -> pl.Series:
    """Which rows of ``df`` the given levels leave at risk and ``target`` suppresses (a boolean Series in row
    order). Raises :class:`RiskError` when more than the suppression limit would go: a stored choice that no
    longer fits the table."""
    problem = Problem(df, qi, hierarchies, target, population_table)
    ev = problem.evaluate([levels[c] for c in problem.qi])
    if not ev.passes:
        raise RiskError(f"these levels need {ev.suppressed} records suppressed, more than the limit of "
                        f"{problem.limit}")
    return _mask(df, problem, ev)


def release_table(df: pl.DataFrame, hierarchies: Mapping[str, Hierarchy], levels: Mapping[str, int], mask: pl.Series,
            suppressed: Suppressed = "star") -> pl.DataFrame:
    """The released table: ``levels`` applied, and the rows of ``mask`` given ``*`` in every quasi-identifier
    (``"star"``, as ARX) or left out (``"drop"``)."""
    import polars as pl

    if suppressed not in ("star", "drop"):
        raise RiskError("suppressed records are either starred ('star') or dropped ('drop')")
    if len(mask) != df.height:
        raise RiskError("the suppression mask must have one value per row")
    out = apply_levels(df, hierarchies, levels)
    if suppressed == "drop":
        return out.filter(~mask)
    return out.with_columns([pl.when(mask).then(pl.lit(SUPPRESSED)).otherwise(pl.col(c)).alias(c)
                             for c in levels])


@dataclass(frozen=True)
class Anonymisation:
    """What :func:`anonymise` did: the target, the chosen transformation (levels, suppressed records, ARX's loss),
    the search's effort, and the risk before and after (:class:`RiskReport`). Counts and figures only."""

    target: Target
    transformation: Transformation
    risk_before: RiskReport
    risk_after: RiskReport
    hierarchies: dict[str, str] = field(default_factory=dict)
    heights: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    suppressed_rows: Suppressed = "star"

    @property
    def levels(self) -> dict[str, int]:
        return self.transformation.levels

    @property
    def suppressed(self) -> int:
        return self.transformation.suppressed

    @property
    def loss(self) -> float:
        return self.transformation.loss

    @property
    def nodes_checked(self) -> int:
        return self.transformation.nodes_checked

    def to_dict(self) -> dict[str, Any]:
        t = self.transformation
        return {
            "target": self.target.to_dict(),
            "quasi_identifiers": list(t.levels),
            "hierarchies": {c: {"source": self.hierarchies.get(c, ""), "levels": self.heights.get(c)}
                            for c in t.levels},
            "levels": t.levels,
            "records": t.records,
            "suppressed": t.suppressed,
            "suppressed_rows": self.suppressed_rows,
            "loss": t.loss,
            "loss_relative": t.loss_relative,
            "loss_per_attribute": t.loss_per_attribute,
            "nodes_checked": t.nodes_checked,
            "lattice_size": t.lattice_size,
            "seconds": self.seconds,
            "risk_before": self.risk_before.to_dict(),
            "risk_after": self.risk_after.to_dict(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(finite(self.to_dict()), indent=indent)


def anonymise(df: pl.DataFrame, qi: Sequence[str], hierarchies: Mapping[str, Hierarchy], target: Target, *,
              population_table: pl.DataFrame | None = None,
              suppressed: Suppressed = "star") -> tuple[pl.DataFrame, Anonymisation]:
    """Choose the transformation (:func:`deidpipe.risk.generalise.search`), release ``df`` with it and score
    the table before and after. Returns the released table and an :class:`Anonymisation`.
    Raises :class:`deidpipe.risk.generalise.NoTransformation` when no node meets ``target``."""
    start = time.perf_counter()
    problem = Problem(df, qi, hierarchies, target, population_table)
    chosen, evaluation = search_problem(problem)
    mask = _mask(df, problem, evaluation)
    full = {d.column: d.hierarchy for d in problem.dimensions}
    released = release_table(df, full, chosen.levels, mask, suppressed)
    seconds = time.perf_counter() - start
    population_after = (apply_levels(population_table, full, chosen.levels)
                        if population_table is not None else None)
    scoring = {"population": target.population, "fraction": target.fraction, "threshold": target.threshold}
    before = assess(df, problem.qi, population_table=population_table, **scoring)
    if suppressed == "drop" and target.fraction is not None:  # N stays the source's: round(source rows / F)
        scoring = {**scoring, "fraction": None, "population": population_size(df.height, target.fraction)}
    after = assess(released, problem.qi, population_table=population_after, **scoring)
    return released, Anonymisation(
        target=target,
        transformation=chosen,
        risk_before=before,
        risk_after=after,
        hierarchies={d.column: d.hierarchy.source for d in problem.dimensions},
        heights={d.column: d.height for d in problem.dimensions},
        seconds=seconds,
        suppressed_rows=suppressed,
    )


def render_anonymisation(result: Anonymisation, console: Any = None) -> None:
    """Print ``result`` as rich tables: levels, counts and figures only, never a cell value."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = result.transformation
    levels = Table(title="Chosen generalisation")
    for col in ("quasi-identifier", "level", "of", "hierarchy", "loss"):
        levels.add_column(col, justify="left" if col in ("quasi-identifier", "hierarchy") else "right")
    for column, level in t.levels.items():
        top = result.heights.get(column)
        levels.add_row(column, str(level), "" if top is None else str(top - 1), result.hierarchies.get(column, ""),
                       f"{t.loss_per_attribute[column]:.6f}")
    console.print(levels)

    head = Table(title="Release", show_header=False)
    head.add_column("what")
    head.add_column("value", justify="right")
    tg = result.target
    wanted = [f"k >= {tg.min_class_size}" if tg.min_class_size is not None else "",
              f"average risk <= {tg.average_risk:g}" if tg.average_risk is not None else ""]
    head.add_row("target", f"{tg.model}: " + ", ".join(w for w in wanted if w))
    head.add_row("records", str(t.records))
    how = "starred" if result.suppressed_rows == "star" else "dropped"
    head.add_row(f"records suppressed ({how})", f"{t.suppressed} (limit {tg.limit(t.records)})")
    head.add_row("loss (ARX's Loss)", f"{t.loss:.6f}")
    head.add_row("loss relative to the lattice", f"{100 * t.loss_relative:.2f}%")
    head.add_row("nodes checked / lattice", f"{t.nodes_checked} / {t.lattice_size}")
    head.add_row("seconds", f"{result.seconds:.2f}")
    console.print(head)

    risk = Table(title=f"Risk before and after (threshold {tg.threshold:g})")
    for col in ("figure", "before", "after"):
        risk.add_column(col, justify="left" if col == "figure" else "right")
    b, a = result.risk_before, result.risk_after
    rows = [("k (smallest class)", str(b.k), str(a.k)), ("equivalence classes", str(b.classes), str(a.classes))]
    for name in ("prosecutor", "journalist"):
        rb, ra = getattr(b, name), getattr(a, name)
        rows += [(f"{name}: highest risk", f"{rb.highest_risk:.6f}", f"{ra.highest_risk:.6f}"),
                 (f"{name}: average risk (success rate)", f"{rb.success_rate:.6f}", f"{ra.success_rate:.6f}"),
                 (f"{name}: records at risk", f"{rb.records_at_risk:.6f}", f"{ra.records_at_risk:.6f}")]
    rows.append(("marketer: success rate", f"{b.marketer.success_rate:.6f}", f"{a.marketer.success_rate:.6f}"))
    rows.append(("sample uniqueness", f"{b.sample_uniqueness:.6f}", f"{a.sample_uniqueness:.6f}"))
    for row in rows:
        risk.add_row(*row)
    console.print(risk)
