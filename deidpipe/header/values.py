"""Is a kept value what its VR (or its attribute's defined terms) says it is?

The profile keeps many attributes as they are: numbers (DS, IS), dates and times when the policy keeps them, coded
strings (CS) such as Modality. A broken exporter or an attacker can put any text there, a name included, and a
kept element goes out byte for byte. So a kept value of a VR with a fixed form (PS3.5 Table 6.2-1) is checked
against that form, and a few coded attributes against their defined terms; a value that fails is replaced by a
dummy of its VR (never decoded: pydicom's decoders may choke on it or quote it).

The checks run on the raw bytes, one compiled pattern per VR, because they run on every kept element of these VRs
in every object. Patterns are lenient where real files are (leading and trailing spaces, ACR-NEMA dates and times
with separators); they only need to refuse what is not a number, date or code.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom.multival import MultiValue

#: Modality (0008,0060) defined terms, PS3.3 C.7.3.1.1.1, current and retired; and "SC", widely written for
#: Secondary Capture though not defined.
MODALITY_TERMS = frozenset(
    "ANN AR ASMT AU BDUS BI BMD CFM CT CTPROTOCOL DMS DG DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL IVOCT "
    "IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT PX REG RESP RF "
    "RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG "
    "US VA XA XAPROTOCOL XC "
    "AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF "
    "SC".split()
)
YES_NO = frozenset({"YES", "NO"})

#: Coded attributes whose every value must be one of a closed list: Modality, Burned In Annotation (0028,0301),
#: Recognizable Visual Features (0028,0302).
ENUMERATED: dict[int, frozenset[str]] = {0x00080060: MODALITY_TERMS, 0x00280301: YES_NO, 0x00280302: YES_NO}

_ONE = {
    "DS": rb" *[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)? *",
    "IS": rb" *[+-]?\d+ *",
    "DA": rb" *(\d{8}|\d{4}\.\d{2}\.\d{2}) *",
    "TM": rb" *\d{2}(:?\d{2}(:?\d{2}(\.\d{1,6})?)?)? *",
    "DT": rb" *\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})? *",
    "AS": rb"\d{3}[DWMY]",
    "CS": rb" *[A-Z0-9_ ]{0,16}",
}
#: Whole raw values (several values separated by backslashes, empty ones allowed, NUL or space padding).
_RAW = {vr: re.compile(rb"(%s)?(\\(%s)?)*[\0 ]*" % (one, one)) for vr, one in _ONE.items()}
CHECKED_VRS = frozenset(_RAW)

_DUMMIES = {"DS": "0", "IS": "0", "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000D",
            "CS": "INVALID"}


def raw_value_is_valid(tag: int, vr: str, value: bytes | None) -> bool:
    """Whether the raw value of a kept element of a checked VR has its VR's form (and, for the attributes in
    :data:`ENUMERATED`, only defined terms). Other VRs are not judged here: True."""
    pattern = _RAW.get(vr)
    if pattern is None or not value:
        return True
    if pattern.fullmatch(value) is None:
        return False
    terms = ENUMERATED.get(tag)
    if terms is None:
        return True
    words = [w.strip(b"\0 ") for w in value.split(b"\\")]
    return all(not w or w.decode("ascii") in terms for w in words)


def value_is_valid(tag: int, vr: str, value: Any) -> bool:
    """:func:`raw_value_is_valid` for a decoded value (a string, a number, or several)."""
    if vr not in _RAW or value is None:
        return True
    values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    text = "\\".join("" if v is None else str(v) for v in values)
    if vr == "DS":  # pydicom's DS float/Decimal prints as Python does: 1e-05, inf, nan
        text = "\\".join("" if v is None else getattr(v, "original_string", None) or repr(float(v))
                         for v in values)
    try:
        return raw_value_is_valid(tag, vr, text.encode("ascii"))
    except (UnicodeEncodeError, ValueError, TypeError):
        return False


def dummy_for(vr: str) -> str:
    """A value of ``vr``'s form that carries nothing of the value it replaces."""
    return _DUMMIES[vr]
