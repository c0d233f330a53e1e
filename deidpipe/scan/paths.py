"""The paths a scan report shows: input paths with every identifying folder or file name keyed.

Archives are often laid out by patient (``Doe^John_MRN123/20190304/...``), and a report must never show an
original identifying value. Each component of a readable object's path is screened against that object's own
identity (the header's identity screen: names, IDs, accession number, birth date, institution) and its dates
(Study, Series, Acquisition and Content Date in their common written forms). The components found identifying
in any object are keyed in *every* path of the report, unreadable objects' included (so a patient's folder is
never shown beside its own token), as ``~`` and 10 hex digits of an HMAC under the scan's key: the same token for
the same component everywhere, so findings still group by folder. An object that names more identities than the
screen takes has every component of its path keyed. ``show_values`` shows the paths as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset

from deidpipe.errors import InvalidValueError
from deidpipe.header.identity import identity_denylist
from deidpipe.header.text import date_variants
from deidpipe.keys import ProjectKey

#: Dates of the object that folder names commonly carry, besides the birth date the identity holds.
PATH_DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def _dates(ds: Dataset) -> list[str]:
    out: list[str] = []
    for keyword in PATH_DATE_KEYWORDS:
        value = str(ds.get(keyword) or "").strip()
        if len(value) == 8 and value.isdigit():
            out += [value, *date_variants(value)]
    return out


def identifying_components(relpath: str, ds: Dataset) -> frozenset[str]:
    """The components of ``relpath`` (``/``-separated) that name the object's identity or its dates."""
    parts = [p for p in relpath.split("/") if p]
    try:
        deny = identity_denylist(ds, extra_terms=_dates(ds))
    except InvalidValueError:  # too many identities to screen: nothing of the path is shown
        return frozenset(parts)
    return frozenset(p for p in parts if deny.hits(p))


def mask_path(path: str, identifying: Iterable[str] | frozenset[str], key: ProjectKey) -> str:
    """``path`` with each component in ``identifying`` replaced by its keyed token."""
    known = identifying if isinstance(identifying, frozenset) else frozenset(identifying)
    return "/".join("~" + key.digest("scan-path", p).hex()[:10] if p in known else p for p in path.split("/"))
