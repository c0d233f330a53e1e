"""The scan's reports: a terminal table (rich), the stable JSON, and SARIF 2.1.0 for CI annotations.

None of them holds a value of the archive: findings are rule ids, locations (keyword paths) and fixed messages,
and the risk part is counts and figures (the quasi-identifier table itself is never printed).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

from deidpipe.risk.report import finite
from deidpipe.scan.findings import ScanReport
from deidpipe.scan.rules import RANK, RULES, SEVERITIES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_LEVEL = {"high": "error", "medium": "warning", "low": "note", "info": "note"}
#: GitHub code scanning reads ``security-severity`` (0-10) to rank results.
SECURITY_SEVERITY = {"high": "8.0", "medium": "5.0", "low": "2.0", "info": "0.0"}
MAX_TABLE_ROWS = 200


def to_json(report: ScanReport, indent: int | None = 2) -> str:
    """``{"objects", "findings": [{"path", "rule", "severity", "location", "message"}], "risk", "counts"}``."""
    return json.dumps(finite(report.to_dict()), indent=indent, ensure_ascii=False)


def to_sarif(report: ScanReport) -> dict[str, Any]:
    """A SARIF 2.1.0 log: one run, the rules as the tool's reportingDescriptors, one result per finding (the
    archive path as the artifact, the keyword path as a logical location); the risk JSON in the run's
    properties."""
    from deidpipe.version import __version__

    used = sorted({f.rule for f in report.findings} | set(RULES))
    index = {rid: i for i, rid in enumerate(used)}
    rules = []
    for rid in used:
        r = RULES[rid]
        rules.append({
            "id": r.id,
            "name": r.name,
            "shortDescription": {"text": r.meaning},
            "fullDescription": {"text": r.meaning},
            "defaultConfiguration": {"level": SARIF_LEVEL[r.severity]},
            "properties": {"severity": r.severity, "security-severity": SECURITY_SEVERITY[r.severity]},
        })
    results = []
    for f in report.findings:
        result: dict[str, Any] = {
            "ruleId": f.rule,
            "ruleIndex": index[f.rule],
            "level": SARIF_LEVEL[f.severity],
            "message": {"text": f.message},
            "properties": {"severity": f.severity, "location": f.location},
        }
        loc: dict[str, Any] = {"logicalLocations": [{"fullyQualifiedName": f.location, "kind": "element"}]}
        if f.path:
            loc["physicalLocation"] = {"artifactLocation": {"uri": f.path, "uriBaseId": "ARCHIVE"}}
        result["locations"] = [loc]
        results.append(result)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "deidpipe-scan", "version": __version__,
                                "informationUri": "https://github.com/deidpipe/deidpipe", "rules": rules}},
            "originalUriBaseIds": {"ARCHIVE": {"description": {"text": "the scanned archive's root"}}},
            "results": results,
            "properties": finite({"objects": report.objects, "counts": report.counts,
                                   "risk": report.risk.to_dict() if report.risk is not None else None}),
        }],
    }


def by_rule(report: ScanReport) -> list[tuple[str, str, int, int]]:
    """(rule, worst severity, findings, objects) per rule, worst first."""
    count: Counter[str] = Counter()
    objects: dict[str, set[str]] = defaultdict(set)
    worst: dict[str, str] = {}
    for f in report.findings:
        count[f.rule] += 1
        objects[f.rule].add(f.path)
        if f.rule not in worst or RANK[f.severity] > RANK[worst[f.rule]]:
            worst[f.rule] = f.severity
    rows = [(rid, worst[rid], count[rid], len(objects[rid])) for rid in count]
    return sorted(rows, key=lambda r: (-RANK[r[1]], r[0]))


def render(report: ScanReport, console: Any = None, max_rows: int = MAX_TABLE_ROWS) -> None:
    """The terminal report: counts, findings by rule, the findings (up to ``max_rows``), and the risk tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    colours = {"high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}
    head = Table(title="deidpipe scan", show_header=False)
    head.add_column("what")
    head.add_column("value", justify="right")
    head.add_row("objects read", str(report.objects))
    head.add_row("not DICOM (skipped)", str(report.skipped))
    head.add_row("unreadable objects", str(report.errors))
    for sev in reversed(SEVERITIES):
        head.add_row(f"findings: {sev}", str(report.counts[sev]))
    console.print(head)
    if report.findings:
        rules = Table(title="Findings by rule")
        for col in ("rule", "name", "severity", "findings", "objects"):
            rules.add_column(col, justify="right" if col in ("findings", "objects") else "left")
        for rid, sev, n, objs in by_rule(report):
            rules.add_row(rid, RULES[rid].name, f"[{colours[sev]}]{sev}[/]", str(n), str(objs))
        console.print(rules)
        table = Table(title=f"Findings ({min(len(report.findings), max_rows)} of {len(report.findings)})")
        for col in ("path", "rule", "severity", "location", "message"):
            table.add_column(col, overflow="fold")
        for f in report.findings[:max_rows]:
            table.add_row(f.path, f.rule, f"[{colours[f.severity]}]{f.severity}[/]", f.location, f.message)
        console.print(table)
    if report.risk is not None:
        from deidpipe.risk import render as render_risk

        console.print(f"Quasi-identifier table: {report.risk.records} patients; columns: "
                      f"{', '.join(report.quasi_identifiers)}")
        render_risk(report.risk, console)
