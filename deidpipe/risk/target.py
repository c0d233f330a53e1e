"""A release's risk target, as a policy states it (the ``risk_target`` section): :class:`ArchiveTarget`.

What the run does with it is in :mod:`deidpipe.risk.archive`; apart from it so that the policy can hold a target
without importing the header code that reads quasi-identifiers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deidpipe.risk.classes import SUPPRESSED
from deidpipe.risk.columns import QI_COLUMNS
from deidpipe.risk.errors import RiskError

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.risk.generalise import Target

#: Oldest age told apart: 90 and older are one class at every level (HIPAA's Safe Harbor top-coding).
TOP_AGE = 90
#: The built-in interval widths of ``age`` (years) and ``study_year`` (a decade).
AGE_WIDTHS = (5, 10, 20)
YEAR_WIDTHS = (10,)
#: Columns a policy may give an ARX hierarchy file for: one element each, whose value the label replaces.
FILE_COLUMNS = {"institution": "InstitutionName", "station": "StationName", "device_serial": "DeviceSerialNumber",
                "body_part": "BodyPartExamined"}
#: Columns a policy may give interval widths for.
WIDTH_COLUMNS = ("age", "study_year")


@dataclass(frozen=True)
class ArchiveTarget:
    """The policy's ``risk_target`` section: the risk a release must meet (``target``: k, highest or average
    risk, model, suppression limit; see :class:`deidpipe.risk.generalise.Target`), which quasi-identifiers count
    (``qi``, default all of :data:`deidpipe.risk.qi.QI_COLUMNS`) and hierarchy overrides (``hierarchies``:
    column -> interval widths or an ARX CSV file's path). ``levels`` is the run's choice (set by the run, never
    by the user): a column -> level tuple, or None before the choice."""

    target: Target
    qi: tuple[str, ...] = QI_COLUMNS
    hierarchies: tuple[tuple[str, str], ...] = ()
    levels: tuple[tuple[str, int], ...] | None = None
    #: Parsed ARX files: column -> rows (value, label1, ...), read once when the policy is loaded.
    files: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if len(set(self.qi)) != len(self.qi):
            raise RiskError("risk_target: a quasi-identifier is named twice in qi")
        unknown = [c for c in self.qi if c not in QI_COLUMNS]
        if unknown or not self.qi:
            raise RiskError(f"risk_target: unknown quasi-identifier(s) {', '.join(unknown) or '(none)'}; known: "
                            f"{', '.join(QI_COLUMNS)}")
        for column, spec in self.hierarchies:
            if column in WIDTH_COLUMNS:
                widths_of(column, spec)
            elif column not in FILE_COLUMNS:
                raise RiskError(f"risk_target: column {column!r} has only its built-in hierarchy (widths for "
                                f"{', '.join(WIDTH_COLUMNS)}; files for {', '.join(FILE_COLUMNS)})")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base_dir: Path = Path(".")) -> ArchiveTarget:
        """From the policy's YAML section: ``max_risk`` / ``k`` / ``average_risk``, ``model``, ``suppression``,
        ``population`` / ``fraction``, ``qi`` (list) and ``hierarchies`` (column -> widths or file)."""
        from deidpipe.risk.generalise import Target
        from deidpipe.risk.hierarchy import Hierarchy

        if not isinstance(data, Mapping):
            raise RiskError("risk_target must be a mapping (max_risk, k, model, suppression, qi, hierarchies)")
        known = {"max_risk", "k", "average_risk", "model", "suppression", "population", "fraction", "qi",
                 "hierarchies"}
        extra = sorted(set(data) - known)
        if extra:
            raise RiskError(f"risk_target: unknown key(s) {extra}")
        target = Target(**{k: data[k] for k in ("max_risk", "k", "average_risk", "model", "suppression",
                                                 "population", "fraction") if k in data})
        qi = data.get("qi", QI_COLUMNS)
        if isinstance(qi, str) or not isinstance(qi, Iterable):
            raise RiskError("risk_target: qi is a list of column names")
        specs = data.get("hierarchies") or {}
        if not isinstance(specs, Mapping):
            raise RiskError("risk_target: hierarchies maps a column to widths or a file")
        pairs, files = [], []
        for column, spec in specs.items():
            spec = ",".join(str(s) for s in spec) if isinstance(spec, list) else str(spec)
            pairs.append((str(column), spec))
            if column in FILE_COLUMNS:
                path = Path(spec) if Path(spec).is_absolute() else base_dir / spec
                files.append((str(column), Hierarchy.from_csv(str(column), path).rows))
        return cls(target, tuple(str(c) for c in qi), tuple(pairs), files=tuple(files))

    def with_levels(self, levels: Mapping[str, int]) -> ArchiveTarget:
        from dataclasses import replace

        return replace(self, levels=tuple(sorted((c, int(v)) for c, v in levels.items())))

    def summary(self) -> str:
        """One line for logs and reports: the target and the columns (no values)."""
        t = self.target
        goal = ", ".join(f"{name} {value}" for name, value in (("k", t.k), ("highest risk", t.max_risk),
                                                               ("average risk", t.average_risk))
                         if value is not None)
        return (f"{t.model} {goal}, at most {t.suppression:.0%} of patients suppressed, over "
                f"{', '.join(self.qi)}")


def widths_of(column: str, spec: str) -> tuple[int, ...]:
    """Interval widths from ``5,10,*`` (whole numbers, each a multiple of the one before; a last ``*`` is the
    top level every hierarchy has anyway)."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if parts and parts[-1] == SUPPRESSED:
        parts = parts[:-1]
    try:
        widths = tuple(int(p) for p in parts)
    except ValueError:
        raise RiskError(f"risk_target: {column} takes whole-number interval widths, then '*'") from None
    if not widths or any(w <= 0 for w in widths) or any(b % a for a, b in zip(widths, widths[1:], strict=False)):
        raise RiskError(f"risk_target: {column}'s widths must be positive, each a multiple of the one before")
    return widths
