"""Generalisation hierarchies: for each value of a quasi-identifier, its coarser forms, level by level.

A :class:`Hierarchy` is ARX's "materialised" hierarchy: a table with one row per original value and one column
per level, level 0 being the value itself and the last level usually ``*`` (the value suppressed). It comes from

* an ARX hierarchy CSV file (:meth:`Hierarchy.from_csv`): no header, ``;`` or ``,`` separated (guessed from the
  first line, as ARX's own files are ``;``), so that a file exported from ARX or taken from ARX's repository works
  as it is;
* widths for numbers (:meth:`Hierarchy.from_widths`, ``age=5,10,20,*``): level i puts a value x in the interval
  ``[a, a + w_i[`` with a = floor(x / w_i) * w_i, written as ARX's interval builder writes its labels
  (``[20, 25[``); each width must be a multiple of the one before, so that intervals nest; a final ``*`` adds the
  suppressed level. The rows are the distinct values of the column in the table;
* nothing (:meth:`Hierarchy.identity`): the value, then ``*``.

Validation follows ARX's (``GeneralizationHierarchy``): every row has the same number of levels, no value is
defined twice, and a label at one level generalises to exactly one label at the next (otherwise the lattice is not
monotonic). Errors name the column, the file and counts, never a value (design principle 5).

A cell that is null or already ``*`` is a suppressed value (as in :mod:`deidpipe.risk.classes`): it stays ``*`` at
every level, whether or not the hierarchy lists ``*``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deidpipe.risk.classes import SUPPRESSED
from deidpipe.risk.errors import RiskError

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl


@dataclass(frozen=True)
class Hierarchy:
    """The generalisation levels of one quasi-identifier. ``rows[i][level]`` is the label of original value
    ``rows[i][0]`` at ``level``; ``source`` says where it came from (a file name, ``widths 5,10,*`` or
    ``identity``) for messages and reports."""

    column: str
    rows: tuple[tuple[str, ...], ...]
    source: str = ""

    def __post_init__(self) -> None:
        _validate(self.column, self.rows, self.source)

    # ------------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_rows(cls, column: str, rows: Iterable[Sequence[str]], source: str = "rows") -> Hierarchy:
        return cls(column, tuple(tuple(str(v) for v in row) for row in rows), source)

    @classmethod
    def from_csv(cls, column: str, path: Path | str, separator: str | None = None) -> Hierarchy:
        """An ARX hierarchy file: no header, one row per value, one column per level. Blank lines are skipped;
        the separator is ``;``, ``,`` or tab, guessed from the first line unless given."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise RiskError(f"hierarchy for column {column!r}: {path} is not a readable text file "
                            f"({type(exc).__name__})") from None
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise RiskError(f"hierarchy for column {column!r}: {path} is empty")
        sep = separator or max((";", ",", "\t"), key=lines[0].count)
        rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO("\n".join(lines)), delimiter=sep)]
        return cls(column, tuple(tuple(r) for r in rows), path.name)

    @classmethod
    def from_widths(cls, column: str, widths: Sequence[str | int | float], values: Iterable[str | None]) -> Hierarchy:
        """Intervals of the given widths over ``values`` (the column's cells; nulls and ``*`` are skipped);
        ``"*"`` as the last width adds the suppressed level."""
        spec = [str(w).strip() for w in widths]
        star = bool(spec) and spec[-1] == SUPPRESSED
        numbers = spec[:-1] if star else spec
        if not numbers and not star:
            raise RiskError(f"hierarchy for column {column!r}: no interval width given")
        try:
            parsed = [float(w) for w in numbers]
        except ValueError:
            raise RiskError(f"hierarchy for column {column!r}: widths must be numbers, then optionally '*'") from None
        for i, w in enumerate(parsed):
            if not (w > 0 and math.isfinite(w)):
                raise RiskError(f"hierarchy for column {column!r}: interval widths must be positive")
            if i and not _is_multiple(w, parsed[i - 1]):
                raise RiskError(f"hierarchy for column {column!r}: each width must be a multiple of the one "
                                "before, so that the intervals nest")
        distinct = sorted({v for v in values if v is not None and v != SUPPRESSED})
        bad = 0
        rows = []
        for value in distinct:
            try:
                x = float(value)
            except ValueError:
                bad += 1
                continue
            if not math.isfinite(x):
                bad += 1
                continue
            row = [value, *(_interval(x, w) for w in parsed)]
            if star:
                row.append(SUPPRESSED)
            rows.append(tuple(row))
        if bad:
            raise RiskError(f"hierarchy for column {column!r}: {bad} distinct values of the column are not "
                            "numbers, so interval widths cannot generalise them")
        if not rows:
            raise RiskError(f"hierarchy for column {column!r}: the column has no value to generalise")
        return cls(column, tuple(rows), "widths " + ",".join(spec))

    @classmethod
    def identity(cls, column: str, values: Iterable[str | None]) -> Hierarchy:
        """Two levels: the value, then ``*`` (the column kept or suppressed as a whole)."""
        distinct = sorted({v for v in values if v is not None and v != SUPPRESSED})
        if not distinct:
            distinct = [SUPPRESSED]
        return cls(column, tuple((v, SUPPRESSED) for v in distinct), "identity")

    # ------------------------------------------------------------------------------------------------ shape

    @property
    def height(self) -> int:
        """The number of levels, level 0 (the original value) included: levels run 0 .. height - 1."""
        return len(self.rows[0])

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(r[0] for r in self.rows)

    def labels(self, level: int) -> list[str]:
        """The label of every row at ``level``, in row order."""
        self._check_level(level)
        return [r[level] for r in self.rows]

    def shares(self, level: int) -> dict[str, float]:
        """ARX's domain share of each label at ``level`` (``DomainShareMaterialized``): the share of the
        hierarchy's rows that it covers. Level 0 gives 1/rows, ``*`` gives 1. This is the per-cell loss that
        ARX's Loss metric (Iyengar's generalised information loss) charges a value generalised to the label."""
        counts: dict[str, int] = {}
        for label in self.labels(level):
            counts[label] = counts.get(label, 0) + 1
        size = float(len(self.rows))
        return {label: c / size for label, c in counts.items()}

    def _check_level(self, level: int) -> None:
        if not (0 <= level < self.height):
            raise RiskError(f"hierarchy for column {self.column!r} has levels 0 to {self.height - 1}, "
                            f"not {level}")

    # ------------------------------------------------------------------------------------------- with polars

    def missing(self, series: pl.Series) -> int:
        """How many distinct values of ``series`` (as text; nulls and ``*`` excepted) the hierarchy lacks."""
        import polars as pl

        text = series.cast(pl.String, strict=False).drop_nulls().unique()
        present = pl.DataFrame({"v": text.filter(text != SUPPRESSED)})
        return present.join(pl.DataFrame({"v": list(self.values)}, schema={"v": pl.String}), on="v", how="anti").height

    def check(self, df: pl.DataFrame) -> None:
        """A :class:`RiskError` naming the column and the count of its values not in the hierarchy."""
        if self.column not in df.columns:
            raise RiskError(f"a hierarchy is given for column {self.column!r}, which the table does not have")
        missing = self.missing(df.get_column(self.column))
        if missing:
            raise RiskError(f"column {self.column!r}: {missing} distinct values of the table are not in its "
                            f"hierarchy ({self.source or 'given'})")

    def expression(self, level: int) -> pl.Expr:
        """A polars expression that generalises the column to ``level`` (a vectorised replace, no Python loop
        over rows); null and ``*`` cells become ``*``. Values missing from the hierarchy must have been ruled out
        by :meth:`check` (``replace_strict`` raises on them)."""
        import polars as pl

        self._check_level(level)
        col = pl.col(self.column).cast(pl.String, strict=False).fill_null(SUPPRESSED)
        if level == 0:
            return col.alias(self.column)
        old = [*self.values, SUPPRESSED] if SUPPRESSED not in self.values else list(self.values)
        new = [*self.labels(level), SUPPRESSED] if SUPPRESSED not in self.values else self.labels(level)
        return col.replace_strict(old, new, return_dtype=pl.String).alias(self.column)


def parse_spec(spec: str, df: pl.DataFrame | None = None, separator: str | None = None) -> Hierarchy:
    """``COLUMN=FILE`` or ``COLUMN=5,10,20,*`` (the command line's ``--hierarchy``): widths when the right side
    is a comma-separated list of numbers and ``*``, otherwise a file. Widths need ``df`` (the column's values)."""
    column, sep, rhs = spec.partition("=")
    column, rhs = column.strip(), rhs.strip()
    if not sep or not column or not rhs:
        raise RiskError("a hierarchy is given as COLUMN=FILE or COLUMN=WIDTH,WIDTH,...,*")
    parts = [p.strip() for p in rhs.split(",")]
    if all(_is_number(p) or p == SUPPRESSED for p in parts) and not Path(rhs).is_file():
        if df is None or column not in df.columns:
            raise RiskError(f"a hierarchy is given for column {column!r}, which the table does not have")
        import polars as pl

        values = df.get_column(column).cast(pl.String, strict=False).unique().to_list()
        return Hierarchy.from_widths(column, parts, values)
    path = Path(rhs)
    if not path.is_file():
        raise RiskError(f"hierarchy for column {column!r}: {path}: no such file")
    return Hierarchy.from_csv(column, path, separator)


# ---------------------------------------------------------------------------------------------------- helpers


def _validate(column: str, rows: tuple[tuple[str, ...], ...], source: str) -> None:
    where = f"hierarchy for column {column!r}" + (f" ({source})" if source else "")
    if not rows:
        raise RiskError(f"{where} has no row")
    height = len(rows[0])
    for i, row in enumerate(rows, start=1):
        if len(row) != height:
            raise RiskError(f"{where}: row {i} has {len(row)} levels, row 1 has {height}")
        if any(cell == "" for cell in row):
            raise RiskError(f"{where}: row {i} has an empty cell")
    firsts = [r[0] for r in rows]
    duplicates = len(firsts) - len(set(firsts))
    if duplicates:
        raise RiskError(f"{where}: {duplicates} values are defined on more than one row")
    for level in range(height - 1):
        parent: dict[str, str] = {}
        clashes: set[str] = set()
        for row in rows:
            seen = parent.setdefault(row[level], row[level + 1])
            if seen != row[level + 1]:
                clashes.add(row[level])
        if clashes:
            raise RiskError(f"{where}: {len(clashes)} labels at level {level} generalise to more than one label "
                            f"at level {level + 1} (not a hierarchy)")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _is_multiple(w: float, previous: float) -> bool:
    ratio = w / previous
    return abs(ratio - round(ratio)) < 1e-9 and round(ratio) >= 1


def _number(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


def _interval(x: float, width: float) -> str:
    low = math.floor(x / width) * width
    return f"[{_number(low)}, {_number(low + width)}["
