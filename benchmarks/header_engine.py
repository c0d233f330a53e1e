"""Time per file of the header engine alone, beside the floor: pydicom read + write of the same files.

    python benchmarks/header_engine.py [--repeat 3]

Files: every file of pydicom's bundled test data that the engine de-identifies, plus a synth archive.
Each variant reads from memory and writes to memory (no disk in the timing), so the ratio is the engine's
own cost. The policy is the Basic Profile with text screening by presidio (the default).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_files
from rich.console import Console
from rich.table import Table

from deidpipe.dicomio import quiet_pydicom, read_dataset, write_dataset
from deidpipe.errors import DeidError
from deidpipe.header.engine import deidentify
from deidpipe.header.text import warm_up
from deidpipe.keys import ProjectKey
from deidpipe.policy import Policy
from deidpipe.synth import generate_archive


def corpus() -> list[tuple[str, bytes]]:
    key = ProjectKey(b"benchmark-key-0123456789")
    files: list[tuple[str, bytes]] = []
    for path in get_testdata_files():
        p = Path(path)
        if not p.is_file():
            continue
        try:
            deidentify(read_dataset(p), Policy.basic(), key)
            floor(p.read_bytes())
        except (DeidError, TypeError, ValueError):
            continue  # refused by the engine, or not writable by plain pydicom: not comparable
        files.append((p.name, p.read_bytes()))
    tmp = Path(tempfile.mkdtemp())
    answer = generate_archive(tmp / "synth", patients=4, seed=1, real_world=False)
    files += [(f, (tmp / "synth" / f).read_bytes()) for f in answer.files()]
    return files


def floor(data: bytes) -> None:
    with quiet_pydicom():
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        ds.save_as(io.BytesIO())


def engine(data: bytes, policy: Policy, key: ProjectKey) -> None:
    ds = read_dataset(io.BytesIO(data), name="bench")
    write_dataset(deidentify(ds, policy, key).dataset, io.BytesIO())


def timed(fn, files: list[tuple[str, bytes]], repeat: int) -> float:
    """Median over repeats of the total time for all files, in seconds."""
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _, data in files:
            fn(data)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    key = ProjectKey(b"benchmark-key-0123456789")
    files = corpus()
    warm_up()
    variants = {
        "pydicom read + write (floor)": lambda d: floor(d),
        "deidpipe engine, Basic Profile": lambda d: engine(d, Policy.basic(), key),
        "deidpipe engine, + CleanDescriptors, ModifiedDates": lambda d: engine(
            d, Policy.basic(options=["CleanDescriptors", "RetainLongModifiedDates"]), key),
        "deidpipe engine, strict": lambda d: engine(d, Policy.basic(strict=True), key),
    }
    for fn in variants.values():  # warm caches (presidio spans are cached per text, as in a real run)
        timed(fn, files, 1)
    results = {name: timed(fn, files, args.repeat) for name, fn in variants.items()}
    base = results["pydicom read + write (floor)"]
    table = Table(title=f"Header engine: {len(files)} files, {sum(len(d) for _, d in files) / 1e6:.1f} MB, "
                        f"median of {args.repeat}")
    for col in ("variant", "ms / file", "files / s", "× floor"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for name, secs in results.items():
        table.add_row(name, f"{secs / len(files) * 1000:.2f}", f"{len(files) / secs:.0f}", f"{secs / base:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
