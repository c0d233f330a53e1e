"""``deidpipe scan``: one compliance report over headers, pixels, faces and re-identification risk.

``scan(path, ...) -> ScanReport`` (typed); findings carry a stable rule id (:data:`RULES`), a severity, a location
and a message without any value. Reports: :mod:`deidpipe.scan.report` (table, JSON, SARIF) and
:mod:`deidpipe.scan.html`. See ``docs/scan.md``. Names load on first use, so the command line starts light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.lazy import lazy_names

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.scan.findings import Finding, ScanReport
    from deidpipe.scan.rules import RULES, SEVERITIES, Rule
    from deidpipe.scan.scanner import scan

_WHERE = {
    **dict.fromkeys(("Finding", "ScanReport"), ".findings"),
    "scan": ".scanner",
    **dict.fromkeys(("RULES", "SEVERITIES", "Rule"), ".rules"),
}

__all__ = ["RULES", "SEVERITIES", "Finding", "Rule", "ScanReport", "scan"]

__getattr__ = lazy_names(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
