#!/usr/bin/env python3
"""Build rules/ from the reference data in ../shared/reference/ (run from the repository root).

    python scripts/build_rules.py [--reference ../shared/reference]

Writes:
  rules/ps315_table_e1_1.json   Table E.1-1: one row per attribute or tag pattern, Basic Profile action and the
                                action of each option column, with the edition it was built from.
  rules/safe_private.json       creator-qualified private elements the TCIA knowledge base marks keep ('k'),
                                for the Retain Safe Private option.
The output is committed; re-run only when the reference data changes.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

EDITION = {
    "table": "DICOM PS3.15 Table E.1-1 (Application Level Confidentiality Profile Attributes)",
    "source": "innolitics/dicom-standard standard/confidentiality_profile_attributes.json, commit 7f4749d",
    "built_from_standard_on": "2025-01-28",
    "licence": "MIT (ps315_table_e1_1.LICENSE.txt)",
}
OPTION_COLUMNS = [
    "rtnSafePrivOpt", "rtnUIDsOpt", "rtnDevIdOpt", "rtnInstIdOpt", "rtnPatCharsOpt",
    "rtnLongFullDatesOpt", "rtnLongModifDatesOpt", "cleanDescOpt", "cleanStructContOpt", "cleanGraphOpt",
]
# TCIA writes signatures like (0009,"GEMS_IDEN_01",10) but some rows lost the opening quote.
_SIG = re.compile(r'^\(([0-9a-fA-F]{4}),"?([^"]*)"?,([0-9a-fA-F]{2})\)$')


def build_table(reference: Path) -> dict:
    rows = json.loads((reference / "ps315_table_e1_1.json").read_text(encoding="utf-8"))
    out = []
    for r in rows:
        out.append({
            "tag": r["tag"].upper().replace(" ", ""),
            "name": r["name"],
            "in_std_comp_iod": r.get("stdCompIOD") == "Y",
            "basic": r["basicProfile"],
            "options": {c: r[c] for c in OPTION_COLUMNS if r.get(c)},
        })
    out.sort(key=lambda r: r["tag"])
    return {"edition": EDITION, "option_columns": OPTION_COLUMNS, "rows": out}


def build_safe_private(reference: Path) -> dict:
    """Top-level signatures only: a nested signature's safety depends on its parent, kept out for simplicity."""
    path = reference / "tcia_private_tag_kb_2024-02-01.csv"
    safe: dict[tuple[str, str, str], str] = {}
    creators: set[str] = set()
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            m = _SIG.match(row["element_sig_pattern"].strip())
            if not m:
                continue
            group, creator, elem = m.group(1).lower(), m.group(2).strip(), m.group(3).lower()
            if int(group, 16) & 1 and ")" not in creator:  # a private group's own creator, not a nested pattern
                creators.add(creator)
            if row["private_disposition"].strip().lower() == "k":
                safe[(group, creator, elem)] = row["vr"].strip()
    entries = [
        {"group": g, "creator": c, "element": e, "vr": vr} for (g, c, e), vr in sorted(safe.items())
    ]
    return {
        "source": "TCIA private tag knowledge base 2024-02-01 (as formatted in MIC-DKFZ/miccai2024_midi-b-submission)",
        "disposition": "k (keep)",
        "entries": entries,
        # every Private Creator the knowledge base names, any disposition: vendor labels that a report may print
        "creators": sorted(creators),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=Path("../shared/reference"))
    ap.add_argument("--out", type=Path, default=Path("rules"))
    args = ap.parse_args()
    args.out.mkdir(exist_ok=True)
    table = build_table(args.reference)
    (args.out / "ps315_table_e1_1.json").write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    safe = build_safe_private(args.reference)
    (args.out / "safe_private.json").write_text(json.dumps(safe, indent=1) + "\n")
    print(f"{len(table['rows'])} Table E.1-1 rows, {len(safe['entries'])} safe private elements")


if __name__ == "__main__":
    main()
