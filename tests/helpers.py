"""Helpers shared by the tests: the repository root, ``deidpipe`` as a subprocess, the header engine over a folder,
pydicom's bundled files as bytes, dciodvfy's errors."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.header.engine import deidentify
from deidpipe.keys import ProjectKey
from deidpipe.policy import Policy

REPO = Path(__file__).resolve().parents[1]
"""The repository root (the folder that holds ``deidpipe/`` and ``tests/``)."""


def cli_command(*args: str) -> list[str]:
    """The command line of ``deidpipe ARGS`` in a fresh interpreter: this interpreter running the installed
    command's entry point (``deidpipe.cli:console``, through ``python -m deidpipe.cli``)."""
    return [sys.executable, "-m", "deidpipe.cli", *args]


def run_cli(*args: str, key: str | None = None, env: dict[str, str] | None = None, cwd: Path = REPO,
            timeout: float = 300, text: bool = False) -> subprocess.CompletedProcess:
    """Run ``deidpipe ARGS`` as a user would, in a subprocess, and return it finished (output captured).

    ``key`` becomes DEIDPIPE_KEY, ``env`` adds to (or overrides) this process's environment; ``cwd`` defaults to
    the repository root; ``text`` decodes stdout and stderr. A run past ``timeout`` seconds raises
    :class:`subprocess.TimeoutExpired`."""
    environ = dict(os.environ, **(env or {}))
    # this checkout's deidpipe whatever ``cwd`` is (python -m puts ``cwd`` first on sys.path)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), environ.get("PYTHONPATH"))))
    if key is not None:
        environ["DEIDPIPE_KEY"] = key
    return subprocess.run(cli_command(*args), cwd=cwd, env=environ, capture_output=True, text=text, timeout=timeout)


def deidentify_tree(src: Path, files: list[str], dst: Path, policy: Policy, key: ProjectKey) -> dict[str, Path]:
    """De-identify each file of ``files`` (relative to ``src``) into ``dst``; return input -> output path."""
    out = {}
    for rel in files:
        result = deidentify(read_dataset(src / rel), policy, key)
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        write_dataset(result.dataset, target)
        out[rel] = target
    return out


def bundled_bytes(name: str) -> bytes:
    """The bytes of one of pydicom's bundled test files."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name)).read_bytes()


def encode(ds) -> bytes:
    """``ds`` as a DICOM file (preamble and File Meta), in memory."""
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's error lines, with values and UIDs taken out so that input and output can be compared."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    errors = set()
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("Error"):
            line = re.sub(r"\[\d+\]", "", line)
            line = re.sub(r"UID [\d.]+|\b\d+(\.\d+){2,}\b|<[0-9.]+>|(=|value) <[^>]*>", "", line)
            errors.add(line.strip())
    return errors


def associate(ae, *args, **kwargs):
    """``ae.associate(*args, **kwargs)`` (pynetdicom), made safe for several requests in a row.

    pynetdicom 3.0 runs an association reactor thread beside ``send_c_store``. Each request pauses it and lets it
    go again afterwards; when the reactor has not run yet by the next request, its pause flag still reads "paused"
    from the last one, the request goes out without waiting, and the reactor can then take the response off the
    DIMSE queue (pydicom/pynetdicom#435, still in 3.0.4). The caller waits out its DIMSE timeout for a response
    that came: about one association in a few hundred here, with both cores busy. A requestor that only sends
    requests never needs the reactor to take a message, so its non-blocking reads of the queue come back empty;
    the requests' own (blocking) reads are pynetdicom's, unchanged."""
    assoc = ae.associate(*args, **kwargs)
    get_msg = assoc.dimse.get_msg
    assoc.dimse.get_msg = lambda block=False: get_msg(block) if block else (None, None)
    return assoc


def raw_part10(elements: list[tuple[int, int, bytes, bytes]]) -> bytes:
    """A Part 10 file (Explicit VR Little Endian) whose data set is ``elements`` (group, element, VR, value) as
    given: values pydicom would not write, such as Latin-1 bytes under a UTF-8 declaration."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4"
    head = Dataset()
    head.file_meta = meta
    buf = io.BytesIO()
    head.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    out = [buf.getvalue()]
    for group, elem, vr, value in elements:
        value += b" " if len(value) % 2 else b""
        out.append(struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) if vr in (b"SQ", b"UN", b"UT", b"OB")
                   else struct.pack("<HH2sH", group, elem, vr, len(value)))
        out.append(value)
    return b"".join(out)
