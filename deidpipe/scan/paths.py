"""The path a scan report shows for an object: its input path with every identifying component masked.

Archives are often laid out by patient (``Doe^John_MRN123/20190304/...``), and a report must never show an
original identifying value. Each component of an object's path is screened against that object's own identity
(the header's identity screen: names, IDs, accession number, birth date, institution) and its dates (Study,
Series, Acquisition and Content Date in their common written forms); a component that matches is replaced by a
keyed token (``~`` and 10 hex digits of an HMAC under the scan's key), the same token for the same component
everywhere in the report, so that findings still group by folder. ``show_values`` shows the paths as they are.
Objects that cannot be read have no identity to screen against: their paths are shown as they are.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from deidpipe.header.identity import collect_identity, identity_rules
from deidpipe.header.text import DenyList, date_variants
from deidpipe.keys import ProjectKey

#: Dates of the object that folder names commonly carry, besides the birth date the identity holds.
PATH_DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientBirthDate")


def path_denylist(ds: Dataset) -> DenyList:
    """The object's identity and its dates, compiled once (cached per set of terms)."""
    terms, parts = collect_identity(ds)
    for keyword in PATH_DATE_KEYWORDS:
        value = str(ds.get(keyword) or "").strip()
        if len(value) == 8 and value.isdigit():
            terms += [value, *date_variants(value)]
    return DenyList.from_terms(frozenset(terms), frozenset(parts), identity_rules().common_words)


def shown_path(relpath: str, ds: Dataset, key: ProjectKey) -> str:
    """``relpath`` with each ``/``-separated component that names the object's identity or dates keyed."""
    deny = path_denylist(ds)
    parts = relpath.split("/")
    shown = [p if not p or not deny.hits(p) else "~" + key.digest("scan-path", p).hex()[:10] for p in parts]
    return "/".join(shown)
