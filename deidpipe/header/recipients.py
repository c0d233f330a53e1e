"""Recipients of the Encrypted Attributes Sequence (0400,0500): their X.509 certificates and RSA private keys.

The de-identifier encrypts the original attributes to each recipient certificate
(:mod:`deidpipe.header.reversible`); an honest broker opens them with the matching private key. This module reads
both (PEM or DER; the key encrypted with a password or not) and makes a new recipient for users without a PKI.
CMS key transport in ``cryptography`` is RSA only, so keys are RSA-3072.

No message raised here quotes a key or a value: only file paths and what is wrong with them.
"""

from __future__ import annotations

import datetime
import functools
import os
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from deidpipe.errors import ReversibleError

__all__ = ["PrivateKey", "load_certificate", "load_private_key", "make_recipient"]

#: Private keys that can open a CMS envelope made by cryptography (RSA key transport only).
PrivateKey: TypeAlias = rsa.RSAPrivateKey

_RSA_BITS = 3072
_CERT_DAYS = 3650


@functools.lru_cache(maxsize=8)
def load_certificates(paths: tuple[str, ...]) -> tuple[x509.Certificate, ...]:
    """The policy's recipient certificates (``Policy.recipients``), read once per process and policy rather than
    once per object: every object of a run is encrypted for the same recipients. An error names the certificate
    by its place in the policy, not by its path: the reason goes to quarantine records under DST, which is shared."""
    return tuple(load_certificate(p, name=f"recipient certificate {n} of the policy")
                 for n, p in enumerate(paths, 1))


def load_certificate(path: str | Path, name: str | None = None) -> x509.Certificate:
    """Read an X.509 certificate, PEM or DER; raise :class:`ReversibleError` naming it (``name``, by default its
    path) on failure."""
    p = Path(path)
    label = name or str(p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ReversibleError(f"{label}: certificate cannot be read ({type(exc).__name__})") from None
    for loader in (x509.load_pem_x509_certificate, x509.load_der_x509_certificate):
        try:
            return loader(data)
        except ValueError:
            continue
    raise ReversibleError(f"{label}: not a PEM or DER X.509 certificate")


def load_private_key(path: str | Path, password: bytes | None = None) -> PrivateKey:
    """Read an RSA private key, PEM or DER (PKCS #8 or traditional), encrypted with ``password`` or not.

    Raises :class:`ReversibleError` naming the file when it cannot be read, the password is wrong or missing,
    or the key is not RSA.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ReversibleError(f"{p}: private key cannot be read ({type(exc).__name__})") from None
    key = None
    password_problem = False
    loaders = (serialization.load_pem_private_key, serialization.load_der_private_key)
    for loader in loaders:
        try:
            key = loader(data, password=password)
            break
        except TypeError:
            password_problem = True  # encrypted without a password, or a password for a clear key
        except ValueError as exc:
            if "password" in str(exc).lower() or "decrypt" in str(exc).lower():
                password_problem = True
        except UnsupportedAlgorithm:
            raise ReversibleError(f"{p}: private key uses an unsupported algorithm") from None
    if key is None:
        # A wrong password sometimes decrypts to bytes with valid padding (about 1 in 256 tries for CBC), and
        # the loader then reports a parse error, not a password error: so ask whether the key is encrypted.
        if password_problem or (password is not None and _is_encrypted(data)):
            raise ReversibleError(
                f"{p}: private key cannot be opened: wrong or missing password "
                "(give it in a file or DEIDPIPE_KEY_PASSWORD)"
            )
        raise ReversibleError(f"{p}: not a PEM or DER private key")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ReversibleError(f"{p}: private key is not RSA; CMS key transport needs RSA")
    return key


def _is_encrypted(data: bytes) -> bool:
    """Whether ``data`` is a private key that needs a password (the loaders refuse it without one)."""
    for loader in (serialization.load_pem_private_key, serialization.load_der_private_key):
        try:
            loader(data, password=None)
        except TypeError:
            return True
        except (ValueError, UnsupportedAlgorithm):
            continue
        return False
    return False


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (O_EXCL: never over an existing file, no chmod race)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ReversibleError(f"{path}: already exists; not overwritten") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def make_recipient(
    out_dir: Path, common_name: str = "deidpipe honest broker", password: bytes | None = None
) -> tuple[Path, Path]:
    """Make a recipient for the Encrypted Attributes Sequence (0400,0500): RSA-3072 key and certificate.

    Writes ``out_dir/recipient.crt`` (self-signed X.509, PEM, valid 10 years, key usage keyEncipherment) and
    ``out_dir/recipient.key`` (PKCS #8 PEM, encrypted with ``password`` when given, created with mode 0600).
    Neither file is overwritten. Returns ``(certificate path, key path)``. For tests and for users without a
    PKI.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "recipient.crt", out / "recipient.key"
    for p in (cert_path, key_path):
        if p.exists():
            raise ReversibleError(f"{p}: already exists; not overwritten")
    key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    _write_exclusive(key_path, key_pem, 0o600)
    _write_exclusive(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path
