"""``deidpipe scan PATH``: the compliance report and its CI gate. pydicom and polars load only when it runs.

Exit codes: 0 no finding at or above ``--fail-on``; 1 findings at or above it; 2 usage error, a source that cannot
be read, or an object in it that cannot be read (it could not be checked).
"""

from __future__ import annotations

from pathlib import Path

import typer

from deidpipe.risk.cli import fraction_option, population_option, population_option_problem, threshold_option

FORMATS = ("table", "json", "html", "sarif")
LEVELS = ("info", "low", "medium", "high")


def _fail(message: str) -> None:
    typer.echo(f"deidpipe scan: {message}", err=True)
    raise typer.Exit(2)


def scan_command(
    path: Path = typer.Argument(..., help="Archive to scan: a folder, a .zip or a .tar(.gz)."),
    policy: Path | None = typer.Option(None, "--policy", help="Policy YAML the archive should meet (default: the "
                                                             "Basic Profile)."),
    known_identities: Path | None = typer.Option(None, "--known-identities",
                                                 help="CSV of original names, IDs and birth dates to search for "
                                                      "in every text value and in pixel text."),
    qi: str | None = typer.Option(None, "--qi", help="Quasi-identifiers, comma-separated, of: age, sex, "
                                                     "study_year, institution, station, device_serial, "
                                                     "manufacturer_model, body_part (default: all)."),
    unit: str = typer.Option("patient", "--qi-unit", help="One row of the quasi-identifier table per patient or "
                                                          "per study."),
    population: int | None = population_option("the archive's patients were"),
    fraction: float | None = fraction_option("patients"),
    threshold: float = threshold_option("patient"),
    fmt: str = typer.Option("table", "--format", help="table, json, html or sarif."),
    out: Path | None = typer.Option(None, "--out", help="Write the report to this file (default: standard "
                                                        "output)."),
    fail_on: str = typer.Option("high", "--fail-on", help="Exit 1 when a finding is at or above this severity: "
                                                          "info, low, medium or high."),
    pixels: bool = typer.Option(True, "--pixels/--no-pixels", help="Look for burned-in text in the pixel data."),
    faces: bool = typer.Option(True, "--faces/--no-faces", help="Render MR/CT head series and look for a face."),
    key_file: Path | None = typer.Option(None, "--key", help="Project key file: patients in the quasi-identifier "
                                                             "table get the project's keyed tokens (default: a "
                                                             "random key for this scan)."),
    presidio: bool = typer.Option(False, "--presidio", help="Also screen free text the policy keeps or cleans "
                                                            "with presidio-analyzer (DP-H013; slow)."),
    show_values: bool = typer.Option(False, "--show-values", help="For a steward's own review only: thumbnails "
                                                                  "show the text and faces found (blacked out or "
                                                                  "pixelated otherwise)."),
    workers: int | None = typer.Option(None, "--workers", "-j", min=1, help="Worker processes (default: one "
                                                                            "per CPU)."),
) -> None:
    """Report what is still identifying in an archive (headers, pixel text, faces) and its re-identification
    risk; the exit code gates a release. Reports hold rule ids, locations and counts, never a value."""
    if fmt not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}")
    if fail_on not in LEVELS:
        _fail(f"--fail-on must be one of {', '.join(LEVELS)}")
    if unit not in ("patient", "study"):
        _fail("--qi-unit must be patient or study")
    if problem := population_option_problem(population, fraction, threshold):
        _fail(problem)
    if not path.exists():
        _fail(f"{path}: no such file or folder")
    for p in (policy, known_identities, key_file):
        if p is not None and not p.is_file():
            _fail(f"{p}: no such file")

    from deidpipe.errors import DeidError
    from deidpipe.risk.errors import RiskError
    from deidpipe.risk.qi import parse_qi
    from deidpipe.scan.known import KnownIdentitiesError
    from deidpipe.scan.scanner import scan

    try:
        columns = parse_qi(qi)
    except ValueError as exc:
        _fail(str(exc))
    try:
        from deidpipe.keys import ProjectKey
        from deidpipe.policy import Policy

        pol = Policy.load(policy) if policy is not None else Policy.basic()
        key = ProjectKey.from_file(key_file) if key_file is not None else None
        report = scan(path, pol, key=key, known_identities=known_identities, qi=columns, population=population,
                      fraction=fraction, workers=workers, threshold=threshold, pixels=pixels, faces=faces,
                      show_values=show_values, presidio=presidio, unit=unit)
    except (DeidError, RiskError, KnownIdentitiesError) as exc:
        _fail(str(exc))
        return
    write_report(report, fmt, out)
    code = report.exit_code(fail_on)
    if code == 2:
        typer.echo(f"deidpipe scan: {report.errors} object(s) could not be read (rule DP-E001)", err=True)
    raise typer.Exit(code)


def write_report(report: object, fmt: str, out: Path | None) -> None:
    """Write ``report`` in ``fmt`` to ``out`` (or standard output)."""
    import json
    import sys

    from deidpipe.scan import report as reports

    if fmt == "table":
        from rich.console import Console

        if out is None:
            reports.render(report, Console())  # type: ignore[arg-type]
            return
        with out.open("w", encoding="utf-8") as fh:
            reports.render(report, Console(file=fh, width=160))  # type: ignore[arg-type]
        return
    if fmt == "json":
        text = reports.to_json(report)  # type: ignore[arg-type]
    elif fmt == "sarif":
        text = json.dumps(reports.to_sarif(report), indent=2)  # type: ignore[arg-type]
    else:
        from deidpipe.scan.html import to_html

        text = to_html(report)  # type: ignore[arg-type]
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        out.write_text(text + "\n", encoding="utf-8")
