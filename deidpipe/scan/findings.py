"""What a scan finds: one :class:`Finding` per rule hit, and the :class:`ScanReport` that holds them all.

Kept apart from the scanner (:mod:`deidpipe.scan.scanner`) so that the rule modules (:mod:`.pixels`, :mod:`.faces`)
and the reports (:mod:`.report`, :mod:`.html`) build and read findings without importing the scanner that calls them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from deidpipe.scan.rules import RANK, SEVERITIES


@dataclass(frozen=True)
class Finding:
    """One finding. ``location`` is a keyword path, ``pixels:frame N box x,y,w,h``, ``face`` or ``risk``;
    ``message`` never holds a value. ``thumbnail`` (a PNG data: URI, HTML report only) is set for pixel and face
    findings."""

    path: str
    rule: str
    severity: str
    location: str
    message: str
    thumbnail: str | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "rule": self.rule, "severity": self.severity, "location": self.location,
                "message": self.message}


@dataclass
class ScanReport:
    """What :func:`scan` found. ``objects`` counts the DICOM objects read; ``skipped`` the members that are not
    DICOM (or not objects at all); ``errors`` the objects that could not be read (each also a DP-E001 finding).
    ``risk`` is the :class:`deidpipe.risk.RiskReport` of ``qi_table`` (None when no object was read)."""

    objects: int
    findings: list[Finding]
    risk: Any = None
    skipped: int = 0
    errors: int = 0
    qi_table: Any = None  # polars DataFrame, one row per patient or study (keyed token, never the Patient ID)
    quasi_identifiers: tuple[str, ...] = ()
    show_values: bool = False

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(f.severity for f in self.findings)
        return {s: c.get(s, 0) for s in SEVERITIES}

    def worst(self) -> str | None:
        return max((f.severity for f in self.findings), key=lambda s: RANK[s], default=None)

    def exit_code(self, fail_on: str = "high") -> int:
        """0 clean, 1 a finding at or above ``fail_on``, 2 an object could not be read."""
        if self.errors:
            return 2
        return 1 if any(RANK[f.severity] >= RANK[fail_on] for f in self.findings) else 0

    def to_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "findings": [f.to_dict() for f in self.findings],
                "risk": self.risk.to_dict() if self.risk is not None else None, "counts": self.counts}
