"""Which recognised words are identifying (``phi`` redaction mode).

A word is PHI when it matches one of the object's own header values (names and their parts, IDs, accession
and study numbers, institution and station names, any of the object's dates in any common format), allowing
one OCR error in longer values, or when presidio-analyzer finds a person, date, phone number, ID or similar in
the line it belongs to. Orientation markers, units, scale labels and short numbers are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from deidpipe.header.text import date_variants

_NAME_KEYWORDS = ("PatientName", "ReferringPhysicianName", "OperatorsName", "PerformingPhysicianName",
                  "NameOfPhysiciansReadingStudy", "PatientMotherBirthName", "OtherPatientNames")
_ID_KEYWORDS = ("PatientID", "AccessionNumber", "StudyID", "OtherPatientIDs", "IssuerOfPatientID",
                "InstitutionName", "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber",
                "InstitutionAddress", "PatientAddress", "PatientTelephoneNumbers", "RequestedProcedureID",
                "PerformedProcedureStepID")
_DATE_KEYWORDS = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
                  "InstanceCreationDate", "PerformedProcedureStepStartDate")
#: Kept whatever presidio says: orientation markers, units, scale and device labels.
SAFE_WORDS = frozenset("""
L R A P H F S I AP PA LAT LL RL LR RR AX SAG COR CM MM M HZ KHZ MHZ DB KV KVP MA MAS S MS SEC MIN BPM FPS % CM/S
GAIN DEPTH FREQ FREQUENCY PWR POWER DR MI TI TIS TIB ZOOM MODE PRF WF AO THI HARM GEN RES PEN LOGIQ B M C D
""".split())
_SEP = re.compile(r"[^0-9A-Z]+")


def norm(text: str) -> str:
    return _SEP.sub("", text.upper())


def _within_one(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by at most one edit."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = j = diff = 0
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            i += 1
            j += 1
            continue
        diff += 1
        if diff > 1:
            return False
        if len(a) == len(b):
            i += 1
        j += 1
    return diff + (len(b) - j) <= 1


@dataclass(frozen=True)
class PhiTerms:
    """The object's own identifying strings, normalised (upper case, letters and digits only)."""

    terms: frozenset[str]

    @classmethod
    def from_dataset(cls, ds: Dataset) -> PhiTerms:
        raw: list[str] = []
        for kw in _NAME_KEYWORDS:
            for v in _values(ds, kw):
                parts = [p for p in re.split(r"[\^= ,]+", v) if p]
                raw += parts
                raw.append(" ".join(parts))
        for kw in _ID_KEYWORDS:
            for v in _values(ds, kw):
                raw.append(v)
                raw += [w for w in re.split(r"[\s,]+", v) if len(w) >= 4]
        for kw in _DATE_KEYWORDS:
            for v in _values(ds, kw):
                raw += date_variants(v)
        terms = frozenset(n for n in (norm(t) for t in raw) if len(n) >= 3)
        return cls(terms)

    def match(self, word: str) -> bool:
        w = norm(word)
        if len(w) < 3:
            return False
        for t in self.terms:
            if w == t or (len(w) >= 5 and len(t) >= 5 and (w in t or t in w or _within_one(w, t))):
                return True
        return False


def _values(ds: Dataset, keyword: str) -> list[str]:
    v = ds.get(keyword)
    if v is None or v == "":
        return []
    items = v if isinstance(v, list | tuple) or getattr(v, "VM", 1) > 1 else [v]
    try:
        return [str(x) for x in items if str(x).strip()]
    except Exception:  # noqa: BLE001 - an undecodable value simply contributes no term
        return []


_DATE = re.compile(r"\b\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}\b|\b\d{1,2}[- ]?[A-Za-z]{3}[- ]?\d{2,4}\b|\b(19|20)\d{6}\b")
_LONG_DIGITS = re.compile(r"\d{5,}")


def _presidio_words(line: str) -> set[int]:
    """Indices of the space-separated words of ``line`` inside a presidio finding."""
    from deidpipe.header.text import model_spans

    spans = model_spans(line)
    words, pos = [], 0
    for w in line.split(" "):
        words.append((pos, pos + len(w)))
        pos += len(w) + 1
    return {i for i, (s, e) in enumerate(words) if any(s < b and a < e for a, b in spans)}


def phi_words(line: str, terms: PhiTerms, *, use_model: bool = True) -> list[bool]:
    """For each space-separated word of a recognised ``line``: is it identifying?"""
    words = line.split(" ")
    flagged = [False] * len(words)
    model = _presidio_words(line) if use_model and any(c.isalpha() for c in line) else set()
    for i, w in enumerate(words):
        n = norm(w)
        if not n:
            continue
        if n in SAFE_WORDS and not terms.match(w):
            continue
        if terms.match(w) or _DATE.search(w) or _LONG_DIGITS.search(n) or i in model:
            flagged[i] = True
    # a multi-word term ("JOHN SMITH", "ST MARY HOSPITAL") recognised as one string
    joined = norm(line)
    if any(len(t) >= 6 and t in joined for t in terms.terms):
        for i, w in enumerate(words):
            if any(norm(w) and norm(w) in t for t in terms.terms if len(t) >= 6 and t in joined):
                flagged[i] = True
    return flagged


def split_line(box_x0: int, box_x1: int, line: str) -> list[tuple[int, int, str]]:
    """Word extents of a recognised line, assuming evenly spaced characters: (x0, x1, word)."""
    n = max(len(line), 1)
    step = (box_x1 - box_x0) / n
    out, pos = [], 0
    for w in line.split(" "):
        if w:
            out.append((int(box_x0 + pos * step), int(round(box_x0 + (pos + len(w)) * step)), w))
        pos += len(w) + 1
    return out


def any_terms(values: Iterable[str]) -> PhiTerms:
    """PhiTerms from plain strings (for tests and the benchmark)."""
    return PhiTerms(frozenset(n for n in (norm(v) for v in values) if len(n) >= 3))
