"""Releasing a table: deidpipe's lattice search (``deidpipe.risk.anonymise``) beside ARX 3.9, and at scale.

    python benchmarks/risk_generalise.py [--rows 1000000] [--skip-adult] [--skip-large] [--arx-classpath CP]

1. adult.csv (30,162 rows, 8 quasi-identifiers, ARX's own hierarchies from ``benchmarks/data/arx_adult/``), suppression
   limit 5%, ARX's Loss metric, for each setting: k = 5 and 10, average prosecutor risk 0.2 and 0.1, highest
   prosecutor risk 0.2. deidpipe's chosen levels, suppressed records, loss and time (search, release and the risk
   before and after) beside ARX's, and the ratios. ARX's figures come from ``arx_results.json`` (recorded by
   ``benchmarks/arx/record.py``); with ``--arx-classpath`` (``benchmarks/arx/build_arx.sh``) ARX also runs live
   here, and its times are this machine's. Target: adult under 5 s a setting.
2. A synthetic table of 5 quasi-identifiers (age by widths 5,10,20,*; sex, kept or suppressed; a 5-digit postcode
   cut digit by digit; admission year by widths 5,10,*; one of 60 wards in 6 departments), k = 5, at a quarter of
   ``--rows`` and at all of them, each in a fresh process: time and memory (VmRSS after reading the table, VmHWM
   at the end) of the search alone and of ``anonymise`` (search, release and the risk before and after). Two
   shapes: every row drawn at random (almost every row a distinct tuple: the search's memory follows the distinct
   tuples, here the rows), and rows drawn from 50,000 profiles (the same distinct tuples at both sizes: the
   search's memory stays flat as the rows grow; the release, a new table of every row, and ``assess`` do not).
   Target: 1,000,000 rows under 60 s.
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

PROFILES = 50_000
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
                        f"deidpipe vs {recorded['source']['tool'].split(' (')[0]} ({arx_source})")
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


def synthetic(rows: int, profiles: int | None = None, seed: int = 7):  # -> pl.DataFrame
    """A table of ``rows`` rows with 5 quasi-identifiers and an outcome, all text (as a CSV is read): each row
    drawn at random (almost every row a distinct tuple), or with ``profiles`` rows drawn from that many."""
    import numpy as np
    import polars as pl

    if profiles is not None:
        base = synthetic(profiles, seed=seed)
        return base[np.random.default_rng(seed + 1).integers(0, profiles, rows)]
    rng = np.random.default_rng(seed)
    postcodes = [f"{v:05d}" for v in rng.choice(100_000, size=2_000, replace=False)]
    wards = [f"W{v:02d}" for v in range(60)]
    return pl.DataFrame({
        "age": rng.integers(0, 100, rows).astype(str),
        "sex": rng.choice(np.array(["F", "M"]), rows),
        "postcode": np.array(postcodes)[rng.integers(0, len(postcodes), rows)],
        "year": rng.integers(2000, 2024, rows).astype(str),
        "ward": np.array(wards)[rng.integers(0, len(wards), rows)],
        "outcome": rng.integers(0, 2, rows).astype(str),
    })


def synthetic_hierarchies(df):  # -> (list[str], dict[str, Hierarchy])
    """The 5 quasi-identifiers of :func:`synthetic` and their hierarchies (sex has none: kept or suppressed)."""
    postcodes = df.get_column("postcode").unique().sort().to_list()
    wards = df.get_column("ward").unique().sort().to_list()
    qi = ["age", "sex", "postcode", "year", "ward"]
    hierarchies = {
        "age": Hierarchy.from_widths("age", ["5", "10", "20", "*"], df.get_column("age").unique().to_list()),
        "postcode": Hierarchy.from_rows("postcode", [(p, p[:4] + "*", p[:3] + "**", p[:2] + "***", "*")
                                                     for p in postcodes]),
        "year": Hierarchy.from_widths("year", ["5", "10", "*"], df.get_column("year").unique().to_list()),
        "ward": Hierarchy.from_rows("ward", [(w, f"D{int(w[1:]) // 10}", "*") for w in wards]),
    }
    return qi, hierarchies


def _status_mib(field: str) -> float:
    """A field of /proc/self/status in MiB: VmRSS (now) or VmHWM (this process's peak since exec; ru_maxrss would
    also count the parent's pages at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # pragma: no cover - not Linux


def _peak_mib() -> float:
    return _status_mib("VmHWM")


def _current_mib() -> float:
    return _status_mib("VmRSS")


def child(path: Path, mode: str) -> None:
    """One table and one mode, in this (fresh) process: prints a JSON line with the time and memory.
    ``search``: only the choice (the lattice search on the collapsed tuples); ``anonymise``: the choice, the
    released table, and the risk before and after."""
    import polars as pl

    from deidpipe.risk import anonymise, search

    df = pl.read_parquet(path)
    qi, hierarchies = synthetic_hierarchies(df)
    table = _current_mib()
    start = time.perf_counter()
    if mode == "search":
        t = search(df, qi, hierarchies, Target(k=5))
    else:
        _, result = anonymise(df, qi, hierarchies, Target(k=5))
        t = result.transformation
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": df.height, "mode": mode, "seconds": seconds, "rss_table": table,
                      "rss_peak": _peak_mib(), "levels": t.levels, "suppressed": t.suppressed, "loss": t.loss,
                      "nodes_checked": t.nodes_checked, "lattice_size": t.lattice_size,
                      "distinct": df.select(qi).n_unique()}))


def bench_large(rows: int) -> None:
    import tempfile

    from rich.console import Console
    from rich.table import Table

    table = Table(title="Synthetic table, 5 QIs, k = 5, suppression 5% (each line a fresh process)")
    for col in ("rows", "drawn from", "distinct tuples", "what", "lattice / checked", "levels", "suppressed",
                "loss", "s", "RSS table MiB", "RSS peak MiB", "peak - table MiB", "bytes a row"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for profiles, n in ((None, rows // 4), (None, rows), (PROFILES, rows // 4), (PROFILES, rows)):
            path = Path(tmp) / f"synthetic_{n}_{profiles}.parquet"
            synthetic(n, profiles).write_parquet(path)
            for mode in ("search", "anonymise"):
                out = subprocess.run([sys.executable, __file__, "--child", str(path), mode], check=True,
                                     capture_output=True, text=True, cwd=REPO)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                extra = r["rss_peak"] - r["rss_table"]
                table.add_row(str(n), "random" if profiles is None else f"{profiles} profiles", str(r["distinct"]),
                              mode, f"{r['lattice_size']} / {r['nodes_checked']}",
                              _levels(r["levels"]), str(r["suppressed"]), f"{r['loss']:.4f}", f"{r['seconds']:.1f}",
                              f"{r['rss_table']:.0f}", f"{r['rss_peak']:.0f}", f"{extra:.0f}",
                              f"{extra * 2**20 / n:.0f}")
    Console(width=200).print(table)
    print("search: the choice only; anonymise: the choice, the released table and the risk before and after "
          "(deidpipe.risk.assess, twice). RSS table: after reading the table (Parquet, all text); peak - table: "
          "what the call adds; the search works on the distinct tuples, the release is a new table of every row.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-adult", action="store_true")
    parser.add_argument("--arx-classpath", help="run ARX live (benchmarks/arx/build_arx.sh prints it)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return
    if not args.skip_adult:
        bench_adult(args.arx_classpath)
    if not args.skip_large:
        bench_large(args.rows)


if __name__ == "__main__":
    main()
