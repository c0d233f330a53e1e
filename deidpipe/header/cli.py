"""Commands of the header stage: ``deid-file``, ``rules show`` and ``keygen``. Thin over the library.

Only typer and the light ``deidpipe.errors``/``deidpipe.keys`` are imported here: the policy (pydicom, YAML, the
rule tables), the engine and rich are imported inside the commands, so ``deidpipe --help`` does not pay for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from deidpipe.cliutil import policy_from_cli
from deidpipe.errors import DeidError, reason_of
from deidpipe.keys import KEY_ENV, KEY_FILE_ENV, ProjectKey

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


def _console() -> Console:
    """The console for messages (stderr), made when a command first prints: importing rich costs ~50 ms."""
    from rich.console import Console

    return Console(stderr=True)


rules_app = typer.Typer(help="Inspect the de-identification rules.", no_args_is_help=True,
                        rich_markup_mode=None)  # plain help, as deidpipe.cli explains

PolicyOpt = typer.Option(None, "--policy", help="YAML policy file (see docs/header.md).")
OptionOpt = typer.Option([], "--option", "-o", help="Profile option to enable, e.g. RetainLongModifiedDates.")
StrictOpt = typer.Option(False, "--strict", help="Keep only the allow-list (recommended for public release).")
KeyFileOpt = typer.Option(None, "--key-file", help=f"Project key file; else ${KEY_ENV} or ${KEY_FILE_ENV}.")


def deid_file(
    src: Path = typer.Argument(..., help="DICOM file to de-identify (not modified)."),
    dst: Path = typer.Argument(..., help="Where to write the de-identified file."),
    policy_file: Path | None = PolicyOpt,
    option: list[str] = OptionOpt,
    strict: bool = StrictOpt,
    key_file: Path | None = KeyFileOpt,
) -> None:
    """De-identify one DICOM file's header."""
    from deidpipe.dicomio import encode_dataset, read_dataset
    from deidpipe.durable import atomic_write
    from deidpipe.header.engine import deidentify, refuse_risk_target

    try:
        policy = policy_from_cli(policy_file, option, strict)
        key = ProjectKey.load(key_file)
        if dst.resolve() == src.resolve():
            raise DeidError("refusing to overwrite the input file")
        refuse_risk_target(policy, "deid-file")
        result = deidentify(read_dataset(src), policy, key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dst, encode_dataset(result.dataset))  # a failed write leaves no partial file beside dst
    except DeidError as exc:
        _console().print(f"[red]error:[/red] {reason_of(exc)}")  # no input path: its name may name the patient
        raise typer.Exit(1) from None
    counts = ", ".join(f"{k}={v}" for k, v in sorted(result.actions.items()))
    _console().print(f"de-identified -> {dst} ({counts})")


@rules_app.command("show")
def rules_show(
    sop_class: str = typer.Option("", "--sop-class",
                                  help="SOP Class UID or name: compound codes are resolved for its IOD."),
    policy_file: Path | None = PolicyOpt,
    option: list[str] = OptionOpt,
    strict: bool = StrictOpt,
    changed_only: bool = typer.Option(False, "--changed-only", help="Only rows an option or override changes."),
) -> None:
    """Print the effective action of every Table E.1-1 row (and override) under a policy."""
    from rich.console import Console
    from rich.table import Table

    from deidpipe.header.inspect import effective_rules
    from deidpipe.policy import option_catalogue

    try:
        policy = policy_from_cli(policy_file, option, strict)
        rows = effective_rules(policy, sop_class or None)
    except DeidError as exc:
        _console().print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    title = f"Effective policy: {policy.describe()}" + (f" — SOP class {sop_class}" if sop_class else "")
    table = Table(title=title, show_lines=False)
    for col in ("tag", "attribute", "basic", "effective", "because"):
        table.add_column(col)
    for r in rows:
        if changed_only and r.source == "basic profile":
            continue
        table.add_row(r.tag, r.name, r.basic, r.effective, r.source)
    Console().print(table)
    Console().print(
        "Compound codes follow the attribute's Type in the object's IOD (X for Type 3, Z for Type 2, D for "
        "Type 1) at the top level of a known SOP class; elsewhere they keep the attribute's presence and drop "
        "its content. Options known: " + ", ".join(sorted(option_catalogue()))
    )


def keygen(out: Path = typer.Argument(..., help="File to create (mode 0600); never printed.")) -> None:
    """Create a new project key (32 random bytes, hex) for keyed pseudonyms."""
    try:
        ProjectKey.generate(out)
    except FileExistsError:
        _console().print(f"[red]error:[/red] {out} exists; a key is never overwritten")
        raise typer.Exit(1) from None
    _console().print(f"wrote {out} (mode 0600). Keep it secret and back it up: re-runs need the same key.")
