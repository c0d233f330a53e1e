"""The output side: where an object goes, how it is written, and the quarantine.

* The default layout is ``<patient>/<study>/<series>/<instance>.dcm`` built from the *de-identified* data set
  (PatientID and the three UIDs are pseudonyms by then), never from input values. ``keep`` mirrors the input's
  relative paths instead (off by default: folder and file names often carry names, IDs and dates).
* A write goes to ``DST/_deidpipe/tmp`` and is linked into place only when complete, so a reader (or a crash) never
  sees half a file. The temporary folder is under DST so that the hard link never crosses file systems; its files
  are named by the object's keyed id (no input name), and the folder is removed at the end of a run. A finished file
  is never replaced: when the target exists, identical bytes count as done and different bytes are a conflict that
  quarantines the newcomer.
* The quarantine holds a JSON record per failed object (stage, reason, hashes), never a copy of the object.
* Durability: a file is made durable before it is linked into place (a name in the tree never points at a partial
  file, even after a power cut): a worker stages a task's files, flushes them with one ``syncfs`` (or an fsync
  each), then links them (:func:`stage_output`, :func:`flush_staged`, :func:`publish`); and the runner fsyncs
  the folders of a batch's outputs and records (:func:`sync_dirs`) before the journal says they exist. On resume
  a finished output is trusted only when its size and hash match the journal (:func:`output_matches`); one that
  does not is removed (:func:`remove_output`) and made again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from pydicom.dataset import Dataset

from deidpipe.durable import atomic_write, fsync_dir, sync_files
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
        rel = input_relpath.replace("//", "/")  # a member of an archive in the source: under the archive's name
        # The source never lists such a name to be read; checked again here because this path is joined to DST.
        if rel.startswith("/") or any(p in ("", ".", "..") for p in rel.split("/")):
            raise DeidError("the input path cannot be mirrored inside the destination")
        if rel.split("/", 1)[0] in (CONTROL_DIR, QUARANTINE_DIR):
            rel = "_" + rel
        return rel
    # A data set without SOP Common module is named by its File Meta (see header.engine.check_storable).
    sop = ds.get("SOPInstanceUID") or (getattr(ds, "file_meta", None) or {}).get("MediaStorageSOPInstanceUID")
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


def _same_file(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (read in chunks: an output can be large)."""
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                ca, cb = fa.read(1 << 20), fb.read(1 << 20)
                if ca != cb:
                    return False
                if not ca:
                    return True
    except OSError:
        return False


#: Directories this process has made or found (the output tree is only ever added to during a run).
_made_dirs: set[str] = set()


def _ensure_dir(path: Path) -> None:
    key = str(path)
    if key not in _made_dirs:
        path.mkdir(parents=True, exist_ok=True)
        _made_dirs.add(key)


def stage_output(dst: Path, data: bytes | Sequence[bytes], token: str) -> Path:
    """Write ``data`` (bytes, or pieces written one after the other) to a temporary file under ``DST/_deidpipe/tmp``
    and return its path. Not yet durable (see :func:`flush_staged`) and not yet in the tree (:func:`publish`)."""
    parts = [data] if isinstance(data, bytes | bytearray | memoryview) else data
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
    return tmp


def flush_staged(dst: Path, staged: Sequence[Path]) -> None:
    """Make staged files durable before they get a name in the tree, so that a crash or a power cut never leaves
    a short output. One ``syncfs`` for a whole task's files: an fsync per file cost about 5 ms per object on this
    machine's disk (a journal commit each), a third of the object's whole cost; elsewhere an fsync per file."""
    sync_files(staged, dst / TMP_DIR)


def publish(dst: Path, relpath: str, tmp: Path) -> str:
    """Give the staged file ``tmp`` its name ``dst/relpath``, atomically and without replacing a different
    finished file; the temporary name goes in any case.

    Returns ``"written"`` or ``"present"`` (an identical file was already there); raises
    :class:`OutputConflictError` when a different file is there.
    """
    final = dst / relpath
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
            if _same_file(final, tmp):
                return "present"
            raise OutputConflictError("the output path already holds a different object") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            # A file system without hard links: rename, after checking (not race free across hosts).
            if final.exists():
                if _same_file(final, tmp):
                    return "present"
                raise OutputConflictError("the output path already holds a different object") from None
            os.replace(tmp, final)
            return "written"
    finally:
        discard_staged(tmp)


def discard_staged(tmp: Path) -> None:
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


def quarantine_bytes(record: dict[str, Any]) -> bytes:
    """The exact bytes of a quarantine record (resume compares them to tell a damaged record from a good one)."""
    return (json.dumps(record, sort_keys=True, indent=1) + "\n").encode()


def quarantine_path(dst: Path, object_id: str) -> Path:
    return dst / QUARANTINE_DIR / f"{object_id}.json"


def write_quarantine(dst: Path, record: dict[str, Any]) -> Path:
    """One JSON record per quarantined object, named by the keyed hash of its input path; the file is durable
    when this returns, its name once the caller has :func:`sync_dirs` the quarantine folder."""
    qdir = dst / QUARANTINE_DIR
    qdir.mkdir(parents=True, exist_ok=True)
    path = quarantine_path(dst, record["object_id"])
    tmp = qdir / f".{record['object_id']}.{os.getpid()}.tmp"
    return atomic_write(path, [quarantine_bytes(record)], tmp=tmp, sync_dir=False)


def remove_quarantine(dst: Path, object_id: str) -> bool:
    """Remove a stale record; True when there was one."""
    try:
        quarantine_path(dst, object_id).unlink()
    except FileNotFoundError:
        return False
    return True


def sync_dirs(dst: Path, relpaths: Iterable[str], named: set[Path]) -> None:
    """fsync the folder of each path (relative to ``dst``: the files added to it), and the parent of each
    folder on the way up to ``dst`` whose own name is not yet durable. ``named`` holds the folders whose names
    this run has already made durable (one sync each), so a batch of one series usually costs one sync."""
    todo: set[Path] = set()
    new: list[Path] = []
    for rel in relpaths:
        folder = (dst / rel).parent
        todo.add(folder)
        while folder != dst and folder not in named and dst in folder.parents:
            todo.add(folder.parent)
            new.append(folder)
            folder = folder.parent
    for folder in sorted(todo, key=lambda f: len(f.parts), reverse=True):
        fsync_dir(folder)
    named.update(new)


def _inside_output(dst: Path, relpath: str | None) -> Path | None:
    """``dst/relpath`` when it names an output file inside DST (not the bookkeeping or the quarantine, no
    ``..``, no folder link leading out), else None: a journal is data, never trusted to name what to touch."""
    if not relpath:
        return None
    rel = PurePosixPath(relpath)
    if rel.is_absolute() or any(p in ("", ".", "..") for p in rel.parts) or rel.parts[0] in (
            CONTROL_DIR, QUARANTINE_DIR):
        return None
    path = dst / relpath
    root = Path(os.path.realpath(dst))
    parent = Path(os.path.realpath(path.parent))
    if parent != root and root not in parent.parents:
        return None
    return path


def output_matches(dst: Path, relpath: str | None, size: int | None, digest: str | None) -> bool:
    """True when the output a journal line names is a regular file inside DST with that size and SHA-256."""
    path = _inside_output(dst, relpath)
    if path is None or size is None or not digest:
        return False
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError:
        return False
    return h.hexdigest() == digest


def remove_output(dst: Path, relpath: str | None) -> bool:
    """Remove a damaged output (only the path a journal line names, only inside DST) so it can be made again;
    True when something was removed."""
    path = _inside_output(dst, relpath)
    if path is None:
        return False
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True


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
