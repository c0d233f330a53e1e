"""Reversible de-identification: Encrypted Attributes Sequence (0400,0500), real cryptography and pydicom."""

from __future__ import annotations

import copy
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset as pydicom_read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from typer.testing import CliRunner

from deidpipe.cli import app
from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.errors import ReversibleError
from deidpipe.header.engine import deidentify
from deidpipe.header.recipients import PrivateKey, load_certificate, load_private_key, make_recipient
from deidpipe.header.reversible import (
    ENCRYPTED_ATTRIBUTES_SEQUENCE,
    ENCRYPTED_CONTENT,
    MODIFIED_ATTRIBUTES_SEQUENCE,
    add_encrypted_attributes,
    encrypt_original_attributes,
    originals_from_diff,
    restore_original_attributes,
    restore_with_report,
)
from deidpipe.policy import Policy

JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
UTF8_NAME = "Gökçe^Ödön^Ærøskøbing=王^小明"
PATIENT_ID = "MRN-73310442"
OTHER_ID = "OTHER-5519"
ACCESSION = "ACC-889120"
PASSWORD = b"correct horse battery staple"

Recipient = tuple[x509.Certificate, PrivateKey, Path, Path]


@pytest.fixture(scope="module")
def recipients(tmp_path_factory: pytest.TempPathFactory) -> list[Recipient]:
    """Three recipients made by make_recipient; the second has a password-protected key."""
    out: list[Recipient] = []
    for i, password in enumerate((None, PASSWORD, None)):
        folder = tmp_path_factory.mktemp(f"recipient{i}")
        cert_path, key_path = make_recipient(folder, f"broker {i}", password)
        out.append((load_certificate(cert_path), load_private_key(key_path, password), cert_path, key_path))
    return out


def _original(tmp_path: Path) -> Dataset:
    """CT_small with an ISO 2022 IR 87 (Japanese) name, nested sequences, and a UTF-8 item, read from disk."""
    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = JAPANESE_NAME
    ds.PatientID = PATIENT_ID
    ds.AccessionNumber = ACCESSION
    other = Dataset()
    other.SpecificCharacterSet = "ISO_IR 192"
    other.PatientName = UTF8_NAME
    other.PatientID = OTHER_ID
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
    code = Dataset()
    code.CodeValue = "T-1234"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "study of 山田"
    ref.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.ReferencedStudySequence = Sequence([ref])
    path = tmp_path / "original.dcm"
    write_dataset(ds, path)
    return read_dataset(path)


def _deidentify(ds: Dataset) -> Dataset:
    """A stand-in for the header engine: replace, remove and change inside a sequence, new UIDs."""
    ds.PatientName = "ANON^0001"
    ds.PatientID = "PSEUDO-1"
    del ds.AccessionNumber
    del ds.OtherPatientIDsSequence
    ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = "2.25.1234"
    ds.ReferencedStudySequence[0].PurposeOfReferenceCodeSequence[0].CodeMeaning = "study"
    ds.SOPInstanceUID = "2.25.5678"
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.5678"
    return ds


def _secrets() -> list[bytes]:
    """Original values in every encoding in which they could appear in the clear."""
    out = [PATIENT_ID.encode(), OTHER_ID.encode(), ACCESSION.encode(), b"Yamada", b"1.2.3.4.5.6.7"]
    out += ["山田".encode("iso2022_jp"), "山田".encode(), "Gökçe".encode(), "Gökçe".encode("latin-1")]
    out += ["王".encode()]
    return [s for s in out if len(s) >= 2]


@pytest.fixture
def deidentified(tmp_path: Path, recipients: list[Recipient]) -> tuple[Dataset, Path]:
    """(original, path of the de-identified file with one item for recipients 0 and 1)."""
    original = _original(tmp_path)
    ds = _deidentify(copy.deepcopy(original))
    add_encrypted_attributes(ds, originals_from_diff(original, ds), [recipients[0][0], recipients[1][0]])
    path = tmp_path / "deid.dcm"
    write_dataset(ds, path)
    return original, path


def _assert_same(restored: Dataset, original: Dataset) -> None:
    assert ENCRYPTED_ATTRIBUTES_SEQUENCE not in restored
    assert set(restored.keys()) == set(original.keys())
    for tag in original.keys():
        assert restored[tag] == original[tag], tag
    assert restored.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID


def test_round_trip_nested_sequences_and_charsets(
    deidentified: tuple[Dataset, Path], recipients: list[Recipient], tmp_path: Path
) -> None:
    original, path = deidentified
    ds = read_dataset(path)
    assert ds.PatientName == "ANON^0001" and "OtherPatientIDsSequence" not in ds
    report = restore_with_report(ds, recipients[0][1], recipients[0][0])
    assert (report.items_opened, report.items_left) == (1, 0)
    out = tmp_path / "restored.dcm"
    write_dataset(ds, out)
    restored = read_dataset(out)
    _assert_same(restored, original)
    assert restored.PatientName == JAPANESE_NAME
    assert restored.SpecificCharacterSet == ["", "ISO 2022 IR 87"]
    assert restored.OtherPatientIDsSequence[0].PatientName == UTF8_NAME
    assert (
        restored.ReferencedStudySequence[0].PurposeOfReferenceCodeSequence[0].CodeMeaning == "study of 山田"
    )
    # The Japanese name is stored in ISO 2022 (escape sequences), the nested one in UTF-8.
    raw = out.read_bytes()
    assert "山田".encode("iso2022_jp").strip(b"\x1b(B") in raw
    assert "Gökçe".encode() in raw


def test_utf8_object_round_trip(recipients: list[Recipient], tmp_path: Path) -> None:
    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = UTF8_NAME
    ds.StudyDescription = "Schädel – 頭部"
    original = copy.deepcopy(ds)
    ds.PatientName = "X"
    ds.StudyDescription = ""
    add_encrypted_attributes(ds, originals_from_diff(original, ds), [recipients[0][0]])
    path = tmp_path / "utf8.dcm"
    write_dataset(ds, path)
    restored = restore_original_attributes(read_dataset(path), recipients[0][1], recipients[0][0])
    assert restored.PatientName == UTF8_NAME
    assert restored.StudyDescription == "Schädel – 頭部"


def test_item_layout(deidentified: tuple[Dataset, Path]) -> None:
    ds = read_dataset(deidentified[1])
    items = ds.EncryptedAttributesSequence
    assert len(items) == 1
    assert items[0].EncryptedContentTransferSyntaxUID == ExplicitVRLittleEndian
    assert items[0][ENCRYPTED_CONTENT].VR == "OB"
    assert bytes(items[0].EncryptedContent)[:1] == b"\x30"  # DER SEQUENCE (ContentInfo)


def test_inner_content_holds_one_modified_attributes_item(recipients: list[Recipient]) -> None:
    originals = Dataset()
    originals.PatientID = PATIENT_ID
    item = encrypt_original_attributes(originals, [recipients[0][0]])
    clear = pkcs7.pkcs7_decrypt_der(bytes(item.EncryptedContent), recipients[0][0], recipients[0][1], [])
    inner = pydicom_read_dataset(BytesIO(clear), is_implicit_VR=False, is_little_endian=True)
    assert list(inner.keys()) == [MODIFIED_ATTRIBUTES_SEQUENCE]
    assert len(inner[MODIFIED_ATTRIBUTES_SEQUENCE].value) == 1
    assert inner[MODIFIED_ATTRIBUTES_SEQUENCE].value[0].PatientID == PATIENT_ID


def test_second_recipient_can_decrypt(
    deidentified: tuple[Dataset, Path], recipients: list[Recipient]
) -> None:
    original, path = deidentified
    restored = restore_original_attributes(read_dataset(path), recipients[1][1], recipients[1][0])
    _assert_same(restored, original)


def test_wrong_key_is_refused_without_values(
    deidentified: tuple[Dataset, Path], recipients: list[Recipient]
) -> None:
    _, path = deidentified
    ds = read_dataset(path)
    before = copy.deepcopy(ds)
    with pytest.raises(ReversibleError) as err:
        restore_original_attributes(ds, recipients[2][1], recipients[2][0])
    message = str(err.value)
    for secret in (PATIENT_ID, OTHER_ID, ACCESSION, "Yamada", "山田", "Gökçe", "ANON", "PSEUDO"):
        assert secret not in message
    assert ds == before  # untouched on failure
    # A key that does not match the certificate.
    with pytest.raises(ReversibleError, match="does not belong"):
        restore_original_attributes(ds, recipients[2][1], recipients[0][0])


def test_object_without_sequence(recipients: list[Recipient]) -> None:
    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    with pytest.raises(ReversibleError, match=r"no Encrypted Attributes Sequence \(0400,0500\)"):
        restore_original_attributes(ds, recipients[0][1], recipients[0][0])


def test_malformed_content(recipients: list[Recipient]) -> None:
    cert, key = recipients[0][0], recipients[0][1]
    ds = Dataset()
    item = Dataset()
    item.EncryptedContentTransferSyntaxUID = ExplicitVRLittleEndian
    item.EncryptedContent = b"\x30\x03\x02\x01\x00not der at all"
    ds.EncryptedAttributesSequence = Sequence([item])
    with pytest.raises(ReversibleError, match="cannot be decrypted"):
        restore_original_attributes(ds, key, cert)
    # A valid envelope around something that is not the expected data set.
    envelope = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(b"\x10\x00\x10\x00PN\x04\x00ABCD")
        .add_recipient(cert)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    item.EncryptedContent = envelope
    with pytest.raises(ReversibleError, match=r"Modified Attributes Sequence \(0400,0550\)"):
        restore_original_attributes(ds, key, cert)
    item.EncryptedContentTransferSyntaxUID = "1.2.840.10008.1.2"
    with pytest.raises(ReversibleError, match="Explicit VR Little Endian"):
        restore_original_attributes(ds, key, cert)


def test_no_original_value_in_the_clear(deidentified: tuple[Dataset, Path]) -> None:
    _, path = deidentified
    ds = read_dataset(path)
    content = bytes(ds.EncryptedAttributesSequence[0].EncryptedContent)
    whole = path.read_bytes()
    for secret in _secrets():
        assert secret not in content, secret
        assert secret not in whole, secret


def test_unencodable_originals_fail_closed(recipients: list[Recipient]) -> None:
    originals = Dataset()  # no Specific Character Set: default repertoire cannot hold kanji
    originals.PatientName = "山田^太郎"
    with pytest.raises(ReversibleError, match=r"Specific Character Set \(0008,0005\)") as err:
        encrypt_original_attributes(originals, [recipients[0][0]])
    assert "山田" not in str(err.value)
    with pytest.raises(ReversibleError):
        encrypt_original_attributes(Dataset(), [recipients[0][0]])
    with pytest.raises(ReversibleError):
        encrypt_original_attributes(originals, [])


def test_items_for_other_recipients_are_kept_and_earliest_values_win(
    recipients: list[Recipient], tmp_path: Path
) -> None:
    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    first = copy.deepcopy(ds)
    ds.PatientID = "PASS1"
    add_encrypted_attributes(ds, originals_from_diff(first, ds), [recipients[0][0]])
    second = copy.deepcopy(ds)
    ds.PatientID = "PASS2"
    add_encrypted_attributes(ds, originals_from_diff(second, ds), [recipients[0][0]])
    only_for_2 = Dataset()
    only_for_2.PatientBirthDate = "19700101"
    add_encrypted_attributes(ds, only_for_2, [recipients[2][0]])
    assert len(ds.EncryptedAttributesSequence) == 3
    report = restore_with_report(ds, recipients[0][1], recipients[0][0])
    assert (report.items_opened, report.items_left) == (2, 1)
    assert ds.PatientID == first.PatientID
    assert len(ds.EncryptedAttributesSequence) == 1
    restore_original_attributes(ds, recipients[2][1], recipients[2][0])
    assert ds.PatientBirthDate == "19700101" and ENCRYPTED_ATTRIBUTES_SEQUENCE not in ds


def test_keys_and_certificates(recipients: list[Recipient], tmp_path: Path) -> None:
    cert_path, key_path = recipients[1][2], recipients[1][3]
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key_path.read_bytes()
    with pytest.raises(ReversibleError, match="password"):
        load_private_key(key_path, None)
    with pytest.raises(ReversibleError, match="password"):
        load_private_key(key_path, b"wrong")
    # DER forms load too.
    der_cert = tmp_path / "c.der"
    der_cert.write_bytes(recipients[1][0].public_bytes(serialization.Encoding.DER))
    assert load_certificate(der_cert) == recipients[1][0]
    der_key = tmp_path / "k.der"
    der_key.write_bytes(
        recipients[1][1].private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert load_private_key(der_key, None).private_numbers() == recipients[1][1].private_numbers()
    with pytest.raises(ReversibleError, match="not a PEM or DER"):
        load_certificate(key_path)
    with pytest.raises(ReversibleError, match="does not exist|cannot be read"):
        load_certificate(tmp_path / "missing.crt")
    with pytest.raises(ReversibleError, match="already exists"):
        make_recipient(cert_path.parent)


def _dciodvfy_errors(path: Path) -> set[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")}


def test_output_is_valid_dicom(recipients: list[Recipient], tmp_path: Path) -> None:
    original = read_dataset(get_testdata_file("CT_small.dcm"))
    plain = _deidentify_light(copy.deepcopy(original))
    with_seq = copy.deepcopy(plain)
    add_encrypted_attributes(with_seq, originals_from_diff(original, plain), [recipients[0][0]])
    plain_path, seq_path = tmp_path / "plain.dcm", tmp_path / "seq.dcm"
    write_dataset(plain, plain_path)
    write_dataset(with_seq, seq_path)
    back = read_dataset(seq_path)
    assert len(back.EncryptedAttributesSequence) == 1
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    assert _dciodvfy_errors(seq_path) - _dciodvfy_errors(plain_path) == set()


def _deidentify_light(ds: Dataset) -> Dataset:
    ds.PatientName = "ANON"
    ds.PatientID = "PSEUDO"
    ds.PatientBirthDate = ""
    return ds


def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.output


def test_cli(deidentified: tuple[Dataset, Path], recipients: list[Recipient], tmp_path: Path) -> None:
    original, path = deidentified
    _, _, cert1, key1 = recipients[1]
    password_file = tmp_path / "pw"
    password_file.write_bytes(PASSWORD + b"\n")
    base = ["--private-key", str(key1), "--certificate", str(cert1)]

    # One file, password from a file.
    out = tmp_path / "out.dcm"
    code, text = _run(["reidentify", str(path), str(out), *base, "--password-file", str(password_file)])
    assert code == 0, text
    assert "restored 1 file(s)" in text
    _assert_same(read_dataset(out), original)
    for secret in (PATIENT_ID, OTHER_ID, "Yamada", "山田"):
        assert secret not in text

    # A folder (one good file, one plain file without the sequence), password from the environment.
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    shutil.copy(path, src / "a" / "x.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "plain.dcm")
    dst = tmp_path / "dst"
    code, text = _run(
        ["reidentify", str(src), str(dst), *base], env={"DEIDPIPE_KEY_PASSWORD": PASSWORD.decode()}
    )
    assert code == 1, text
    assert "restored 1 file(s)" in text and "1 failed" in text
    assert (dst / "a" / "x.dcm").exists() and not (dst / "plain.dcm").exists()
    _assert_same(read_dataset(dst / "a" / "x.dcm"), original)

    # No password: a clear error, exit 2.
    code, text = _run(["reidentify", str(path), str(tmp_path / "o2.dcm"), *base], env={})
    assert code == 2 and "password" in text

    # make-recipient.
    code, text = _run(["make-recipient", str(tmp_path / "new"), "--common-name", "broker"])
    assert code == 0, text
    assert (tmp_path / "new" / "recipient.key").stat().st_mode & 0o777 == 0o600
    assert load_certificate(tmp_path / "new" / "recipient.crt").subject.rfc4514_string() == "CN=broker"


def test_password_never_on_the_command_line() -> None:
    code, text = _run(["reidentify", "--help"])
    assert code == 0
    assert "--password-file" in text and "--password " not in text


# -- through the engine, with a recipient in the policy ------------------------------------------------------
def test_reversible_round_trip(tmp_path, ct, key):
    crt, pem = make_recipient(tmp_path / "broker")
    out = deidentify(ct, Policy.basic(recipients=(str(crt),)), key).dataset
    assert "EncryptedAttributesSequence" in out
    assert b"Okonkwo" not in out.EncryptedAttributesSequence[0].EncryptedContent
    restored = restore_original_attributes(out, load_private_key(pem), load_certificate(crt))
    assert restored.PatientName == "Okonkwo^Chidi" and restored.StudyInstanceUID == ct.StudyInstanceUID
    plain = deidentify(ct, Policy.basic(), key).dataset
    assert "EncryptedAttributesSequence" not in plain


def test_policy_certificates_are_named_by_place_not_path(tmp_path) -> None:
    """The per-run loader's errors reach quarantine records under DST: the certificate's place in the policy,
    never its path."""
    from deidpipe.header.recipients import load_certificates

    missing = tmp_path / "secret-site" / "recipient.pem"
    with pytest.raises(ReversibleError) as err:
        load_certificates((str(missing),))
    assert "recipient certificate 1 of the policy" in str(err.value)
    assert "secret-site" not in str(err.value) and str(tmp_path) not in str(err.value)
