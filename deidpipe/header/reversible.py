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
cryptography supports RSA recipients only, hence RSA-3072 certificates from
:func:`deidpipe.header.recipients.make_recipient` (keys and certificates are read there too).

Character sets: text in the inner data set is encoded with the Specific Character Set (0008,0005) that the
originals item carries. The header engine should put the object's original (0008,0005) into ``originals``
(:func:`originals_from_diff` does); encoding is strict, so a value that its character set cannot represent
raises :class:`~deidpipe.errors.ReversibleError` instead of being stored with replacement characters.

No message raised here quotes an attribute value: only tags, counts and file paths.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
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
from deidpipe.header.recipients import PrivateKey

__all__ = [
    "ENCRYPTED_ATTRIBUTES_SEQUENCE",
    "ENCRYPTED_CONTENT",
    "ENCRYPTED_CONTENT_TRANSFER_SYNTAX_UID",
    "MODIFIED_ATTRIBUTES_SEQUENCE",
    "RestoreReport",
    "add_encrypted_attributes",
    "encrypt_original_attributes",
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
