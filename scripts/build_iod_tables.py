#!/usr/bin/env python3
"""Build rules/iod_attributes.json: which attributes each IOD holds, and their Type (1, 1C, 2, 2C, 3).

    pip download --no-deps dicom-standard==0.1.0 -d /tmp/ds && unzip -q /tmp/ds/*.whl -d /tmp/ds
    python scripts/build_iod_tables.py /tmp/ds/dicom_standard-0.1.0.data/data/standard

The source is innolitics' dicom-standard JSON (PyPI package dicom-standard 0.1.0, parsed from the NEMA
standard on 2020-04-07, MIT licence). For every IOD, every module and functional-group macro it uses is
flattened to its top-level attributes with their Type (a tag in several modules keeps its most demanding
Type) and the set of tags nested inside its sequences. The header engine uses it to resolve Table E.1-1's
compound codes by Type, and strict mode keeps only attributes of the object's IOD. The output is committed;
re-run only to move to a newer edition.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RANK = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}


def _tag(text: str) -> str:
    return text.strip("()").replace(",", "").upper()


def _flatten(rows: list[dict], key: str) -> dict[str, dict]:
    """Per module (or macro): ``top`` = tag -> Type of its top-level attributes, ``nested`` = every tag
    found inside its sequences, at any depth."""
    out: dict[str, dict] = {}
    for r in rows:
        t = r["type"] if r["type"] in RANK else "3"
        tag = _tag(r["tag"])
        if "X" in tag:
            continue  # repeating groups (60xx overlays, 50xx curves) are handled by the engine's own rules
        entry = out.setdefault(r[key], {"top": {}, "nested": set()})
        if r["path"].count(":") == 1:
            top = entry["top"]
            if tag not in top or RANK[t] < RANK[top[tag]]:
                top[tag] = t
        else:
            entry["nested"].add(tag)
    for entry in out.values():
        entry["nested"] = sorted(entry["nested"])
    return out


def main() -> None:
    src = Path(sys.argv[1])
    load = lambda name: json.loads((src / name).read_text(encoding="utf-8"))  # noqa: E731
    ciods = {c["id"]: c["name"] for c in load("ciods.json")}
    by_name = {name: cid for cid, name in ciods.items()}
    sop_classes = {s["id"]: by_name[s["ciod"]] for s in load("sops.json") if s["ciod"] in by_name}
    modules = _flatten(load("module_to_attributes.json"), "moduleId")
    macros = _flatten(load("macro_to_attributes.json"), "macroId")
    iods: dict[str, dict] = {cid: {"name": name, "modules": [], "macros": []} for cid, name in ciods.items()}
    for r in load("ciod_to_modules.json"):
        iods[r["ciodId"]]["modules"].append(r["moduleId"])
    for r in load("ciod_to_fg_macros.json"):
        iods[r["ciodId"]]["macros"].append(r["macroId"])
    used_macros = {m for i in iods.values() for m in i["macros"]}
    data = {
        "source": "innolitics dicom-standard JSON, PyPI dicom-standard 0.1.0 (parsed 2020-04-07), MIT licence",
        "types": "top: tag -> most demanding top-level Type (1 > 1C > 2 > 2C > 3); nested: tags inside sequences",
        "sop_classes": dict(sorted(sop_classes.items())),
        "iods": iods,
        "modules": modules,
        "macros": {m: a for m, a in macros.items() if m in used_macros},
    }
    out = Path("rules/iod_attributes.json")
    out.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"{len(sop_classes)} SOP classes, {len(iods)} IODs, {len(modules)} modules, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
