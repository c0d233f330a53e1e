"""Releasing a table: deidpipe's lattice search (``deidpipe.risk.anonymise``) beside ARX 3.9, and at scale.

    python benchmarks/risk_generalise.py [--rows 1000000] [--skip-large] [--arx-classpath CP]

1. adult.csv (30,162 rows, 8 quasi-identifiers, ARX's own hierarchies from ``benchmarks/data/arx_adult/``), suppression
   limit 5%, ARX's Loss metric, for each setting: k = 5 and 10, average prosecutor risk 0.2 and 0.1, highest
   prosecutor risk 0.2. deidpipe's chosen levels, suppressed records, loss and time (search, release and the risk
   before and after) beside ARX's, and the ratios. ARX's figures come from ``arx_results.json`` (recorded by
   ``benchmarks/arx/record.py``); with ``--arx-classpath`` (``benchmarks/arx/build_arx.sh``) ARX also runs live
   here, and its times are this machine's. Target: adult under 5 s a setting.
2. A synthetic table of ``--rows`` rows and 5 quasi-identifiers (age by widths 5,10,20,*; sex; a 5-digit postcode
   cut digit by digit; admission year by widths 5,10,*; one of 60 wards in 6 departments), k = 5, each size in a
   fresh process: time and peak RSS at a quarter of the rows and at all of them. The table itself grows with the
   rows; the search works on the distinct tuples, so what it adds on top of the loaded table should not. Target:
   1,000,000 rows under 60 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deidpipe.risk import Hierarchy, Target  # noqa: E402

ADULT = REPO.parent / "shared" / "reference" / "adult.csv"
ARX_DIR = REPO / "benchmarks" / "data" / "arx_adult"
ARX_RESULTS = ARX_DIR / "arx_results.json"

SETTINGS: dict[str, Target] = {
    "k5": Target(k=5),
    "k10": Target(k=10),
    "avg0.2": Target(average_risk=0.2),
    "avg0.1": Target(average_risk=0.1),
    "highest0.2": Target(max_risk=0.2),
}
"""The settings ARX was run with (``benchmarks/arx/ArxAdult.java``), all at ARX's suppression limit of 5%."""


def adult_problem():  # -> (pl.DataFrame, list[str], dict[str, Hierarchy], Path)
    """adult.csv, its 8 quasi-identifiers (every column but salary-class) and ARX's hierarchies for them."""
    import polars as pl

    df = pl.read_csv(ADULT, separator=";", infer_schema=False)
    qi = [c for c in df.columns if c != "salary-class"]
    hierarchies = {c: Hierarchy.from_csv(c, ARX_DIR / f"adult_hierarchy_{c}.csv") for c in qi}
    return df, qi, hierarchies, ADULT


def _levels(levels: dict[str, int]) -> str:
    return "".join(str(v) for v in levels.values())


def bench_adult(arx_classpath: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from deidpipe.risk import anonymise

    df, qi, hierarchies, _ = adult_problem()
    recorded = json.loads(ARX_RESULTS.read_text())
    arx = recorded["settings"]
    arx_source = f"recorded {recorded['source']['recorded']}"
    if arx_classpath:
        out = subprocess.run(["java", "-Xmx2g", "-cp", arx_classpath, "ArxAdult", "anonymise", str(ADULT),
                              str(ARX_DIR)], check=True, capture_output=True, text=True)
        arx = json.loads(out.stdout)["settings"]
        arx_source = "run live"
    table = Table(title=f"adult.csv, {df.height} rows, {len(qi)} QIs ({', '.join(qi)}), suppression 5%: "
                        f"deidpipe vs ARX {recorded['source']['tool'].split(' (')[0]} ({arx_source})")
    for col in ("setting", "levels deidpipe", "levels ARX", "suppressed d / ARX", "loss deidpipe", "loss ARX",
                "loss ratio", "nodes checked d / ARX", "s deidpipe", "s ARX", "time ratio"):
        table.add_column(col, justify="left" if col.startswith(("setting", "levels")) else "right")
    for name, target in SETTINGS.items():
        start = time.perf_counter()
        _, result = anonymise(df, qi, hierarchies, target)
        seconds = time.perf_counter() - start
        a = arx[name]
        table.add_row(name, _levels(result.levels), _levels(a["levels"]), f"{result.suppressed} / {a['suppressed']}",
                      f"{result.loss:.6f}", f"{a['loss']:.6f}", f"{result.loss / a['loss']:.4f}",
                      f"{result.nodes_checked} / {a['nodes_checked']}", f"{seconds:.2f}", f"{a['seconds']:.2f}",
                      f"{a['seconds'] / seconds:.1f}x")
    Console(width=200).print(table)
    print("levels in the order " + ", ".join(qi) + "; deidpipe's time includes the release and the risk before "
          "and after; ARX's is ARXAnonymizer.anonymize (the JVM's first run includes its warm-up).")


def synthetic(rows: int, seed: int = 7):  # -> (pl.DataFrame, list[str], dict[str, Hierarchy])
    """A table of ``rows`` rows with 5 quasi-identifiers, all text (as a CSV is read), and their hierarchies."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    postcodes = [f"{v:05d}" for v in rng.choice(100_000, size=2_000, replace=False)]
    wards = [f"W{v:02d}" for v in range(60)]
    df = pl.DataFrame({
        "age": rng.integers(0, 100, rows).astype(str),
        "sex": rng.choice(np.array(["F", "M"]), rows),
        "postcode": np.array(postcodes)[rng.integers(0, len(postcodes), rows)],
        "year": rng.integers(2000, 2024, rows).astype(str),
        "ward": np.array(wards)[rng.integers(0, len(wards), rows)],
        "outcome": rng.integers(0, 2, rows).astype(str),
    })
    qi = ["age", "sex", "postcode", "year", "ward"]
    hierarchies = {
        "age": Hierarchy.from_widths("age", ["5", "10", "20", "*"], df.get_column("age").unique().to_list()),
        "postcode": Hierarchy.from_rows("postcode", [(p, p[:4] + "*", p[:3] + "**", p[:2] + "***", "*")
                                                     for p in postcodes]),
        "year": Hierarchy.from_widths("year", ["5", "10", "*"], df.get_column("year").unique().to_list()),
        "ward": Hierarchy.from_rows("ward", [(w, f"D{int(w[1:]) // 10}", "*") for w in wards]),
    }
    return df, qi, hierarchies


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(rows: int) -> None:
    """One size, in this (fresh) process: prints a JSON line with the times and peak RSS."""
    from deidpipe.risk import anonymise

    base = _rss_mib()
    df, qi, hierarchies = synthetic(rows)
    loaded = _rss_mib()
    start = time.perf_counter()
    _, result = anonymise(df, qi, hierarchies, Target(k=5))
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": rows, "seconds": seconds, "rss_base": base, "rss_loaded": loaded,
                      "rss_peak": _rss_mib(), "levels": result.levels, "suppressed": result.suppressed,
                      "loss": result.loss, "nodes_checked": result.nodes_checked,
                      "lattice_size": result.transformation.lattice_size,
                      "distinct": result.risk_before.classes}))


def bench_large(rows: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Synthetic table, 5 QIs, k = 5, suppression 5% (one fresh process each)")
    for col in ("rows", "distinct tuples", "lattice / checked", "levels", "suppressed", "loss", "s",
                "RSS table MiB", "RSS peak MiB", "peak - table MiB"):
        table.add_column(col, justify="right")
    for n in (rows // 4, rows):
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], check=True, capture_output=True,
                             text=True, cwd=REPO)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        table.add_row(str(n), str(r["distinct"]), f"{r['lattice_size']} / {r['nodes_checked']}",
                      _levels(r["levels"]), str(r["suppressed"]), f"{r['loss']:.4f}", f"{r['seconds']:.1f}",
                      f"{r['rss_loaded']:.0f}", f"{r['rss_peak']:.0f}", f"{r['rss_peak'] - r['rss_loaded']:.0f}")
    Console(width=200).print(table)
    print("time: search, release and the risk before and after; RSS table: after building the table (all text); "
          "peak - table: what anonymise adds.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--arx-classpath", help="run ARX live (benchmarks/arx/build_arx.sh prints it)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    bench_adult(args.arx_classpath)
    if not args.skip_large:
        bench_large(args.rows)


if __name__ == "__main__":
    main()
