"""The command line: one small function per command, all logic lives in the library.

Start-up is kept short (``deidpipe --help`` under 0.3 s on a 2-core machine): the command modules import only
typer and light deidpipe modules at module level, and each command imports its stage (pydicom, polars, the
engine, the runner, cryptography, TenSEAL, ...) when it runs. ``tests/test_cli.py`` checks that no heavy
library is loaded by ``import deidpipe.cli`` or by ``--help``.
"""

from __future__ import annotations

import typer

from deidpipe.deface.cli import deface_command
from deidpipe.he.cli import he_app
from deidpipe.header.cli import deid_file, keygen, rules_app
from deidpipe.header.reidentify_cli import make_recipient_command, reidentify
from deidpipe.pipeline.cli import run_command
from deidpipe.risk.cli import risk_command
from deidpipe.scan.cli import scan_command
from deidpipe.serve.cli import serve_command
from deidpipe.synth.cli import synth

# rich_markup_mode=None: typer renders help with click's plain formatter. Its rich formatter imports
# typer.rich_utils, which imports rich.markdown and markdown-it: about 0.15 s, half of the whole ``--help``, for
# panels around the same text. rich still draws the tables, the progress bar and the run summary.
app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    # An uncaught exception is shown without local variables: they hold DICOM values.
    pretty_exceptions_show_locals=False,
    help="deidpipe: make medical imaging archives safe to share (DICOM PS3.15 de-identification).",
)
# The commands, in the order ``deidpipe --help`` lists them; typer lists the groups of subcommands after them.
_COMMANDS = (
    ("deid-file", deid_file),
    ("keygen", keygen),
    ("reidentify", reidentify),
    ("make-recipient", make_recipient_command),
    ("synth", synth),
    ("run", run_command),
    ("deface", deface_command),
    ("risk", risk_command),
    ("scan", scan_command),
    ("serve", serve_command),
)
_GROUPS = (("rules", rules_app), ("he", he_app))
for _name, _command in _COMMANDS:
    app.command(_name)(_command)
for _name, _group in _GROUPS:
    app.add_typer(_group, name=_name)



def main() -> None:
    """The ``deidpipe`` command: :data:`app`, with any unexpected exception reported by where it happened and its
    type only (:func:`deidpipe.dicomio.quiet.crash_report`): its message may quote a DICOM value, and Python's own
    report would print it. Exit code 3."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - a bug somewhere below: never its message
        import sys

        from deidpipe.dicomio.quiet import crash_report

        print(f"deidpipe: internal error\n{crash_report(exc)}", file=sys.stderr)
        raise SystemExit(3) from None


def console() -> None:
    """The installed ``deidpipe`` command: :func:`main`, then leave without tearing the interpreter down.

    Everything a command writes is closed by then (outputs, journal, audit, the pool and any Dask cluster shut
    down); what is left is Python freeing every module and object one by one, which after a run (pydicom,
    polars, numpy) took 0.4 s: 7% of a whole 1,000-file run. Streams and log handlers are flushed first."""
    import logging
    import os
    import sys

    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # a message instead of a code, as sys.exit("...") gives
            print(exc.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    console()
