"""Commands for the honest broker: ``deidpipe reidentify`` and ``deidpipe make-recipient``.

``reidentify`` opens the Encrypted Attributes Sequence (0400,0500) of de-identified DICOM objects with a
recipient's private key and writes copies with the original attributes back. It prints counts and fixed
reasons only, never an attribute value. The private key's password is read from ``--password-file`` or the
environment variable ``DEIDPIPE_KEY_PASSWORD``, never from the command line.

``cryptography``, pydicom, :mod:`deidpipe.header.reversible` and :mod:`deidpipe.header.recipients` are imported
inside the functions that use them, so that registering these commands costs ``deidpipe --help`` nothing.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from deidpipe.errors import DeidError, ReversibleError, reason_of

if TYPE_CHECKING:  # pragma: no cover
    from cryptography import x509
    from pydicom.dataset import Dataset

    from deidpipe.header.recipients import PrivateKey

PASSWORD_ENV = "DEIDPIPE_KEY_PASSWORD"


def read_password(password_file: Path | None) -> bytes | None:
    """The key password: ``password_file`` (one trailing newline dropped), else ``$DEIDPIPE_KEY_PASSWORD``."""
    if password_file is not None:
        try:
            data = password_file.read_bytes()
        except OSError as exc:
            raise ReversibleError(
                f"{password_file}: password file cannot be read ({type(exc).__name__})"
            ) from None
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        return data or None
    env = os.environ.get(PASSWORD_ENV)
    return env.encode() if env else None


def _sources(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """Pairs (input file, output file); a folder is walked recursively and mirrored under ``dst``."""
    if src.is_dir():
        resolved_src, resolved_dst = src.resolve(), dst.resolve()
        if resolved_dst == resolved_src or resolved_src in resolved_dst.parents:
            raise ReversibleError("the output folder must not be the input folder or inside it")
        return [(p, dst / p.relative_to(src)) for p in sorted(src.rglob("*")) if p.is_file()]
    if not src.exists():
        raise ReversibleError(f"{src}: does not exist")
    target = dst / src.name if dst.is_dir() else dst
    if target.resolve() == src.resolve():
        raise ReversibleError("the output file must not be the input file")
    return [(src, target)]


def _write_atomic(ds: Dataset, target: Path) -> None:
    """Write durably through a temporary file beside ``target`` (:func:`deidpipe.durable.atomic_write`), so a
    failure never leaves half a file."""
    from deidpipe.dicomio import encode_dataset
    from deidpipe.durable import atomic_write

    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, encode_dataset(ds))


def reidentify_files(
    src: Path, dst: Path, private_key: PrivateKey, certificate: x509.Certificate
) -> tuple[int, int, Counter[str]]:
    """Restore every DICOM file under ``src`` into ``dst``; return (files, attributes, failure reasons)."""
    from deidpipe.dicomio import read_dataset
    from deidpipe.header.reversible import restore_with_report

    done = attrs = 0
    failures: Counter[str] = Counter()
    for source, target in _sources(src, dst):
        try:
            ds = read_dataset(source)
            report = restore_with_report(ds, private_key, certificate)
            _write_atomic(ds, target)
        except DeidError as exc:
            failures[reason_of(exc)] += 1
            continue
        except OSError as exc:
            failures[f"cannot be written ({type(exc).__name__})"] += 1
            continue
        done += 1
        attrs += report.attributes_restored
    return done, attrs, failures


def reidentify(
    src: Path = typer.Argument(
        ..., help="A de-identified DICOM file, or a folder of them (walked recursively)."
    ),
    dst: Path = typer.Argument(..., help="Output file, or folder (mirrors the input tree)."),
    key: Path = typer.Option(..., "--private-key", help="Recipient private key (PEM or DER)."),
    cert: Path = typer.Option(..., "--certificate", help="Recipient certificate (PEM or DER)."),
    password_file: Path | None = typer.Option(
        None, "--password-file", help=f"File holding the key password (else ${PASSWORD_ENV})."
    ),
) -> None:
    """Restore original attributes from the Encrypted Attributes Sequence (0400,0500) with a recipient key."""
    from deidpipe.header.recipients import load_certificate, load_private_key

    try:
        private_key = load_private_key(key, read_password(password_file))
        certificate = load_certificate(cert)
        done, attrs, failures = reidentify_files(src, dst, private_key, certificate)
    except DeidError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"restored {done} file(s), {attrs} attribute(s); {sum(failures.values())} failed")
    for reason, n in sorted(failures.items()):
        typer.echo(f"  {n} failed: {reason}", err=True)
    if failures:
        raise typer.Exit(1)


def make_recipient_command(
    out_dir: Path = typer.Argument(..., help="Folder for recipient.crt and recipient.key."),
    common_name: str = typer.Option(
        "deidpipe honest broker", "--common-name", help="Certificate subject CN."
    ),
    password_file: Path | None = typer.Option(
        None,
        "--password-file",
        help=f"Encrypt the key with the password in this file (else ${PASSWORD_ENV}).",
    ),
) -> None:
    """Make an RSA-3072 key and self-signed certificate for the Encrypted Attributes Sequence (0400,0500)."""
    from deidpipe.header.recipients import make_recipient

    try:
        cert_path, key_path = make_recipient(out_dir, common_name, read_password(password_file))
    except DeidError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"certificate: {cert_path}")
    typer.echo(f"private key: {key_path} (mode 0600; keep it with the honest broker)")
