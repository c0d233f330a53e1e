"""Helpers shared by the commands of several stages (``run``, ``serve``, ``deid-file``, ``rules show``).

Light on purpose: every command module imports it when ``deidpipe`` starts, so only typer is imported here; the
policy (pydicom, YAML, the rule tables) is imported inside :func:`policy_from_cli`, when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.policy import Policy

#: ``--policy``, ``--option`` and ``--key-file`` as ``run`` and ``serve`` declare them.
POLICY_OPTION = typer.Option(None, "--policy", help="Policy YAML file (default: the Basic profile).")
OPTIONS_OPTION = typer.Option([], "--option", "-o", help="Profile option to add, e.g. CleanDescriptors.")
KEY_FILE_OPTION = typer.Option(
    None, "--key-file", help="Project key file (default: $DEIDPIPE_KEY or $DEIDPIPE_KEY_FILE).")


def policy_from_cli(policy_file: Path | None, options: list[str], strict: bool) -> Policy:
    """The policy a command runs with: the file's, plus any options and strictness given on the line."""
    from deidpipe.policy import Policy

    policy = Policy.load(policy_file) if policy_file else Policy.basic()
    if options:
        policy = policy.with_options(*options)
    if strict and not policy.strict:
        from dataclasses import replace

        policy = replace(policy, strict=True)
    return policy
