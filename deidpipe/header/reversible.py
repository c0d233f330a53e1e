"""Reversible de-identification: the Encrypted Attributes Sequence (0400,0500).

DICOM PS3.15 E.1.2 lets a de-identifier keep the original values of the attributes it modified or removed
inside the de-identified object, readable only by chosen recipients (an honest broker). PS3.3 C.12.1.1.4.1
fixes the form:

* Encrypted Attributes Sequence (0400,0500), one item per envelope, each item holding
    * Encrypted Content Transfer Syntax UID (0400,0510) = Explicit VR Little Endian (1.2.840.10008.1.2.1), and
    * Encrypted Content (0400,0520), OB: a CMS EnvelopedData (RFC 5652, DER) whose encrypted content is a
      data set, encoded in that transfer syntax, holding a Modified Attributes Sequence (0400,0550) with
      exactly one item: the original top-level attributes, whole (sequences included).

The envelope is built with :mod:`cryptography` (``PKCS7EnvelopeBuilder``): AES-256-CBC content encryption and
RSA key transport (PKCS #1 v1.5) to each recipient certificate, so every recipient can open the same item.
cryptography supports RSA recipients only, hence RSA-3072 certificates from :func:`make_recipient`.

Character sets: text in the inner data set is encoded with the Specific Character Set (0008,0005) that the
originals item carries. The header engine should put the object's original (0008,0005) into ``originals``
(:func:`originals_from_diff` does); encoding is strict, so a value that its character set cannot represent
raises :class:`~deidpipe.errors.ReversibleError` instead of being stored with replacement characters.

No message raised here quotes an attribute value: only tags, counts and file paths.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian

from deidpipe.errors import ReversibleError

__all__ = [
    "ENCRYPTED_ATTRIBUTES_SEQUENCE",
    "ENCRYPTED_CONTENT",
    "ENCRYPTED_CONTENT_TRANSFER_SYNTAX_UID",
    "MODIFIED_ATTRIBUTES_SEQUENCE",
    "PrivateKey",
    "RestoreReport",
    "add_encrypted_attributes",
    "encrypt_original_attributes",
    "load_certificate",
    "load_private_key",
    "make_recipient",
    "originals_from_diff",
    "restore_original_attributes",
    "restore_with_report",
]

ENCRYPTED_ATTRIBUTES_SEQUENCE = Tag(0x0400, 0x0500)
ENCRYPTED_CONTENT_TRANSFER_SYNTAX_UID = Tag(0x0400, 0x0510)
ENCRYPTED_CONTENT = Tag(0x0400, 0x0520)
MODIFIED_ATTRIBUTES_SEQUENCE = Tag(0x0400, 0x0550)
SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
SOP_CLASS_UID = Tag(0x0008, 0x0016)
SOP_INSTANCE_UID = Tag(0x0008, 0x0018)

#: Private keys that can open a CMS envelope made by cryptography (RSA key transport only).
PrivateKey: TypeAlias = rsa.RSAPrivateKey

_RSA_BITS = 3072
_CERT_DAYS = 3650


# ------------------------------------------------------------------------------------------------------------
# Encoding the inner data set


@contextlib.contextmanager
def _strict_text() -> Iterator[None]:
    """Make pydicom raise, not substitute, when a text value cannot be encoded in its character set."""
    settings = pydicom_config.settings
    saved = settings.writing_validation_mode
    settings.writing_validation_mode = pydicom_config.RAISE
    try:
        yield
    finally:
        settings.writing_validation_mode = saved


def _decode_all(ds: Dataset) -> None:
    """Turn every raw element (at every depth) into a decoded :class:`DataElement` using its own context.

    pydicom decodes lazily with the character set in force where the element was read; moving an undecoded
    element into another data set would decode it later with the wrong Specific Character Set (0008,0005).
    """
    for tag in list(ds.keys()):
        elem = ds[tag]
        if elem.VR == "SQ" and elem.value is not None:
            for item in elem.value:
                _decode_all(item)


def _encode_inner(originals: Dataset) -> bytes:
    """Encode a data set holding Modified Attributes Sequence (0400,0550) = [originals], Explicit VR LE."""
    item = Dataset()
    for tag in originals.keys():
        if tag.group == 0x0002:
            raise ReversibleError(
                f"originals hold File Meta Information element {tag}; only data set attributes can be stored"
            )
        item.add(copy.deepcopy(originals[tag]))
    wrapper = Dataset()
    wrapper.add(DataElement(MODIFIED_ATTRIBUTES_SEQUENCE, "SQ", DicomSequence([item])))
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    try:
        with _strict_text():
            write_dataset(fp, wrapper)
    except Exception as exc:  # noqa: BLE001 - pydicom's messages may quote the value
        raise ReversibleError(
            f"original attributes cannot be encoded ({type(exc).__name__}); include the original "
            "Specific Character Set (0008,0005) in the originals"
        ) from None
    return fp.getvalue()


def _decode_inner(content: bytes) -> Dataset:
    """Parse the decrypted data set; return the one item of its Modified Attributes Sequence (0400,0550)."""
    try:
        wrapper = read_dataset(BytesIO(content), is_implicit_VR=False, is_little_endian=True)
        seq = wrapper[MODIFIED_ATTRIBUTES_SEQUENCE].value if MODIFIED_ATTRIBUTES_SEQUENCE in wrapper else None
    except Exception as exc:  # noqa: BLE001 - malformed content; pydicom's text may quote values
        raise ReversibleError(f"decrypted content is not a valid data set ({type(exc).__name__})") from None
    if seq is None:
        raise ReversibleError("decrypted content holds no Modified Attributes Sequence (0400,0550)")
    if len(seq) != 1:
        raise ReversibleError(
            f"Modified Attributes Sequence (0400,0550) must hold exactly one item, found {len(seq)}"
        )
    item: Dataset = seq[0]
    try:
        _decode_all(item)
    except Exception as exc:  # noqa: BLE001
        raise ReversibleError(f"decrypted attributes cannot be decoded ({type(exc).__name__})") from None
    return item


# ------------------------------------------------------------------------------------------------------------
# Building and opening the Encrypted Attributes Sequence


def encrypt_original_attributes(originals: Dataset, recipients: Sequence[x509.Certificate]) -> Dataset:
    """One item of the Encrypted Attributes Sequence (0400,0500) holding ``originals`` for ``recipients``.

    ``originals`` holds the original top-level elements (whole elements, sequences included) that
    de-identification modified or removed, plus the original Specific Character Set (0008,0005) whenever any
    of them is text. The item has Encrypted Content Transfer Syntax UID (0400,0510) = Explicit VR Little
    Endian and Encrypted Content (0400,0520) = DER CMS EnvelopedData (AES-256-CBC, RSA key transport to every
    certificate) of a data set that holds Modified Attributes Sequence (0400,0550) with exactly one item,
    ``originals``.

    Raises :class:`ReversibleError` if there is no recipient, a recipient key is not RSA, ``originals`` is
    empty or holds File Meta Information (group 0002), or a text value cannot be encoded.
    """
    if not recipients:
        raise ReversibleError("no recipient certificate for the Encrypted Attributes Sequence (0400,0500)")
    if len(originals) == 0:
        raise ReversibleError(
            "no original attributes to store in the Encrypted Attributes Sequence (0400,0500)"
        )
    plaintext = _encode_inner(originals)
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(plaintext)
    for i, cert in enumerate(recipients):
        if not isinstance(cert, x509.Certificate):
            raise ReversibleError(f"recipient {i} is not an X.509 certificate")
        if not isinstance(cert.public_key(), rsa.RSAPublicKey):
            raise ReversibleError(f"recipient certificate {i} has no RSA key; CMS key transport needs RSA")
        builder = builder.add_recipient(cert)
    builder = builder.set_content_encryption_algorithm(algorithms.AES256)
    try:
        # Binary: no MIME canonicalisation (which would turn LF into CRLF inside the encoded data set).
        envelope = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ReversibleError(f"CMS envelope cannot be built ({type(exc).__name__})") from None
    item = Dataset()
    item.add(DataElement(ENCRYPTED_CONTENT_TRANSFER_SYNTAX_UID, "UI", ExplicitVRLittleEndian))
    item.add(DataElement(ENCRYPTED_CONTENT, "OB", envelope))
    return item


def add_encrypted_attributes(ds: Dataset, originals: Dataset, recipients: Sequence[x509.Certificate]) -> None:
    """Append one item (see :func:`encrypt_original_attributes`) to ``ds``'s Encrypted Attributes Sequence.

    The Encrypted Attributes Sequence (0400,0500) is created when absent; items already there (from an earlier
    de-identification) are kept, and the new one goes last.
    """
    item = encrypt_original_attributes(originals, recipients)
    if ENCRYPTED_ATTRIBUTES_SEQUENCE in ds and ds[ENCRYPTED_ATTRIBUTES_SEQUENCE].value is not None:
        ds[ENCRYPTED_ATTRIBUTES_SEQUENCE].value.append(item)
    else:
        ds.add(DataElement(ENCRYPTED_ATTRIBUTES_SEQUENCE, "SQ", DicomSequence([item])))


@dataclass(frozen=True)
class RestoreReport:
    """Counts from :func:`restore_with_report` (never values)."""

    items_opened: int
    """Items of the Encrypted Attributes Sequence (0400,0500) decrypted with the key."""
    items_left: int
    """Items that this key could not open (other recipients); they stay in the sequence."""
    attributes_restored: int
    """Top-level attributes put back (counted once per item)."""


def _der_unpad(data: bytes) -> bytes:
    """Drop the trailing 0x00 that DICOM adds to make an odd-length OB value even (PS3.5 6.2).

    A DER parser rejects bytes after the outer SEQUENCE, so Encrypted Content (0400,0520) read from a file
    is cut to the length that the outer DER header announces, when what follows is only zero padding.
    """
    if len(data) < 2 or data[0] != 0x30:
        return data
    first = data[1]
    if first < 0x80:
        total = 2 + first
    else:
        n = first & 0x7F
        if n == 0 or n > 8 or len(data) < 2 + n:
            return data
        total = 2 + n + int.from_bytes(data[2 : 2 + n], "big")
    if total < len(data) and not data[total:].strip(b"\x00"):
        return data[:total]
    return data


def _same_public_key(private_key: PrivateKey, certificate: x509.Certificate) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return private_key.public_key().public_bytes(enc, fmt) == certificate.public_key().public_bytes(enc, fmt)


def restore_with_report(ds: Dataset, private_key: PrivateKey, certificate: x509.Certificate) -> RestoreReport:
    """Put back in ``ds`` (in place) the original attributes of every item that the key can open.

    Each item of the Encrypted Attributes Sequence (0400,0500) whose Encrypted Content (0400,0520) is
    addressed to ``certificate`` is decrypted; the top-level elements of its Modified Attributes Sequence
    (0400,0550) item replace the current ones (Specific Character Set (0008,0005) included, so text is written
    back in its original character set). Items are applied last to first, so after repeated de-identification
    the earliest (truly original) values win. Items that this key cannot open stay in the sequence; when none
    is left, the sequence is removed. If SOP Class / Instance UID (0008,0016 / 0008,0018) come back, the File
    Meta Information's Media Storage SOP Class / Instance UID (0002,0002 / 0002,0003) follow.

    Raises :class:`ReversibleError` when ``ds`` has no Encrypted Attributes Sequence, the key does not belong
    to the certificate, no item can be opened with it, or a decrypted item is malformed. ``ds`` is left
    untouched when an error is raised.
    """
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ReversibleError("private key is not an RSA key; CMS key transport needs RSA")
    if not _same_public_key(private_key, certificate):
        raise ReversibleError("the private key does not belong to the certificate")
    if ENCRYPTED_ATTRIBUTES_SEQUENCE not in ds or not ds[ENCRYPTED_ATTRIBUTES_SEQUENCE].value:
        raise ReversibleError(
            "the object has no Encrypted Attributes Sequence (0400,0500): nothing to restore"
        )
    items: DicomSequence = ds[ENCRYPTED_ATTRIBUTES_SEQUENCE].value
    opened: list[Dataset] = []
    left: list[Dataset] = []
    for index, item in enumerate(items):
        ts = item.get(ENCRYPTED_CONTENT_TRANSFER_SYNTAX_UID)
        if ts is None or str(ts.value) != ExplicitVRLittleEndian:
            raise ReversibleError(
                f"Encrypted Attributes Sequence item {index}: Encrypted Content Transfer Syntax UID "
                "(0400,0510) is missing or not Explicit VR Little Endian"
            )
        content = item.get(ENCRYPTED_CONTENT)
        if content is None or not content.value:
            raise ReversibleError(
                f"Encrypted Attributes Sequence item {index}: no Encrypted Content (0400,0520)"
            )
        try:
            plaintext = pkcs7.pkcs7_decrypt_der(
                _der_unpad(bytes(content.value)), certificate, private_key, []
            )
        except ValueError as exc:
            if "No recipient found" in str(exc):
                left.append(item)
                continue
            raise ReversibleError(
                f"Encrypted Attributes Sequence item {index}: Encrypted Content (0400,0520) cannot be "
                "decrypted (malformed envelope or wrong key)"
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise ReversibleError(
                f"Encrypted Attributes Sequence item {index}: decryption failed ({type(exc).__name__})"
            ) from None
        opened.append(_decode_inner(plaintext))
    if not opened:
        raise ReversibleError(
            "no item of the Encrypted Attributes Sequence (0400,0500) is addressed to this certificate"
        )

    restored: dict[BaseTag, DataElement] = {}
    for originals in reversed(opened):
        for tag in originals.keys():
            restored[tag] = originals[tag]
    count = sum(len(o) for o in opened)
    try:
        _decode_all(ds)  # decode what is there under the current character set before it may change
    except Exception as exc:  # noqa: BLE001
        raise ReversibleError(f"the object's attributes cannot be decoded ({type(exc).__name__})") from None
    if left:
        ds[ENCRYPTED_ATTRIBUTES_SEQUENCE].value = DicomSequence(left)
    else:
        del ds[ENCRYPTED_ATTRIBUTES_SEQUENCE]
    # Character set first, so that any later decoding in ds uses the original one.
    for tag in sorted(restored):
        ds[tag] = restored[tag]
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        if SOP_CLASS_UID in restored:
            meta.MediaStorageSOPClassUID = ds[SOP_CLASS_UID].value
        if SOP_INSTANCE_UID in restored:
            meta.MediaStorageSOPInstanceUID = ds[SOP_INSTANCE_UID].value
    return RestoreReport(items_opened=len(opened), items_left=len(left), attributes_restored=count)


def restore_original_attributes(
    ds: Dataset, private_key: PrivateKey, certificate: x509.Certificate
) -> Dataset:
    """Restore the original attributes from the Encrypted Attributes Sequence (0400,0500) and return ``ds``.

    See :func:`restore_with_report` (this is the same, returning the data set, modified in place).
    """
    restore_with_report(ds, private_key, certificate)
    return ds


def originals_from_diff(before: Dataset, after: Dataset) -> Dataset:
    """The ``originals`` argument for :func:`encrypt_original_attributes`, computed from two data sets.

    Returns a new data set holding a deep copy of every top-level element of ``before`` that is absent from
    ``after`` or differs from it (a sequence counts as one element: any change inside it stores it whole),
    plus ``before``'s Specific Character Set (0008,0005) whenever anything is stored and ``before`` has one.
    File Meta Information (group 0002) and the Encrypted Attributes Sequence (0400,0500) are never included.
    ``before`` must be a copy taken before de-identification (``copy.deepcopy(ds)``).
    """
    out = Dataset()
    for tag in before.keys():
        if tag.group == 0x0002 or tag == ENCRYPTED_ATTRIBUTES_SEQUENCE:
            continue
        elem = before[tag]
        if tag not in after or after[tag] != elem:
            out.add(copy.deepcopy(elem))
    if len(out) and SPECIFIC_CHARACTER_SET in before and SPECIFIC_CHARACTER_SET not in out:
        out.add(copy.deepcopy(before[SPECIFIC_CHARACTER_SET]))
    _decode_all(out)
    return out


# ------------------------------------------------------------------------------------------------------------
# Keys and certificates


def load_certificate(path: str | Path) -> x509.Certificate:
    """Read an X.509 certificate, PEM or DER; raise :class:`ReversibleError` naming the file on failure."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ReversibleError(f"{p}: certificate cannot be read ({type(exc).__name__})") from None
    for loader in (x509.load_pem_x509_certificate, x509.load_der_x509_certificate):
        try:
            return loader(data)
        except ValueError:
            continue
    raise ReversibleError(f"{p}: not a PEM or DER X.509 certificate")


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
