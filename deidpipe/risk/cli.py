"""``deidpipe risk TABLE``: quasi-identifier risk of a CSV or Parquet table. polars loads only when it runs.

With a target (``--k``, ``--max-risk`` or ``--average-risk``) and ``--hierarchy COLUMN=FILE`` (or
``COLUMN=5,10,20,*``) it releases the table instead: it searches the generalisation lattice for the transformation
with the least loss that meets the target (``deidpipe.risk.anonymise``), reports it with the risk before and after,
and with ``--out`` writes the released table.

Exit codes: 0 scored or released, 1 no transformation meets the target within the suppression limit, 2 usage or
read error (unknown column, both --population and --fraction, a file that is not a readable table, a value missing
from its hierarchy). Nothing printed quotes a cell value: only counts, figures, levels, column and file names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


def _fail(message: str) -> None:
    typer.echo(f"deidpipe risk: {message}", err=True)
    raise typer.Exit(2)


def population_option(drawn: str) -> Any:
    """``--population``, as ``risk`` and ``scan`` declare it; ``drawn`` says what was drawn ("the table was")."""
    return typer.Option(None, "--population", help=f"Population size N {drawn} drawn from.")


def fraction_option(sample: str) -> Any:
    """``--fraction``, as ``risk`` and ``scan`` declare it; ``sample`` names the sample's size ("rows")."""
    return typer.Option(None, "--fraction", help=f"Sampling fraction: N = round({sample} / F).")


def threshold_option(unit: str) -> Any:
    """``--threshold``, as ``risk`` and ``scan`` declare it; ``unit`` names what is at risk ("record")."""
    return typer.Option(0.2, "--threshold", help=f"Highest acceptable re-identification risk of a {unit}.")


def population_option_problem(population: int | None, fraction: float | None, threshold: float) -> str | None:
    """What is wrong with the population options shared by ``risk`` and ``scan`` (None: nothing)."""
    if population is not None and fraction is not None:
        return "give either --population or --fraction, not both"
    if fraction is not None and not (0.0 < fraction <= 1.0):
        return "--fraction must be in (0, 1]"
    if population is not None and population <= 0:
        return "--population must be positive"
    if not (0.0 < threshold <= 1.0):
        return "--threshold must be in (0, 1]"
    return None


def _separator(path: Path) -> str:
    """The CSV separator: the one of , ; tab | that the header line holds most of (comma when none)."""
    with path.open("rb") as fh:
        head = fh.readline(1 << 16).decode("utf-8", errors="replace")
    counts = {sep: head.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else ","


def read_table(path: Path, separator: str | None = None):  # -> pl.DataFrame
    """A CSV (every column read as text, as ARX reads it) or Parquet table; :class:`RiskError` if unreadable."""
    import polars as pl

    from deidpipe.risk.errors import RiskError

    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            return pl.read_parquet(path)
        sep = separator or _separator(path)
        return pl.read_csv(path, separator=sep, infer_schema=False, encoding="utf8-lossy")
    except Exception as exc:  # noqa: BLE001 - polars' messages may quote the file's content
        raise RiskError(f"{path}: not a readable {'Parquet' if path.suffix.lower() in PARQUET_SUFFIXES else 'CSV'} "
                        f"table ({type(exc).__name__})") from None


def risk_command(
    table: Path = typer.Argument(..., help="CSV (any of , ; tab | separated, header row) or Parquet table."),
    qi: str | None = typer.Option(None, "--qi", help="Quasi-identifier columns, comma-separated "
                                                     "(default: every column but --weight)."),
    population: int | None = population_option("the table was"),
    fraction: float | None = fraction_option("rows"),
    threshold: float = threshold_option("record (0.2: classes of 5 and more are safe)"),
    weight: str | None = typer.Option(None, "--weight", help="Sampling-weight column: adds sdcMicro's "
                                                             "individual and global risk."),
    population_table: Path | None = typer.Option(None, "--population-table",
                                                 help="Table of the whole population (same columns): journalist "
                                                      "and marketer risk against it."),
    separator: str | None = typer.Option(None, "--separator", help="CSV separator (default: guessed from the "
                                                                   "header)."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
    hierarchy: list[str] | None = typer.Option(None, "--hierarchy", help="Release: COLUMN=FILE (an ARX hierarchy "
                                               "CSV) or COLUMN=5,10,20,* (interval widths), repeatable. A "
                                               "quasi-identifier without one is kept or suppressed whole."),
    k: int | None = typer.Option(None, "--k", help="Release: every class at least k records (highest risk 1/k)."),
    max_risk: float | None = typer.Option(None, "--max-risk", help="Release: the highest risk of any record "
                                                                   "(0.2: classes of 5 or more)."),
    average_risk: float | None = typer.Option(None, "--average-risk", help="Release: the average risk (ARX's "
                                                                           "average re-identification risk)."),
    model: str = typer.Option("prosecutor", "--model", help="Release: prosecutor, journalist or marketer (the "
                                                           "last two against --population-table)."),
    suppression: float = typer.Option(0.05, "--suppression", help="Release: the largest share of records that "
                                                                  "may be suppressed."),
    out: Path | None = typer.Option(None, "--out", help="Release: write the released table here (.csv or "
                                                        ".parquet)."),
    drop_suppressed: bool = typer.Option(False, "--drop-suppressed", help="Release: leave suppressed records "
                                                                          "out instead of writing * in their "
                                                                          "quasi-identifiers."),
) -> None:
    """Re-identification risk of a table's quasi-identifiers: k, prosecutor / journalist / marketer risk (ARX),
    sample and population uniqueness, and sdcMicro's risk for weighted samples. Prints counts and figures only.
    With a target and hierarchies, releases the table: the generalisation with the least loss that meets it."""
    if fmt not in ("table", "json"):
        _fail("--format must be table or json")
    if problem := population_option_problem(population, fraction, threshold):
        _fail(problem)
    for path in (table, population_table):
        if path is not None and not path.is_file():
            _fail(f"{path}: no such file")
    releasing = bool(hierarchy) or any(v is not None for v in (k, max_risk, average_risk, out))
    if releasing:
        _release(table, qi, hierarchy or [], population, fraction, threshold, weight, population_table, separator,
                 fmt, k, max_risk, average_risk, model, suppression, out, drop_suppressed)
        return

    from deidpipe.risk.errors import RiskError
    from deidpipe.risk.report import assess, render

    try:
        df, pop_df, columns = _inputs(table, population_table, separator, qi)
        report = assess(df, columns, population=population, fraction=fraction, threshold=threshold,
                        weight=weight, population_table=pop_df)
    except RiskError as exc:
        _fail(str(exc))
        return
    if fmt == "json":
        typer.echo(report.to_json())
    else:
        render(report)


def _inputs(table: Path, population_table: Path | None, separator: str | None,
            qi: str | None) -> tuple[Any, Any, list[str] | None]:
    """The table, the population table (or None) and the ``--qi`` columns (None: not given), as both the score
    and the release read them; :class:`RiskError` when a table cannot be read."""
    df = read_table(table, separator)
    pop_df = read_table(population_table, separator) if population_table is not None else None
    columns = [c.strip() for c in qi.split(",") if c.strip()] if qi is not None else None
    return df, pop_df, columns


def _release(table: Path, qi: str | None, specs: list[str], population: int | None, fraction: float | None,
             threshold: float, weight: str | None, population_table: Path | None, separator: str | None, fmt: str,
             k: int | None, max_risk: float | None, average_risk: float | None, model: str, suppression: float,
             out: Path | None, drop_suppressed: bool) -> None:
    """``deidpipe risk TABLE --qi ... --hierarchy ... TARGET [--out RELEASED]``."""
    if k is None and max_risk is None and average_risk is None:
        _fail("give a target to release the table: --k, --max-risk or --average-risk")
    if qi is None:
        _fail("give --qi: the quasi-identifiers to generalise")
    if weight is not None:
        _fail("--weight scores a weighted sample; it cannot be used to release a table")
    if out is not None and out.resolve() == table.resolve():
        _fail("--out must not be the input table")

    from deidpipe.risk.errors import RiskError
    from deidpipe.risk.generalise import NoTransformation, Target
    from deidpipe.risk.hierarchy import parse_spec
    from deidpipe.risk.release import anonymise, render_anonymisation

    try:
        target = Target(k=k, max_risk=max_risk, average_risk=average_risk, model=model,  # type: ignore[arg-type]
                        suppression=suppression, population=population, fraction=fraction, threshold=threshold)
        df, pop_df, columns = _inputs(table, population_table, separator, qi)
        assert columns is not None  # --qi is required above
        hierarchies = {}
        for spec in specs:
            h = parse_spec(spec, df)
            if h.column in hierarchies:
                _fail(f"two hierarchies are given for column {h.column!r}")
            hierarchies[h.column] = h
        released, result = anonymise(df, columns, hierarchies, target, population_table=pop_df,
                                     suppressed="drop" if drop_suppressed else "star")
        if out is not None:
            _write(released, out, table, separator)
    except NoTransformation as exc:
        typer.echo(f"deidpipe risk: {exc}", err=True)
        raise typer.Exit(1) from None
    except RiskError as exc:
        _fail(str(exc))
        return
    if fmt == "json":
        typer.echo(result.to_json())
    else:
        render_anonymisation(result)
        if out is not None:
            typer.echo(f"released table written to {out}")


def _write(released: Any, out: Path, source: Path, separator: str | None) -> None:  # released: pl.DataFrame
    """The released table as Parquet (by suffix) or CSV, with the source CSV's separator."""
    from deidpipe.risk.errors import RiskError

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() in PARQUET_SUFFIXES:
            released.write_parquet(out)
        else:
            sep = ","
            if source.suffix.lower() not in PARQUET_SUFFIXES:
                sep = separator or _separator(source)
            released.write_csv(out, separator=sep)
    except OSError as exc:
        raise RiskError(f"{out}: cannot be written ({type(exc).__name__})") from None
