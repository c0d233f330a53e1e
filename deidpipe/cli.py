"""The command line: one small function per command, all logic lives in the library."""

from __future__ import annotations

import typer

from deidpipe.he.cli import he_app
from deidpipe.header.cli import deid_file, keygen, rules_app
from deidpipe.header.reidentify_cli import make_recipient_command, reidentify
from deidpipe.pipeline.cli import run_command
from deidpipe.synth.cli import synth

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="deidpipe: make medical imaging archives safe to share (DICOM PS3.15 de-identification).",
)
app.command("deid-file")(deid_file)
app.command("keygen")(keygen)
app.add_typer(rules_app, name="rules")
app.command("reidentify")(reidentify)
app.command("make-recipient")(make_recipient_command)
app.command("synth")(synth)
app.command("run")(run_command)
app.add_typer(he_app, name="he")
