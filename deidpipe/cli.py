"""The command line: one small function per command, all logic lives in the library."""

from __future__ import annotations

import typer

from deidpipe.header.reidentify_cli import make_recipient_command, reidentify

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.command("reidentify")(reidentify)
app.command("make-recipient")(make_recipient_command)
