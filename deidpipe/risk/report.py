"""One call that scores a table, a typed report, its stable JSON and a terminal table.

The JSON (``RiskReport.to_json``; documented in ``docs/risk.md``) is the object issue 11 specifies::

    {"records", "classes", "k",
     "prosecutor": {"records_at_risk", "highest_risk", "success_rate"},
     "journalist": {"records_at_risk", "highest_risk", "success_rate"},
     "marketer": {"success_rate"},
     "sample_uniqueness",
     "population_uniqueness": {"zayatz", "pitman", "snb", "dankar"},
     "population"}

plus, only when a weight column is given, ``"weighted": {"global_risk", "expected_reidentifications",
"highest_individual_risk", "records_at_risk"}`` (sdcMicro). A model without an estimate, and population
uniqueness without a population size, are ``null``. Only counts and figures: never a cell value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deidpipe.risk.classes import SIZE, check_columns, equivalence_classes, histogram_of_classes, suppressed_rows
from deidpipe.risk.errors import RiskError
from deidpipe.risk.models import PopulationUniqueness, population_size, population_uniqueness
from deidpipe.risk.sample import (
    MarketerRisk,
    RiskSummary,
    check_threshold,
    risks_from_sizes,
    sample_risks,
    sample_uniqueness,
)
from deidpipe.risk.sdc import WeightedRisk, weighted_risk

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

NO_POPULATION = PopulationUniqueness(None, None, None, None, None)


@dataclass(frozen=True)
class RiskReport:
    """Quasi-identifier risk of one table. ``records`` counts every row, fully suppressed ones (``suppressed``)
    included; ``classes``, ``k`` and every risk figure are over the rows in a class. ``population`` is the N the
    population models used (None: no population size or sampling fraction was given)."""

    records: int
    classes: int
    k: int
    prosecutor: RiskSummary
    journalist: RiskSummary
    marketer: MarketerRisk
    sample_uniqueness: float
    population_uniqueness: PopulationUniqueness
    population: int | None
    threshold: float = 0.2
    suppressed: int = 0
    quasi_identifiers: tuple[str, ...] = ()
    weighted: WeightedRisk | None = None
    class_sizes: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "records": self.records,
            "classes": self.classes,
            "k": self.k,
            "prosecutor": self.prosecutor.to_dict(),
            "journalist": self.journalist.to_dict(),
            "marketer": self.marketer.to_dict(),
            "sample_uniqueness": self.sample_uniqueness,
            "population_uniqueness": self.population_uniqueness.to_dict(),
            "population": self.population,
        }
        if self.weighted is not None:
            out["weighted"] = self.weighted.to_dict()
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(finite(self.to_dict()), indent=indent)


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity, at any depth of dicts and lists, as None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def assess(df: pl.DataFrame, qi: Sequence[str] | None = None, *, population: int | None = None,
           fraction: float | None = None, threshold: float = 0.2, weight: str | None = None,
           population_table: pl.DataFrame | None = None) -> RiskReport:
    """Score ``df``: equivalence classes over ``qi`` (default: every column but ``weight``), ARX's sample risks
    and population uniqueness, and with ``weight`` sdcMicro's individual and global risk.

    The population size N is ``population``, else round(rows / ``fraction``) (ARX), else the rows of
    ``population_table``, else the sum of the weights (rounded) when ``weight`` is given; with none of these, the
    population uniqueness figures are None. ``population_table`` also gives the journalist and marketer risk their
    population class sizes."""
    check_threshold(threshold)
    if population is not None and fraction is not None:
        raise RiskError("give either a population size or a sampling fraction, not both")
    qi = [c for c in df.columns if c != weight] if qi is None else list(qi)
    if weight is not None:
        check_columns(df, [weight], "weight")
        if weight in qi:
            raise RiskError(f"the weight column {weight!r} cannot also be a quasi-identifier")
    classes = equivalence_classes(df, qi, sort=False)  # only the sizes are used here
    suppressed = suppressed_rows(df, qi)
    hist = histogram_of_classes(classes, suppressed)
    if population_table is not None:
        risks = sample_risks(df, qi, threshold, population=population_table)
    else:
        risks = risks_from_sizes(classes.get_column(SIZE).to_numpy(), None, threshold)

    weighted = weighted_risk(df, qi, weight, threshold) if weight is not None else None
    n_pop: int | None
    if population is not None:
        if population <= 0:
            raise RiskError("the population size must be positive")
        n_pop = int(population)
    elif fraction is not None:
        n_pop = population_size(df.height, fraction)
    elif population_table is not None:
        n_pop = population_table.height
    elif weight is not None:
        import polars as pl

        n_pop = int(math.floor(float(df.get_column(weight).cast(pl.Float64).sum()) + 0.5))
    else:
        n_pop = None
    if n_pop is not None and n_pop < df.height:
        raise RiskError(f"the population size ({n_pop}) is smaller than the table ({df.height} rows)")
    pu = population_uniqueness(hist, n_pop) if n_pop is not None else NO_POPULATION
    return RiskReport(
        records=df.height,
        classes=hist.classes,
        k=hist.k,
        prosecutor=risks.prosecutor,
        journalist=risks.journalist,
        marketer=risks.marketer,
        sample_uniqueness=sample_uniqueness(hist),
        population_uniqueness=pu,
        population=n_pop,
        threshold=threshold,
        suppressed=suppressed,
        quasi_identifiers=tuple(qi),
        weighted=weighted,
        class_sizes=dict(hist.pairs()),
    )


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.6f}"


def render(report: RiskReport, console: Any = None) -> None:
    """Print ``report`` as rich tables: counts and figures only."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    head = Table(title="Quasi-identifier risk", show_header=False)
    head.add_column("what")
    head.add_column("value", justify="right")
    head.add_row("records", str(report.records))
    head.add_row("fully suppressed records (in no class)", str(report.suppressed))
    head.add_row("quasi-identifiers", str(len(report.quasi_identifiers)))
    head.add_row("equivalence classes", str(report.classes))
    head.add_row("k (smallest class)", str(report.k))
    head.add_row("sample uniqueness", _fmt(report.sample_uniqueness))
    head.add_row("population size N", "not given" if report.population is None else str(report.population))
    console.print(head)

    attacks = Table(title=f"Re-identification risk (threshold {report.threshold:g})")
    for col in ("attacker", "records at risk", "highest risk", "success rate"):
        attacks.add_column(col, justify="right" if col != "attacker" else "left")
    for name, r in (("prosecutor", report.prosecutor), ("journalist", report.journalist)):
        attacks.add_row(name, _fmt(r.records_at_risk), _fmt(r.highest_risk), _fmt(r.success_rate))
    attacks.add_row("marketer", "", "", _fmt(report.marketer.success_rate))
    console.print(attacks)

    pop = Table(title="Population uniqueness (share of the population unique)")
    pop.add_column("model")
    pop.add_column("estimate", justify="right")
    pu = report.population_uniqueness
    for name, value in (("Zayatz", pu.zayatz), ("Pitman", pu.pitman), ("SNB", pu.snb)):
        pop.add_row(name, _fmt(value))
    pop.add_row(f"Dankar's rule ({pu.dankar_model or 'n/a'})", _fmt(pu.dankar))
    console.print(pop)
    if report.population is None:
        console.print("Give --population N or --fraction F for population uniqueness.")

    if report.weighted is not None:
        w = Table(title="Weighted sample (sdcMicro)", show_header=False)
        w.add_column("what")
        w.add_column("value", justify="right")
        w.add_row("expected re-identifications", f"{report.weighted.expected_reidentifications:.4f}")
        w.add_row("global risk", _fmt(report.weighted.global_risk))
        w.add_row("highest individual risk", _fmt(report.weighted.highest_individual_risk))
        w.add_row("records above threshold", _fmt(report.weighted.records_at_risk))
        console.print(w)
