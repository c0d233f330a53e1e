"""Fuzz: a batch of hostile, marked inputs through the real CLI, in worker processes, with every warning shown.

Seeded and bounded (about a minute). The inputs are made by :mod:`tests.fuzzing`. The run must finish; every input
must have its audit row; no marker and no original UID may appear in any output byte, the manifest (but its input
path column), the audit, a quarantine record, stdout or stderr; no written object may lack pixel data its header
declares; the input must be left as it was; and the peak memory of the run's processes must stay bounded although
a deflate bomb inflates to gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest

from deidpipe.keys import ProjectKey
from deidpipe.pipeline.index import object_id
from tests.fuzzing import build_inputs

REPO = Path(__file__).resolve().parents[1]
SECRET = "fuzz-secret-0123456789abcdef"
#: The suite's seed and size; DEIDPIPE_FUZZ_SEED and DEIDPIPE_FUZZ_COUNT explore others by hand.
SEED = int(os.environ.get("DEIDPIPE_FUZZ_SEED", "20261201"))
COUNT = int(os.environ.get("DEIDPIPE_FUZZ_COUNT", "90"))
#: Peak resident memory of any one process of the run: the bombs inflate to 2 GiB and 256 MiB.
MAX_RSS_MIB = 1200

#: Runs the CLI as a child and prints the largest peak RSS among its process tree (KiB on Linux) to a file.
WRAPPER = (
    "import resource, subprocess, sys; "
    "rc = subprocess.run(sys.argv[2:], timeout=300).returncode; "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(rc)"
)


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _searchable(path: Path) -> bytes:
    """A file's bytes as a reader would see them: deflated data sets inflated, Parquet tables as their text."""
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
        if "path" in frame.columns and path.name == "manifest.parquet":
            frame = frame.drop("path")  # input paths, the steward's own: no marker in our file names anyway
        return frame.write_csv().encode()
    data = path.read_bytes()
    if path.suffix == ".dcm" and b"1.2.840.10008.1.2.1.99" in data[:1024]:
        meta_end = 144 + int.from_bytes(data[140:144], "little")
        data = data[:meta_end] + zlib.decompressobj(-15).decompress(data[meta_end:], 1 << 28)
    return data


def _check_pixels(path: Path) -> str | None:
    """Why a written object's pixel data is incomplete, or None."""
    ds = pydicom.dcmread(path)
    if "Rows" not in ds or "Columns" not in ds or "BitsAllocated" not in ds:
        return None
    if "PixelData" not in ds:
        return "no Pixel Data"
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the image is not whole
        return f"pixel data cannot be decoded ({type(exc).__name__})"
    frames = int(ds.get("NumberOfFrames") or 1)
    expected = frames * ds.Rows * ds.Columns * int(ds.get("SamplesPerPixel") or 1)
    if np.asarray(arr).size != expected:
        return "pixel array has the wrong size"
    return None


@pytest.mark.slow
def test_hostile_batch_leaks_nothing_and_accounts_for_everything(tmp_path, synth_archive):
    synth_root, _ = synth_archive
    synth_files = sorted(synth_root.rglob("*.dcm"))[:6]
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    inputs = build_inputs(src, SEED, COUNT, synth_files)
    before = _tree_digest(src)
    rss_file = tmp_path / "rss"
    env = dict(os.environ, DEIDPIPE_KEY=SECRET, PYTHONWARNINGS="always")
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(rss_file), sys.executable, "-c", "from deidpipe.cli import app; app()",
         "run", str(src), str(dst), "--workers", "2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=360)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the wrapper, the run and its workers
        proc.communicate()
        pytest.fail("the run did not finish within 360 s")
    terminal = stdout + stderr
    assert proc.returncode in (0, 1), terminal.decode(errors="replace")[-3000:]
    assert b"Traceback" not in terminal, terminal.decode(errors="replace")[-3000:]

    # Every input has exactly one audit row.
    key = ProjectKey(SECRET.encode())
    audit = pl.read_parquet(dst / "_deidpipe" / "audit.parquet")
    assert sorted(audit["object_id"]) == sorted(object_id(key, item.name) for item in inputs)
    quarantined = audit.filter(pl.col("status") == "quarantined")
    for oid in quarantined["object_id"]:
        record = json.loads((dst / "quarantine" / f"{oid}.json").read_text())
        assert record["reason"]
    written = audit.filter(pl.col("status") == "written")
    assert written.height >= COUNT // 5, "almost nothing was written: the fuzz no longer exercises the writer"

    # No marker, no original UID, anywhere.
    leaks = []
    files = [p for p in dst.rglob("*") if p.is_file()]
    texts = {p: _searchable(p) for p in files}
    texts[Path("<terminal>")] = terminal
    for item in inputs:
        for needle in item.markers:
            for where, blob in texts.items():
                if needle.encode() in blob:
                    leaks.append(f"{needle} ({item.kind}) in {where.name}")
    assert not leaks, "\n".join(leaks[:40])

    # No written object without the pixels its header declares.
    short = {p.name: why for p in dst.rglob("*.dcm") if "_deidpipe" not in p.parts and (why := _check_pixels(p))}
    assert not short, short

    # The input is as it was; memory stayed bounded.
    assert _tree_digest(src) == before
    peak_mib = int(rss_file.read_text()) / 1024
    assert peak_mib < MAX_RSS_MIB, f"peak RSS {peak_mib:.0f} MiB"
