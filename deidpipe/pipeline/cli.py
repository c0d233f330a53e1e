"""``deidpipe run``: the command-line face of :mod:`deidpipe.pipeline.runner`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from deidpipe.cliutil import KEY_FILE_OPTION, OPTIONS_OPTION, POLICY_OPTION, policy_from_cli
from deidpipe.errors import DeidError

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.policy import Policy


def with_max_risk(policy: Policy, max_risk: float) -> Policy:
    """``policy`` with ``--max-risk``: the highest risk of its ``risk_target`` (built-in hierarchies, every
    quasi-identifier and a 5% suppression limit unless the policy's section says otherwise)."""
    import dataclasses

    from deidpipe.risk.errors import RiskError
    from deidpipe.risk.generalise import Target
    from deidpipe.risk.target import ArchiveTarget

    try:
        if policy.risk_target is None:
            target = ArchiveTarget(Target(max_risk=max_risk))
        else:
            target = dataclasses.replace(policy.risk_target, target=dataclasses.replace(
                policy.risk_target.target, max_risk=max_risk, k=None))
    except RiskError as exc:
        raise DeidError(f"--max-risk: {exc}") from None
    return dataclasses.replace(policy, risk_target=target)


def run_command(
    src: Path = typer.Argument(..., help="Folder tree, .zip or .tar(.gz) archive to de-identify (never modified)."),
    dst: Path = typer.Argument(..., help="Output folder (new or empty, or a run to --resume)."),
    policy: Path | None = POLICY_OPTION,
    option: list[str] = OPTIONS_OPTION,
    strict: bool = typer.Option(False, "--strict", help="Keep only the allow-list (recommended for public release)."),
    key_file: Path | None = KEY_FILE_OPTION,
    workers: int | None = typer.Option(None, "--workers", min=1, help="Worker processes (default: all cores)."),
    executor: str = typer.Option("local", "--executor", help="local (process pool) or dask."),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Address of an existing Dask scheduler, e.g. tcp://host:8786."
    ),
    resume: bool = typer.Option(False, "--resume", help="Complete an interrupted run in DST."),
    state: Path | None = typer.Option(
        None, "--state", help="Folder for the run's state (manifest with input paths, journal; not to be shared). "
        "Default: DST.deidpipe-state beside DST. Never inside DST or SRC."
    ),
    keep_paths: bool = typer.Option(
        False, "--keep-paths", help="Mirror the input's relative paths (off: names often carry identity)."
    ),
    allow_quarantine: bool = typer.Option(
        False, "--allow-quarantine", help="Exit 0 even when objects were quarantined."
    ),
    max_risk: float | None = typer.Option(
        None, "--max-risk", help="Release risk target: the highest prosecutor risk of a patient (0.2: classes of "
        "5 and more). Generalises the header quasi-identifiers and suppresses the patients still at risk; the "
        "policy's risk_target section sets the rest (docs/risk.md)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """De-identify an archive into DST (pseudonymised tree, quarantine records, audit table: safe to share); the
    manifest and journal go to a state folder outside DST."""
    from deidpipe.keys import ProjectKey
    from deidpipe.pipeline.progress import Reporter, print_summary
    from deidpipe.pipeline.runner import run

    if executor not in ("local", "dask"):
        typer.echo("deidpipe run: --executor must be local or dask", err=True)
        raise typer.Exit(2)
    try:
        key = ProjectKey.load(key_file)
        pol = policy_from_cli(policy, option, strict)
        if max_risk is not None:
            pol = with_max_risk(pol, max_risk)
        report = run(
            src,
            dst,
            pol,
            key=key,
            workers=workers,
            executor=executor,
            scheduler=scheduler,
            resume=resume,
            state_dir=state,
            keep_paths=keep_paths,
            progress=Reporter("off") if quiet else Reporter.auto(sys.stderr),
        )
    except DeidError as exc:
        typer.echo(f"deidpipe run: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - a bug: where it happened, never its message (it may quote a value)
        from deidpipe.dicomio.quiet import crash_report

        typer.echo(f"deidpipe run: internal error\n{crash_report(exc)}", err=True)
        raise typer.Exit(3) from None
    print_summary(report)
    if report.release is not None and not report.release.get("as_written", {}).get("met", True):
        typer.echo("the release as written does not meet its risk target: objects quarantined after the choice "
                   "left classes smaller than it counted (see _deidpipe/release.json); do not share it as it is",
                   err=True)
        raise typer.Exit(1)
    if report.quarantined:
        typer.echo(
            f"{report.quarantined} object(s) quarantined: records in {report.dst / 'quarantine'}", err=True
        )
        if not allow_quarantine:
            raise typer.Exit(1)
