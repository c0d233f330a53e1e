"""Record ARX's figures on adult.csv in ``benchmarks/data/arx_adult/arx_results.json`` (tests read that file, so
neither CI nor a test run needs Java).

    python benchmarks/arx/record.py --classpath "$(benchmarks/arx/build_arx.sh ARX_CHECKOUT /tmp/arx-build)" \\
        [--arx-commit SHA] [--out benchmarks/data/arx_adult/arx_results.json]

1. ``ArxAdult anonymise``: ARX anonymises adult.csv with its own hierarchies for each setting (k = 5, 10; average
   prosecutor risk 0.2, 0.1; highest risk 0.2 as a cross-check) and reports its levels, suppressed records, loss,
   risk figures and a hash of its released table.
2. deidpipe anonymises the same table with the same settings; ``ArxAdult score`` has ARX score each of deidpipe's
   released tables (ARX's risk analysis of a CSV with the 8 quasi-identifiers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.risk_generalise import SETTINGS, adult_problem  # noqa: E402


def java(classpath: str, *args: str) -> dict:
    out = subprocess.run(["java", "-Xmx2g", "-cp", classpath, "ArxAdult", *args], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classpath", required=True, help="ARX's classes and jars and ArxAdult (build_arx.sh)")
    parser.add_argument("--arx-commit", default="aacd487fb77b3af7970d5d6fa1b2f6cca1182b64")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "data" / "arx_adult" / "arx_results.json")
    args = parser.parse_args()

    from deidpipe.risk import anonymise

    df, qi, hierarchies, adult = adult_problem()
    arx = java(args.classpath, "anonymise", str(adult), str(REPO / "benchmarks" / "data" / "arx_adult"))
    version = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, target in SETTINGS.items():
            released, _ = anonymise(df, qi, hierarchies, target)
            path = Path(tmp) / f"deidpipe_{name}.csv"
            released.write_csv(path, separator=";")
            scores[name] = java(args.classpath, "score", str(path), ",".join(qi), "0.2")
    record = {
        "source": {
            "tool": f"ARX {arx.pop('arx_version')} (arx-deidentifier/arx commit {args.arx_commit}), its library "
                    "built from src/main with javac (benchmarks/arx/build_arx.sh) and driven by "
                    "benchmarks/arx/ArxAdult.java through its public API",
            "java": version,
            "recorded": datetime.date.today().isoformat(),
            "how": "python benchmarks/arx/record.py --classpath ... (see benchmarks/arx/README.md)",
            "data": "../shared/reference/adult.csv (ARX's data/adult.csv) with benchmarks/data/arx_adult/"
                    "adult_hierarchy_*.csv (ARX's data/)",
            "settings": {n: s for n, s in (("k5", "KAnonymity(5)"), ("k10", "KAnonymity(10)"),
                                           ("avg0.2", "AverageReidentificationRisk(0.2): average prosecutor risk"),
                                           ("avg0.1", "AverageReidentificationRisk(0.1): average prosecutor risk"),
                                           ("highest0.2", "AverageReidentificationRisk(1.0, 0.2, 0.0): highest "
                                                          "prosecutor risk 0.2 (cross-check of k5)"))},
            "loss": "ARX's information loss of the optimum (ARXNode.getHighestScore(), the geometric-mean "
                    "aggregate of MetricMDNMLoss); loss_relative as ARX's GUI shows it (relativeTo the lattice's "
                    "lowest and highest score)",
        },
        **arx,
        "arx_scores_of_deidpipe_releases": scores,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
