"""``deidpipe scan`` throughput and the risk module on a large table.

    python benchmarks/scan.py [--objects 10000] [--workers N] [--rows 1000000] [--keep DIR] [--skip-run]

1. A synth archive of about ``--objects`` objects (``deidpipe synth``, about 10 objects a patient) is scanned
   header-only (``scan(..., pixels=False, faces=False)``) and de-identified by ``deidpipe run`` with the header
   stage only (``pixels: off``, ``deface: off``), both in this process, same workers. Prints objects/s of each and
   the ratio (issue 11's target: scan at least 2x run, since it writes nothing).
2. ``deidpipe.risk.assess`` on a ``--rows`` table of 8 quasi-identifiers (ages, sexes, postcodes, years, ...):
   every ARX figure (classes, k, prosecutor / journalist / marketer, sample and population uniqueness by Zayatz,
   Pitman, SNB and Dankar's rule at π = 0.1). Target: under 2 s for 1,000,000 rows. pycanon's k-anonymity on the
   same table is timed beside it when pycanon is installed (it is not part of the bench extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

KEY = b"benchmark-secret-0123456789abcdef"


def _workers(n: int | None) -> int:
    if n:
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def build_archive(root: Path, objects: int) -> int:
    from deidpipe.synth import generate_archive

    patients = max(1, round(objects / 10))
    key = generate_archive(root, patients=patients, seed=11)
    return len(key.files())


def bench_scan_vs_run(root: Path, scratch: Path, workers: int, skip_run: bool) -> None:
    from deidpipe.keys import ProjectKey
    from deidpipe.pipeline.runner import run
    from deidpipe.policy import Policy
    from deidpipe.scan import scan

    t = time.perf_counter()
    report = scan(root, pixels=False, faces=False, workers=workers)
    scan_s = time.perf_counter() - t
    scan_rate = report.objects / scan_s
    print(f"scan (headers only, {workers} workers): {report.objects} objects in {scan_s:.2f} s = "
          f"{scan_rate:,.0f} objects/s; {len(report.findings)} findings")
    if skip_run:
        return
    policy = Policy.basic(pixels="off", deface="off")
    t = time.perf_counter()
    rr = run(root, scratch / "out", policy, key=ProjectKey(KEY), workers=workers)
    run_s = time.perf_counter() - t
    run_rate = rr.processed / run_s
    print(f"deidpipe run (header stage, {workers} workers): {rr.processed} objects in {run_s:.2f} s = "
          f"{run_rate:,.0f} objects/s")
    print(f"scan / run objects per second: {scan_rate / run_rate:.2f}x (target: >= 2x)")


def risk_table(rows: int):
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(0)
    return pl.DataFrame({
        "age": rng.integers(0, 100, rows).astype(str),
        "sex": rng.choice(["F", "M"], rows),
        "postcode": rng.integers(1000, 1400, rows).astype(str),
        "study_year": rng.integers(2000, 2025, rows).astype(str),
        "institution": rng.integers(0, 40, rows).astype(str),
        "manufacturer_model": rng.integers(0, 12, rows).astype(str),
        "body_part": rng.choice(["HEAD", "CHEST", "ABDOMEN", "PELVIS", "KNEE", "SPINE"], rows),
        "station": rng.integers(0, 80, rows).astype(str),
    })


def bench_risk(rows: int) -> None:
    from deidpipe.risk import assess

    df = risk_table(rows)
    qi = df.columns
    assess(df.head(1000), qi, fraction=0.1)  # warm up (imports, polars' thread pool)
    t = time.perf_counter()
    r = assess(df, qi, fraction=0.1, threshold=0.2)
    s = time.perf_counter() - t
    pu = r.population_uniqueness
    print(f"risk on {rows:,} rows x {len(qi)} quasi-identifiers: {s:.2f} s (target: < 2 s for 1,000,000) -- "
          f"{r.classes:,} classes, k = {r.k}, prosecutor records at risk {r.prosecutor.records_at_risk:.4f}, "
          f"sample uniqueness {r.sample_uniqueness:.4f}, Dankar ({pu.dankar_model}) {pu.dankar}")
    try:
        import pycanon  # noqa: F401
        from pycanon import anonymity
    except ImportError:
        print("pycanon: not installed here (pip install pycanon); its k-anonymity is not timed")
        return
    pdf = df.to_pandas()
    t = time.perf_counter()
    k = anonymity.k_anonymity(pdf, list(qi))
    pc = time.perf_counter() - t
    print(f"pycanon k-anonymity on the same table: k = {k} in {pc:.2f} s; deidpipe, every ARX figure: {s:.2f} s "
          f"({pc / s:.1f}x faster, k alone against all of them)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="build the archive here and keep it (reused if it "
                                                            "is already there)")
    ap.add_argument("--skip-run", action="store_true", help="time the scan only")
    ap.add_argument("--skip-risk", action="store_true")
    ap.add_argument("--skip-scan", action="store_true")
    args = ap.parse_args(argv)
    workers = _workers(args.workers)
    scratch = Path(tempfile.mkdtemp(prefix="deidpipe-bench-scan-"))
    try:
        if not args.skip_scan:
            root = args.keep or scratch / "archive"
            if not (root / "answer_key.json").exists():
                t = time.perf_counter()
                n = build_archive(root, args.objects)
                print(f"synth archive: {n} objects in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            bench_scan_vs_run(root, scratch, workers, args.skip_run)
        if not args.skip_risk:
            bench_risk(args.rows)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
