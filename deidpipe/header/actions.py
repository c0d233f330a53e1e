"""The value-level actions of Table E.1-1: dummies (D), empties (Z), cleaning (C), UIDs (U), pseudonyms.

Each function takes one element and the object's :class:`~deidpipe.header.context.ScrubContext` and returns the
new value; none of them logs or raises with a value in the message.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID_dictionary

from deidpipe.header.context import ScrubContext
from deidpipe.header.text import screen_text

TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "AE", "CS", "UR"})
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})
MAX_LEN = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240, "UC": 10240, "UT": 1 << 30}
DUMMY_DATE, DUMMY_TIME, DUMMY_DATETIME = "19000101", "000000", "19000101000000"


def _values(elem: DataElement) -> list[Any]:
    v = elem.value
    if isinstance(v, MultiValue | list | tuple):
        return list(v)
    return [v]


def _pack(elem: DataElement, values: list[Any]) -> Any:
    """Give back a value in the shape the element had (single value or several)."""
    return values if isinstance(elem.value, MultiValue | list | tuple) else values[0]


def _fit(vr: str, text: str) -> str:
    return text[: MAX_LEN.get(vr, 64)]


# -- UIDs ---------------------------------------------------------------------------------------------------
#: PS3.5 9.1: components of digits separated by periods, at most 64 characters (leading zeros tolerated: some
#: exporters write them, and digits cannot carry a name).
_UID_TEXT = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_uid_text(value: str) -> bool:
    """Whether ``value`` has the form of a UID. Anything else in a UI element (a name, an ID with letters) is
    data a hostile or broken file put there, and is never kept as it is."""
    return len(value) <= 64 and _UID_TEXT.fullmatch(value) is not None


def is_mappable_uid(keyword: str, value: str) -> bool:
    """True for a UID that identifies an instance; False for class, syntax and other well-known UIDs. A value
    that is not a UID at all is mapped whatever the attribute: its text must not survive."""
    if not value:
        return False
    if not is_uid_text(value):
        return True
    if keyword.endswith(("ClassUID", "SyntaxUID")) or keyword in ("CodingSchemeUID",):
        return False
    return value not in UID_dictionary


def map_uids(elem: DataElement, ctx: ScrubContext) -> Any:
    """Replace every instance UID in the element by its keyed ``2.25.`` UID."""
    out = []
    for v in _values(elem):
        s = str(v).strip().rstrip("\x00") if v is not None else ""
        out.append(ctx.key.uid(s) if is_mappable_uid(elem.keyword, s) else v)
    return _pack(elem, out)


# -- character sets ---------------------------------------------------------------------------------------
def clean_character_set(ds: Dataset) -> int:
    """Drop the terms of Specific Character Set (0008,0005) that are not defined terms (PS3.3 C.12.1.1.2); the
    element goes when none is left. The value is kept by the profile, so a name put there would go out as it is;
    pydicom decodes the text with its default for an unknown term anyway, so dropping it changes no value.
    Sequence items may carry their own: every level is cleaned. Returns the number of terms dropped."""
    in_items = sum(clean_character_set(item) for elem in ds._dict.values()
                   if isinstance(elem, DataElement) and elem.VR == "SQ" for item in elem.value)
    elem = ds.get("SpecificCharacterSet")
    if elem is None:
        return in_items
    terms = [str(t).strip() for t in (elem if isinstance(elem, MultiValue | list | tuple) else [elem])]
    valid = [t for t in terms if t in python_encoding or t == ""]
    dropped = len(terms) - len(valid)
    if dropped:
        if any(valid):
            ds.SpecificCharacterSet = valid if len(valid) > 1 else valid[0]
        else:
            del ds.SpecificCharacterSet
    return dropped + in_items


# -- dates --------------------------------------------------------------------------------------------------
def shift_date(value: str, days: int) -> str:
    """Shift a DA value (``YYYYMMDD``, or ``YYYY``/``YYYYMM`` precision) by whole days; same precision back."""
    s = value.strip()
    if len(s) == 8 and s.isdigit():
        d = date(int(s[:4]), int(s[4:6]), int(s[6:8])) + timedelta(days=days)
        return d.strftime("%Y%m%d")
    if len(s) in (4, 6) and s.isdigit():
        d = date(int(s[:4]), int(s[4:6]) if len(s) == 6 else 1, 1) + timedelta(days=days)
        return d.strftime("%Y%m" if len(s) == 6 else "%Y")
    raise ValueError("not a DA value")


def shift_datetime(value: str, days: int) -> str:
    """Shift the date part of a DT value; time, fraction and UTC offset stay as they are."""
    s = value.strip()
    n = 8 if len(s) >= 8 else len(s)
    return shift_date(s[:n], days) + s[n:]


def shift_dates(elem: DataElement, ctx: ScrubContext) -> Any:
    """Modified Dates: move DA and DT by the patient's shift; TM is kept, since the shift is whole days."""
    if elem.VR == "TM":
        return elem.value
    shift = ctx.shift_days
    fn = shift_date if elem.VR == "DA" else shift_datetime
    out = []
    for v in _values(elem):
        s = str(v) if v is not None else ""
        if not s.strip():
            out.append(s)
            continue
        try:
            out.append(fn(s, shift))
        except (ValueError, OverflowError):
            out.append(DUMMY_DATE if elem.VR == "DA" else DUMMY_DATETIME)  # unparseable: no trace of it
    return _pack(elem, out)


# -- dummies, pseudonyms, cleaning ------------------------------------------------------------------------
def dummy_value(elem: DataElement, ctx: ScrubContext) -> Any:
    """A non-empty value of the element's VR that carries nothing of the original (action D).

    Text dummies are keyed tokens of the original value, so the same operator or device gets the same
    dummy in every object (linkable, not identifiable) without any shared state.
    """
    vr = elem.VR
    if vr == "UI":
        return map_uids(elem, ctx)
    if vr == "DA":
        return DUMMY_DATE
    if vr == "TM":
        return DUMMY_TIME
    if vr == "DT":
        return DUMMY_DATETIME
    if vr == "AS":
        return "000D"
    if vr in ("DS", "IS"):
        return _pack(elem, ["0"] * max(1, len(_values(elem))))
    if vr in NUMBER_VRS:
        return _pack(elem, [0] * max(1, len(_values(elem))))
    if vr in BINARY_VRS:
        n = len(elem.value or b"")
        return b"\x00" * (n + (n & 1) if n else 2)
    if vr == "AT":
        return elem.value
    if vr == "PN":
        return _pack(elem, [f"ANON^{ctx.key.token('PN', str(v), 10)}" for v in _values(elem)])
    if vr == "UR":
        return "urn:deidpipe:removed"
    return _pack(elem, [_fit(vr, "ANON" + ctx.key.token(elem.keyword or "text", str(v), 8))
                        for v in _values(elem)])


def pseudonym(elem: DataElement, ctx: ScrubContext, kind: str) -> Any:
    """A keyed pseudonym for an identifier listed in ``rules/identifiers.yaml``."""
    if kind == "id":
        return ctx.patient_token
    if kind == "name":
        return f"ANON^{ctx.patient_token}"
    return _pack(elem, [_fit(elem.VR, ctx.key.token(elem.keyword, str(v), 16)) if str(v).strip() else v
                        for v in _values(elem)])


def clean_value(elem: DataElement, ctx: ScrubContext) -> Any:
    """Action C for a non-sequence element: shift dates, screen text, map UIDs; dummy where unsure."""
    vr = elem.VR
    if vr in ("DA", "DT", "TM"):
        if ctx.policy.temporal == "full":
            return elem.value
        return shift_dates(elem, ctx)
    if vr == "UI":
        return map_uids(elem, ctx)
    if vr in ("PN", "AE", "UR") or vr in BINARY_VRS:
        return None  # cannot be cleaned in place: the caller turns this into a dummy or a removal
    if vr in TEXT_VRS:
        out = []
        for v in _values(elem):
            text, n = screen_text(str(v) if v is not None else "", ctx.denylist, use_model=ctx.use_model)
            ctx.counts["C:spans"] += n
            out.append(_fit(vr, text))
        return _pack(elem, out)
    return elem.value
