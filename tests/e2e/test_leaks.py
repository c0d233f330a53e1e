"""No planted identity reaches the terminal, the manifest, the audit, a quarantine record or an output byte.

Forty copies of pydicom's CT_small.dcm carry unique markers (``ZZnnXXZZ``) in the places pydicom warns about and
quotes: text in UI fields (SOP Class, Transfer Syntax, instance UIDs, a referenced UID in a sequence), an unknown
Specific Character Set, bytes the declared character set cannot decode, invalid DA / TM / DS / IS values, an
odd-length private value, private creators, Modality and Burned In Annotation. Every file also has its own
instance UIDs, searched for as originals. ``deidpipe run`` runs as a subprocess (serial, two local workers, Dask)
and the library API in this process under ``warnings.simplefilter("always")``.
"""

from __future__ import annotations

import struct
import subprocess
import warnings
from io import BytesIO
from pathlib import Path

import polars as pl
import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deidpipe.pipeline.state import default_state_dir
from tests.helpers import run_cli

SECRET = "leaks-test-secret-0123456789abcdef"
N_FILES = 40
#: Prefix of every file's own instance UIDs (``<prefix><i>.<k>``): originals that must not come out anywhere.
UID_PREFIX = "1.2.826.0.1.3680043.10.543."
EXPLICIT_LE = b"1.2.840.10008.1.2.1\x00"


def marker(i: int, field: str) -> str:
    """Eight characters: fits DA, TM, CS; never produced by a hex digest or a ``2.25.`` pseudonym."""
    return f"ZZ{i:02d}{field}ZZ"


def _marked(i: int) -> tuple[bytes, list[str], list[str]]:
    """File ``i``'s bytes, the markers planted in it and its original instance UIDs."""
    with pydicom_config.disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _marked_quietly(i)


def _marked_quietly(i: int) -> tuple[bytes, list[str], list[str]]:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    uids = [f"{UID_PREFIX}{i}.{k}" for k in range(1, 5)]
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID = uids
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    planted = {"PN": "PatientName", "ID": "PatientID", "AN": "AccessionNumber", "IN": "InstitutionName"}
    for field, keyword in planted.items():
        setattr(ds, keyword, marker(i, field))
    ds.OtherPatientIDsSequence[0].PatientID = marker(i, "OI")
    markers = [marker(i, f) for f in [*planted, "OI"]]

    def plant(field: str, keyword: str, target: Dataset | None = None) -> None:
        setattr(ds if target is None else target, keyword, marker(i, field))
        markers.append(marker(i, field))

    variant = i % 10
    if variant == 0:
        plant("SC", "SOPClassUID")
        plant("MC", "MediaStorageSOPClassUID", ds.file_meta)
    elif variant == 2:
        plant("SU", "StudyInstanceUID")
        plant("SE", "SeriesInstanceUID")
    elif variant == 3:
        plant("CS", "SpecificCharacterSet")
    elif variant == 4:
        plant("DA", "StudyDate")
        plant("TM", "StudyTime")
        ds.SliceThickness, ds.InstanceNumber = "9876.125", "98765432"  # numbers now, markers in the bytes
    elif variant == 5:
        plant("MO", "Modality")
        plant("BA", "BurnedInAnnotation")
    elif variant == 7:
        plant("SI", "SOPInstanceUID")
        plant("FR", "FrameOfReferenceUID")
        plant("MI", "MediaStorageSOPInstanceUID", ds.file_meta)
    elif variant == 9:
        item = Dataset()
        plant("RC", "ReferencedSOPClassUID", item)
        plant("RI", "ReferencedSOPInstanceUID", item)
        ds.ReferencedImageSequence = Sequence([item])
        plant("ST", "StationName")
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    if variant == 4:  # invalid DS and IS values
        for field, placeholder in (("DS", b"9876.125"), ("IS", b"98765432")):
            assert data.count(placeholder) == 1
            data = data.replace(placeholder, marker(i, field).encode())
            markers.append(marker(i, field))
    if variant == 1:  # text in the File Meta's Transfer Syntax UID (same length: the group length holds)
        assert data.count(EXPLICIT_LE) == 1
        data = data.replace(EXPLICIT_LE, marker(i, "TS").encode().ljust(len(EXPLICIT_LE), b"\0"))
        markers.append(marker(i, "TS"))
    elif variant == 6:  # a private block after Pixel Data: creator and an odd-length value
        creator, value = marker(i, "CR").encode(), marker(i, "OL").encode() + b"Q"
        data += _explicit_le(0x7FE1, 0x0010, b"LO", creator) + _explicit_le(0x7FE1, 0x1001, b"LO", value)
        markers += [marker(i, "CR"), marker(i, "OL")]
    elif variant == 8:  # UTF-8 declared, bytes that are not UTF-8 around a marker in the patient's name
        data = data.replace(b"ISO_IR 100", b"ISO_IR 192")
        name = marker(i, "PN").encode()
        data = data.replace(name, b"\xff" + name[1:])
        markers.remove(marker(i, "PN"))
        markers.append(marker(i, "PN")[1:])
    return data, markers, uids


def _explicit_le(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    """(folder of marked files, every string that must not come out: markers and original UIDs)."""
    src = tmp_path_factory.mktemp("marked") / "src"
    src.mkdir()
    secrets: set[str] = set()
    for i in range(N_FILES):
        data, markers, uids = _marked(i)
        (src / f"file{i:02d}.dcm").write_bytes(data)
        secrets.update(markers, uids)
    return src, sorted(s.encode() for s in secrets)


def found(blob: bytes | str, secrets: list[bytes]) -> list[str]:
    """The secrets that occur in ``blob``."""
    data = blob.encode("utf-8", "replace") if isinstance(blob, str) else blob
    return [s.decode() for s in secrets if s in data]


def deidpipe_run(src: Path, dst: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("run", str(src), str(dst), *args, "--allow-quarantine", key=SECRET)


def leaks_in_run(proc: subprocess.CompletedProcess, dst: Path, secrets: list[bytes]) -> dict[str, list[str]]:
    """Where the secrets occur: stdout, stderr, each manifest / audit column but the input path, every file."""
    where: dict[str, list[str]] = {"stdout": found(proc.stdout, secrets), "stderr": found(proc.stderr, secrets)}
    for table in sorted((dst / "_deidpipe").glob("*.parquet")) + sorted(default_state_dir(dst).glob("*.parquet")):
        df = pl.read_parquet(table)
        for column in df.columns:
            if column != "path":
                text = "\n".join(str(v) for v in df[column].to_list())
                where[f"{table.name}:{column}"] = found(text, secrets)
    for p in sorted(dst.rglob("*")):
        if p.is_file() and p.suffix != ".parquet":  # Parquet may compress: its columns are read above
            where[p.relative_to(dst).as_posix()] = found(p.read_bytes(), secrets)
    return {k: v for k, v in where.items() if v}


@pytest.fixture(scope="module")
def cli_runs(marked, tmp_path_factory):
    """``deidpipe run`` of the marked folder with some arguments, once per module: (process, DST)."""
    done: dict[tuple[str, ...], tuple[subprocess.CompletedProcess, Path]] = {}

    def get(args: tuple[str, ...]) -> tuple[subprocess.CompletedProcess, Path]:
        if args not in done:
            dst = tmp_path_factory.mktemp("run") / "out"
            done[args] = deidpipe_run(marked[0], dst, *args), dst
        return done[args]

    return get


#: Fields the Basic profile keeps (their values, when valid, say nothing of the patient): their markers must stay
#: off the terminal and the bookkeeping, but the header engine's handling of invalid kept values is tested apart.
KEPT_FIELDS = ("SC", "MC", "TS", "CS", "DS", "IS", "MO", "BA", "RC")


def identity_only(secrets: list[bytes]) -> list[bytes]:
    return [s for s in secrets if not (s.startswith(b"ZZ") and s[4:6].decode() in KEPT_FIELDS)]


@pytest.mark.parametrize("args", [("--workers", "1"), ("--workers", "2"), ("--workers", "1", "--executor", "dask")],
                         ids=["serial", "pool", "dask"])
def test_cli_run_leaks_nothing(marked, cli_runs, args):
    src, secrets = marked
    proc, dst = cli_runs(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    audit = pl.read_parquet(dst / "_deidpipe" / "audit.parquet")
    assert audit.height == N_FILES and (audit["status"] == "written").sum() >= N_FILES // 2
    leaks = leaks_in_run(proc, dst, secrets)
    outputs = {k: v for k, v in leaks.items() if not k.startswith("_deidpipe/") and ":" not in k
               and k not in ("stdout", "stderr") and not k.startswith("quarantine/")}
    elsewhere = {k: v for k, v in leaks.items() if k not in outputs}
    assert elsewhere == {}, elsewhere
    identity = identity_only(secrets)
    assert {k: found("".join(v), identity) for k, v in outputs.items() if found("".join(v), identity)} == {}


def test_invalid_values_of_kept_attributes_are_not_copied(marked, cli_runs):
    proc, dst = cli_runs(("--workers", "1"))
    assert leaks_in_run(proc, dst, marked[1]) == {}


def test_library_api_under_always_shows_nothing(marked, key, capfd, recwarn, caplog):
    """A host that imported deidpipe and then asked for every warning (pytest does the same) and logs at DEBUG."""
    from deidpipe import deidentify_dataset
    from deidpipe.errors import DeidError

    src, secrets = marked
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets = [dcmread(p) for p in sorted(src.iterdir())]  # the host's own reading, lazy: values still raw
    capfd.readouterr()
    recwarn.clear()
    caplog.set_level("DEBUG")
    warnings.simplefilter("always")
    outputs, failures = [], 0
    for ds in datasets:
        try:
            out = deidentify_dataset(ds, key=key)
        except DeidError as exc:
            failures += 1
            assert not found(str(exc), secrets)
            continue
        buf = BytesIO()
        out.save_as(buf)
        outputs.append(buf.getvalue())
    captured = capfd.readouterr()
    assert len(outputs) >= N_FILES // 2 and failures > 0  # some are refused (text in the SOP Class UID)
    assert not found(captured.out + captured.err, secrets)
    assert not found("\n".join(str(w.message) for w in recwarn), secrets)
    assert not found(caplog.text, secrets)
    assert not found(b"".join(outputs), identity_only(secrets))


def test_loggers_withheld_even_when_turned_on(caplog, capfd):
    """``pydicom.config.debug()`` turns pydicom's logger on: its records still carry no value."""
    import logging

    from pydicom.misc import warn_and_log

    import deidpipe.dicomio  # noqa: F401 - installs the quiet settings, as any deidpipe stage does

    logger = logging.getLogger("pydicom")
    saved = logger.level
    logger.setLevel(logging.DEBUG)
    caplog.set_level("DEBUG")
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            warn_and_log("Invalid value for VR UI: 'ZZ99LGZZ'")
        logging.getLogger("pydicom.pixels.decoders.base").warning("frame of %s", "ZZ99LCZZ")
    finally:
        logger.setLevel(saved)
    captured = capfd.readouterr()
    assert "ZZ99" not in caplog.text + captured.out + captured.err


def test_manifest_values_are_the_standards_or_keyed(key):
    from deidpipe.header.values import MODALITY_TERMS, YES_NO
    from deidpipe.pipeline.index import (
        INVALID_TERM,
        SOP_CLASS_TYPES,
        TRANSFER_SYNTAX_TYPES,
        defined_term,
        public_uid,
    )

    ct, explicit = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"
    assert public_uid(key, ct, SOP_CLASS_TYPES) == ct
    assert public_uid(key, explicit, TRANSFER_SYNTAX_TYPES) == explicit
    assert public_uid(key, explicit, SOP_CLASS_TYPES) == key.uid(explicit)  # a standard UID, of another kind
    assert public_uid(key, "DOE^JOHN", SOP_CLASS_TYPES) == key.uid("DOE^JOHN")
    assert public_uid(key, "1.3.12.2.1107.5.9.1", SOP_CLASS_TYPES).startswith("2.25.")  # private: keyed
    assert public_uid(key, None, SOP_CLASS_TYPES) is None
    assert defined_term("MR", MODALITY_TERMS) == "MR" and defined_term("DOE", MODALITY_TERMS) == INVALID_TERM
    assert defined_term("YES", YES_NO) == "YES" and defined_term("JOHN", YES_NO) == INVALID_TERM


def test_crash_report_names_the_place_not_the_value():
    from deidpipe.dicomio.quiet import crash_report

    value = "ZZ99" + "CRZZ"  # not in this source line either: the report shows source lines
    try:
        raise ValueError(f"Invalid value for VR PN: {value!r}")
    except ValueError as exc:
        report = crash_report(exc)
    assert "ValueError" in report and "test_leaks.py" in report and "ZZ99" not in report
