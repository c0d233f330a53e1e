"""The command line: one small function per command, all logic lives in the library.

Start-up is kept short (``deidpipe --help`` in well under 0.3 s): the command modules import only typer and light
deidpipe modules at module level, and each command imports its stage (pydicom, polars, the engine, the runner,
cryptography, TenSEAL, ...) when it runs. ``tests/test_cli_startup.py`` checks that no heavy library is loaded by
``import deidpipe.cli``.
"""

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
    # An uncaught exception is shown without local variables: they hold DICOM values.
    pretty_exceptions_show_locals=False,
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

if __name__ == "__main__":
    app()
