"""File formats of the encrypted-inference stage, with no pickle anywhere.

Contexts and ciphertext files share one container: an 8-byte magic, a 4-byte big-endian header length, a UTF-8
JSON header (the kind, plain metadata, and the name and size of each blob), then the blobs back to back. Each
blob is a SEAL object in SEAL's own serialisation (compressed when SEAL was built with zstd or zlib). Plans are
JSON. Every file is written to a temporary name beside its target and renamed into place, so an error never
leaves a partial output; secrets are created with mode 0600 before a byte is written.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from deidpipe.durable import atomic_write as durable_write
from deidpipe.he.errors import FeatureCountError, FormatError

MAGIC = b"DPHE\x00\x01\r\n"
_HEADER_LEN = struct.Struct(">I")
_MAX_HEADER = 64 * 1024 * 1024


def atomic_write(path: str | Path, chunks: Iterable[bytes], *, mode: int = 0o644) -> Path:
    """Write ``chunks`` to ``path`` (its folder made if missing) through a temporary file in the same folder,
    fsynced, with permissions exactly ``mode`` (0644 unless a secret key's 0600): see
    :func:`deidpipe.durable.atomic_write`. The folder is not synced: a lost name is written again by a rerun."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return durable_write(target, chunks, mode=mode, sync_dir=False)


def write_container(
    path: str | Path, kind: str, meta: dict[str, Any], blobs: list[tuple[str, bytes]], *, mode: int = 0o644
) -> Path:
    """Write a container file: ``kind`` and ``meta`` in the JSON header, then the named blobs."""
    header = dict(meta)
    header["kind"] = kind
    header["blobs"] = [{"name": name, "size": len(data)} for name, data in blobs]
    raw = json.dumps(header, sort_keys=True).encode()
    return atomic_write(path, [MAGIC, _HEADER_LEN.pack(len(raw)), raw, *(b for _, b in blobs)], mode=mode)


def container_bytes(kind: str, meta: dict[str, Any], blobs: list[tuple[str, bytes]]) -> bytes:
    """The bytes :func:`write_container` would write (to measure sizes without touching disk)."""
    header = dict(meta, kind=kind, blobs=[{"name": n, "size": len(b)} for n, b in blobs])
    raw = json.dumps(header, sort_keys=True).encode()
    return b"".join([MAGIC, _HEADER_LEN.pack(len(raw)), raw, *(b for _, b in blobs)])


def parse_container(data: bytes, *, source: str = "<bytes>") -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """Split container bytes into (header, [(name, blob), ...]); FormatError when damaged."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _HEADER_LEN.size:
        raise FormatError(f"{source}: not a deidpipe.he file (bad magic)")
    (n,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _HEADER_LEN.size
    if n > _MAX_HEADER or start + n > len(data):
        raise FormatError(f"{source}: truncated header")
    try:
        header = json.loads(data[start : start + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError(f"{source}: header is not valid JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("blobs"), list):
        raise FormatError(f"{source}: header lacks its blob table")
    pos = start + n
    blobs = []
    for entry in header["blobs"]:
        size = int(entry["size"])
        if pos + size > len(data):
            raise FormatError(f"{source}: truncated (blob {entry['name']!r} ends past the file)")
        blobs.append((str(entry["name"]), data[pos : pos + size]))
        pos += size
    if pos != len(data):
        raise FormatError(f"{source}: trailing bytes after the last blob")
    return header, blobs


def read_container(path: str | Path, *, expect: tuple[str, ...] | None = None) -> tuple[dict, list]:
    """Read and parse a container file, checking its kind when ``expect`` is given."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise FormatError(f"{p}: cannot read ({exc.strerror})") from None
    header, blobs = parse_container(data, source=str(p))
    if expect is not None and header.get("kind") not in expect:
        raise FormatError(f"{p}: is a {header.get('kind')!r} file, expected {' or '.join(expect)}")
    return header, blobs


# -- SEAL objects <-> bytes ---------------------------------------------------------------------------------------
# TenSEAL's sealapi saves and loads through file paths only. An anonymous in-memory file (memfd, one per thread)
# stands in for a real one: nothing touches a disk, key material included, and no file is created per object.
_scratch = threading.local()


_HAVE_MEMFD = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def _scratch_path() -> tuple[int, str] | None:
    if not _HAVE_MEMFD:
        return None
    if getattr(_scratch, "pid", None) != os.getpid():  # a fork gets its own scratch file
        _scratch.fd = os.memfd_create("deidpipe-he", os.MFD_CLOEXEC)
        _scratch.pid = os.getpid()
    return _scratch.fd, f"/proc/self/fd/{_scratch.fd}"


def seal_to_bytes(obj: Any) -> bytes:
    """Serialise a SEAL object (key, ciphertext, parameters) to bytes."""
    scratch = _scratch_path()
    if scratch is None:
        fd, tmp = tempfile.mkstemp(prefix="dphe-")
        os.close(fd)
        try:
            obj.save(tmp)
            return Path(tmp).read_bytes()
        finally:
            os.unlink(tmp)
    fd, path = scratch
    obj.save(path)
    data = os.pread(fd, os.fstat(fd).st_size, 0)
    os.ftruncate(fd, 0)
    return data


def seal_from_bytes(obj: Any, data: bytes, *args: Any) -> Any:
    """Load ``data`` into the empty SEAL object ``obj`` (``args``: the SEAL context when it needs one)."""
    scratch = _scratch_path()
    try:
        if scratch is None:
            fd, tmp = tempfile.mkstemp(prefix="dphe-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                obj.load(*args, tmp)
            finally:
                os.unlink(tmp)
        else:
            fd, path = scratch
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            try:
                obj.load(*args, path)
            finally:
                os.ftruncate(fd, 0)
    except (ValueError, RuntimeError) as exc:
        raise FormatError(f"a SEAL object does not load under these parameters ({type(exc).__name__})") from None
    return obj


# -- plaintext features and scores -----------------------------------------------------------------------------
def _read_array(path: str | Path, what: str) -> np.ndarray:
    """A .npy (no pickle), .parquet or .csv (header row) file as a numpy array; typed errors name the file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".parquet", ".csv"):
        raise FormatError(f"{p}: {what} must be .npy, .parquet or .csv")
    try:
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        import polars as pl

        return (pl.read_parquet(p) if suffix == ".parquet" else pl.read_csv(p)).to_numpy()
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a typed error
        raise FormatError(f"{p}: cannot read {what} ({type(exc).__name__})") from None


def read_features(path: str | Path) -> np.ndarray:
    """Read a 2-D float matrix (samples x features) from .npy, .parquet or .csv (header row, numeric columns)."""
    return as_feature_matrix(_read_array(path, "features"), source=str(Path(path)))


def as_feature_matrix(arr: Any, *, source: str = "features") -> np.ndarray:
    """Validate and convert to a finite float64 matrix of shape (samples, features)."""
    try:
        x = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise FeatureCountError(f"{source}: features are not numeric") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise FeatureCountError(f"{source}: expected a non-empty samples x features matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise FeatureCountError(f"{source}: features contain NaN or infinite values")
    return x


def scores_csv(scores: np.ndarray, labels: list | np.ndarray, columns: list[str], label_column: str) -> bytes:
    """CSV bytes: one row per sample, the score columns then the label column."""
    lines = [",".join([*columns, label_column])]
    for row, label in zip(scores, labels, strict=True):
        lines.append(",".join([*(repr(float(v)) for v in row), str(label)]))
    return ("\n".join(lines) + "\n").encode()


# -- ciphertext bundles ----------------------------------------------------------------------------------------
FEATURES_KIND = "he-features"
SCORES_KIND = "he-scores"


class CipherBundle:
    """Serialised ciphertexts plus plain metadata: encrypted features (client -> server) or scores (back).

    ``meta`` holds the context id, the packing, sample and feature/output counts, and for scores the output
    rule (task, classes); ``blobs`` are SEAL ciphertexts, in order. Holds no key and needs none to be saved.
    """

    def __init__(self, kind: str, meta: dict[str, Any], blobs: list[bytes]) -> None:
        """Wrap ``blobs`` of ``kind`` (he-features or he-scores) with their metadata."""
        if kind not in (FEATURES_KIND, SCORES_KIND):
            raise FormatError(f"unknown ciphertext bundle kind {kind!r}")
        self.kind, self.meta, self.blobs = kind, dict(meta), list(blobs)

    def __repr__(self) -> str:
        """Counts only."""
        return f"CipherBundle({self.kind}, {self.meta.get('packing')}, {len(self.blobs)} ciphertexts)"

    @property
    def context_id(self) -> str:
        """Id of the key generation these ciphertexts belong to."""
        return str(self.meta.get("context_id"))

    def to_bytes(self) -> bytes:
        """The file content."""
        return container_bytes(self.kind, self.meta, [(f"ct{i}", b) for i, b in enumerate(self.blobs)])

    @property
    def nbytes(self) -> int:
        """Size of the file content in bytes."""
        return len(self.to_bytes())

    def save(self, path: str | Path) -> Path:
        """Write atomically."""
        return write_container(path, self.kind, self.meta, [(f"ct{i}", b) for i, b in enumerate(self.blobs)])

    @classmethod
    def load(cls, path: str | Path, *, expect: str) -> CipherBundle:
        """Read a bundle file of kind ``expect``."""
        header, blobs = read_container(path, expect=(expect,))
        meta = {k: v for k, v in header.items() if k not in ("blobs", "kind")}
        if "context_id" not in meta or "packing" not in meta:
            raise FormatError(f"{path}: ciphertext file lacks its context id or packing")
        return cls(header["kind"], meta, [b for _, b in blobs])


def read_labels(path: str | Path) -> np.ndarray:
    """Read labels (one column, or an indicator matrix) from .npy, .parquet or .csv."""
    arr = _read_array(path, "labels")
    if Path(path).suffix.lower() != ".npy" and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    return np.asarray(arr)
