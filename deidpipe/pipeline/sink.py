"""The output side: where an object goes, how it is written, and the quarantine.

* The default layout is ``<patient>/<study>/<series>/<instance>.dcm`` built from the *de-identified* data set
  (PatientID and the three UIDs are pseudonyms by then), never from input values. ``keep`` mirrors the input's
  relative paths instead (off by default: folder and file names often carry names, IDs and dates).
* A write goes to ``DST/_deidpipe/tmp`` and is linked into place only when complete, so a reader (or a crash)
  never sees half a file. A finished file is never replaced: when the target exists, identical bytes count as
  done and different bytes are a conflict that quarantines the newcomer.
* The quarantine holds a JSON record per failed object (stage, reason, hashes), never a copy of the object.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from deidpipe.errors import DeidError

CONTROL_DIR = "_deidpipe"
TMP_DIR = f"{CONTROL_DIR}/tmp"
QUARANTINE_DIR = "quarantine"

LAYOUT_PSEUDONYM = "pseudonym"
LAYOUT_KEEP = "keep"

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class OutputConflictError(DeidError):
    """The output path already holds a different object."""


def _component(value: Any, fallback: str) -> str:
    text = str(value).strip() if value not in (None, "") else ""
    text = _SAFE.sub("_", text).strip(".")
    return text[:96] or fallback


def output_relpath(ds: Dataset, layout: str, input_relpath: str) -> str:
    """The output path (relative to DST) for a de-identified data set."""
    if layout == LAYOUT_KEEP:
        rel = input_relpath
        # The source never lists such a name to be read; checked again here because this path is joined to DST.
        if rel.startswith("/") or any(p in ("", ".", "..") for p in rel.split("/")):
            raise DeidError("the input path cannot be mirrored inside the destination")
        if rel.split("/", 1)[0] in (CONTROL_DIR, QUARANTINE_DIR):
            rel = "_" + rel
        return rel
    sop = ds.get("SOPInstanceUID")
    if not sop:
        raise DeidError("the de-identified object has no SOP Instance UID to name its file")
    return "/".join(
        (
            _component(ds.get("PatientID"), "NO_PATIENT_ID"),
            _component(ds.get("StudyInstanceUID"), "NO_STUDY_UID"),
            _component(ds.get("SeriesInstanceUID"), "NO_SERIES_UID"),
            _component(sop, "NO_SOP_UID") + ".dcm",
        )
    )


def _same_content(path: Path, data: Sequence[bytes]) -> bool:
    try:
        if path.stat().st_size != sum(len(d) for d in data):
            return False
        return path.read_bytes() == b"".join(data)
    except OSError:
        return False


#: Directories this process has made or found (the output tree is only ever added to during a run).
_made_dirs: set[str] = set()


def _ensure_dir(path: Path) -> None:
    key = str(path)
    if key not in _made_dirs:
        path.mkdir(parents=True, exist_ok=True)
        _made_dirs.add(key)


def write_atomic(dst: Path, relpath: str, data: bytes | Sequence[bytes], token: str) -> str:
    """Write ``data`` (bytes, or pieces written one after the other) to ``dst/relpath`` atomically and without
    replacing a different finished file.

    Returns ``"written"`` or ``"present"`` (an identical file was already there); raises
    :class:`OutputConflictError` when a different file is there.
    """
    parts = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
    final = dst / relpath
    tmp = dst / TMP_DIR / f"{token}.{os.getpid()}.tmp"
    try:
        fh = open(tmp, "wb")  # noqa: SIM115 - closed below
    except FileNotFoundError:  # the temporary folder is made once per process, or was removed since
        _made_dirs.discard(str(tmp.parent))
        _ensure_dir(tmp.parent)
        fh = open(tmp, "wb")  # noqa: SIM115
    with fh:
        for part in parts:
            fh.write(part)
    try:
        _ensure_dir(final.parent)
        try:
            try:
                os.link(tmp, final)  # atomic and never replaces: fails when final exists
            except FileNotFoundError:  # the folder went away since this process made it
                _made_dirs.discard(str(final.parent))
                _ensure_dir(final.parent)
                os.link(tmp, final)
            return "written"
        except FileExistsError:
            if _same_content(final, parts):
                return "present"
            raise OutputConflictError("the output path already holds a different object") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            # A file system without hard links: rename, after checking (not race free across hosts).
            if final.exists():
                if _same_content(final, parts):
                    return "present"
                raise OutputConflictError("the output path already holds a different object") from None
            os.replace(tmp, final)
            return "written"
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def output_digest(data: bytes | Sequence[bytes]) -> str:
    """A plain hash of an output file (its content is already de-identified)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return hashlib.sha256(data).hexdigest()
    h = hashlib.sha256()
    for part in data:
        h.update(part)
    return h.hexdigest()


def write_quarantine(dst: Path, record: dict[str, Any]) -> Path:
    """One JSON record per quarantined object, named by the keyed hash of its input path."""
    qdir = dst / QUARANTINE_DIR
    qdir.mkdir(parents=True, exist_ok=True)
    path = qdir / f"{record['object_id']}.json"
    tmp = qdir / f".{record['object_id']}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, sort_keys=True, indent=1) + "\n")
    tmp.replace(path)
    return path


def remove_quarantine(dst: Path, object_id: str) -> None:
    try:
        (dst / QUARANTINE_DIR / f"{object_id}.json").unlink()
    except FileNotFoundError:
        pass


def clean_temporaries(dst: Path) -> int:
    """Remove what a killed run left half written; returns how many files went."""
    tmp = dst / TMP_DIR
    count = 0
    if tmp.exists():
        count = sum(1 for _ in tmp.iterdir())
        shutil.rmtree(tmp)
    qdir = dst / QUARANTINE_DIR
    if qdir.exists():
        for stale in qdir.glob(".*.tmp"):
            stale.unlink()
            count += 1
    return count
