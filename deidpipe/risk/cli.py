"""``deidpipe risk TABLE``: quasi-identifier risk of a CSV or Parquet table. polars loads only when it runs.

Exit codes: 0 scored, 2 usage or read error (unknown column, both --population and --fraction, a file that is not
a readable table). Nothing printed quotes a cell value: only counts, figures, column and file names.
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
) -> None:
    """Re-identification risk of a table's quasi-identifiers: k, prosecutor / journalist / marketer risk (ARX),
    sample and population uniqueness, and sdcMicro's risk for weighted samples. Prints counts and figures only."""
    if fmt not in ("table", "json"):
        _fail("--format must be table or json")
    if problem := population_option_problem(population, fraction, threshold):
        _fail(problem)
    for path in (table, population_table):
        if path is not None and not path.is_file():
            _fail(f"{path}: no such file")

    from deidpipe.risk.errors import RiskError
    from deidpipe.risk.report import assess, render

    try:
        df = read_table(table, separator)
        pop_df = read_table(population_table, separator) if population_table is not None else None
        columns = [c.strip() for c in qi.split(",") if c.strip()] if qi is not None else None
        report = assess(df, columns, population=population, fraction=fraction, threshold=threshold,
                        weight=weight, population_table=pop_df)
    except RiskError as exc:
        _fail(str(exc))
        return
    if fmt == "json":
        typer.echo(report.to_json())
    else:
        render(report)
