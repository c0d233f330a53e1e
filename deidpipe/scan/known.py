"""``--known-identities FILE``: a steward's CSV of original names, IDs and birth dates, as search terms.

Every non-empty cell is a term. A name written the DICOM way (``Doe^John``) adds its components and the usual
orders ("John Doe", "Doe, John"); a date (``19800131``, ``1980-01-31``) adds the spellings people use in free text
(:func:`deidpipe.header.text.date_variants`). A first row of column names (name, id, birth date, ...) is skipped.
The terms are matched case-insensitively on word boundaries, never printed.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

_HEADER_WORDS = re.compile(r"name|id|birth|date|mrn|patient|dob", re.IGNORECASE)
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


class KnownIdentitiesError(ValueError):
    """The file cannot be read as a CSV (the message names the file, never a cell)."""


def _cell_terms(cell: str) -> list[str]:
    from deidpipe.header.text import date_variants

    s = cell.strip()
    if not s:
        return []
    m = _ISO.fullmatch(s)
    if m:
        s = "".join(m.groups())
    if len(s) == 8 and s.isdigit():
        return date_variants(s)
    terms = [s]
    if "^" in s or "=" in s:
        for group in s.split("="):
            comps = [c.strip() for c in group.split("^") if c.strip()]
            terms += comps
            if len(comps) >= 2:
                terms += [f"{comps[1]} {comps[0]}", f"{comps[0]} {comps[1]}", f"{comps[0]}, {comps[1]}"]
    return terms


def load_known_identities(path: str | Path) -> list[str]:
    """The search terms of a known-identities CSV; :class:`KnownIdentitiesError` if it cannot be read."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise KnownIdentitiesError(f"{p}: cannot be read ({type(exc).__name__})") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|") if text.strip() else csv.excel
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    if rows and all(re.fullmatch(r"[A-Za-z_ .-]*", c.strip()) for c in rows[0]) \
            and any(_HEADER_WORDS.search(c) for c in rows[0]):
        rows = rows[1:]
    terms: list[str] = []
    for row in rows:
        for cell in row:
            terms += _cell_terms(cell)
    return sorted(set(terms))


def deny_list(terms: list[str]):  # -> DenyList
    from deidpipe.header.text import DenyList

    return DenyList.from_terms(terms)
