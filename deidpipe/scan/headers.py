"""Header rules: walk one data set at every level and say what the policy would still change, without a value.

The action for each element is the header engine's own decision (:func:`deidpipe.header.walk.decide`, with the
engine's per-(policy, SOP class) decision cache and its keyed-pseudonym upgrade), so the scan and ``deidpipe run``
never disagree on what a policy does. An element is a finding when the engine would still have work to do on it:

* X / Z and the element carries a value -> DP-H001 (dates and times: DP-H006);
* D or a keyed pseudonym, and the value is neither a dummy nor a pseudonym of the forms deidpipe (or a common
  tool) writes -> DP-H002 (dates and times: DP-H006);
* a UID the engine maps that is not under ``2.25`` -> DP-H005.

Locations are keyword paths with ``[i]`` for sequence items (``RequestAttributesSequence[0].PatientName``); a
private element is ``(gggg,eeee) "CREATOR"``; File Meta elements start with ``file_meta.``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from deidpipe.header.actions import is_mappable_uid
from deidpipe.header.context import ScrubContext
from deidpipe.header.screen import latin1_hit
from deidpipe.header.text import DenyList
from deidpipe.header.walk import NORMAL, decide, decoded, head_of, identifier_kinds, is_free_text, sequence_mode
from deidpipe.header.walk import private_creator as walk_private_creator
from deidpipe.policy import Policy

#: One header finding: (rule id, severity, location, message).
Hit = tuple[str, str, str, str]

TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "UR", "CS"})
SEARCHED_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "UR", "CS", "DA", "DT", "OB", "UN"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "DS", "IS", "AT"})
BINARY_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"})
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
DATE_VRS = frozenset({"DA", "DT", "TM"})
DUMMY_DATES = {"DA": "19000101", "TM": "000000", "DT": "19000101000000"}
_TOKEN = re.compile(r"[0-9A-Z]{16}")
_DUMMY_TEXT = re.compile(r"ANON[0-9A-Z]*")
_DUMMY_PN = re.compile(r"ANON\^[0-9A-Z]*")
#: Dummies other de-identification tools write.
COMMON_DUMMIES = frozenset({"ANONYMOUS", "ANONYMIZED", "ANONYMISED", "REMOVED", "DEIDENTIFIED", "DE-IDENTIFIED",
                            "NONE", "UNKNOWN", "XXX", "0", "ANON"})
#: File Meta elements a de-identified file may carry (the engine writes exactly these, plus group length).
FILE_META_ALLOWED = frozenset({0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013})


def _values(elem: DataElement) -> list[Any]:
    v = elem.value
    if isinstance(v, MultiValue | list | tuple):
        return list(v)
    return [v]


def _text(v: Any) -> str:
    return "" if v is None else str(v).strip().rstrip("\x00").strip()


def plain_values(ds: Dataset, tag: Any, vr: str) -> tuple[list[str], bytes | None]:
    """An element's values as stripped texts, or, for binary VRs (numbers included), its bytes; read from the
    stored raw bytes when the element was not decoded (decoding every element costs more than the checks)."""
    stored = ds._dict[tag]
    if isinstance(stored, RawDataElement):
        data = bytes(stored.value or b"")
        if vr in BINARY_VRS or vr in BINARY_NUMBER_VRS:
            return [], data
        return [_text(v) for v in data.decode("latin-1").split("\\")], None
    if vr in BINARY_VRS and isinstance(stored.value, bytes | bytearray):
        return [], bytes(stored.value)
    return [_text(v) for v in _values(stored)], None


def looks_replaced(vr: str, values: list[str], data: bytes | None) -> bool:
    """Whether a value is a dummy (action D) or a keyed pseudonym: what the engine (or a common tool) writes in
    place of the original. Never decides on the original value itself."""
    if data is not None:
        return not any(data)
    if vr in NUMBER_VRS:
        return all(v in ("", "0", "0.0") for v in values)
    if vr == "AS":
        return all(v in ("", "000D") for v in values)
    if vr in DUMMY_DATES:
        return all(v in ("", DUMMY_DATES[vr]) for v in values)
    if vr == "UI":
        return all(not v or v.startswith("2.25.") for v in values)
    if vr == "UR":
        return all(v in ("", "urn:deidpipe:removed") for v in values)
    if vr == "PN":
        return all(not v or _DUMMY_PN.fullmatch(v) or v.upper() in COMMON_DUMMIES for v in values)
    return all(not v or _TOKEN.fullmatch(v) or _DUMMY_TEXT.fullmatch(v) or v.upper() in COMMON_DUMMIES
               for v in values)


def _severity(vr: str, kind: str | None) -> str:
    """Names, IDs, free text and dates are high; numbers and codes (weight, sex) medium."""
    if kind is not None or vr in TEXT_VRS or vr in BINARY_VRS or vr in ("DA", "DT", "SQ"):
        return "high" if vr != "CS" else "medium"
    return "medium"


def _name(head: Any) -> str:
    return head.keyword or f"({head.tag >> 16:04X},{head.tag & 0xFFFF:04X})"


@dataclass
class HeaderChecker:
    """Header rules for one policy; :meth:`check` runs them on one data set."""

    policy: Policy
    key: Any  # ProjectKey: the engine's context needs one (the scan's own, never written anywhere)
    known: DenyList | None = None
    presidio: bool = False  # DP-H013: presidio-analyzer on the free text the policy keeps or cleans (slow)

    def context(self, ds: Dataset) -> ScrubContext:
        """The engine's context, without what only the actions need (the object's deny-list, pseudonyms, date
        shift): the decisions depend on the policy and the SOP class alone."""
        from deidpipe.header.context import shared_decisions, sop_class_of
        from deidpipe.ruledata import iod_for_sop_class, load_safe_private, load_table

        sop_class = sop_class_of(ds)
        return ScrubContext(key=self.key, policy=self.policy, table=load_table(), safe_private=load_safe_private(),
                            patient_token="", shift_days=0, denylist=DenyList(), use_model=False,
                            iod=iod_for_sop_class(sop_class), decisions=shared_decisions(self.policy, sop_class))

    def check(self, ds: Dataset) -> list[Hit]:
        ctx = self.context(ds)
        hits: list[Hit] = []
        # Searched first: the walk decodes some elements (presidio's free text), and the search reads the raw
        # bytes of the others as Latin-1 too, which a decoded element no longer has.
        known = [] if self.known is None or self.known.empty else list(known_identity_locations(ds, self.known))
        self._walk(ds, ctx, NORMAL, True, "", hits)
        self._dataset_level(ds, hits)
        self._file_meta(ds, hits)
        for loc in known:
            hits.append(("DP-H010", "high", loc, "a known identity (name, ID or birth date) occurs in this value"))
        return hits

    # -- the walk ------------------------------------------------------------------------------------------
    def _walk(self, ds: Dataset, ctx: ScrubContext, mode: str, top: bool, prefix: str, hits: list[Hit]) -> None:
        for tag in sorted(ds._dict, key=int):
            t = int(tag)
            group, element = t >> 16, t & 0xFFFF
            if element == 0 or group == 0x0002:
                continue
            if group & 1:
                self._private(ds, tag, prefix, hits)
                continue
            head = head_of(ds._dict[tag])
            if head.is_empty and head.VR != "SQ":
                continue
            decision = ctx.decisions.get((head, mode, top))
            if decision is None:
                action, set_value = decide(head, ctx, mode, top)
                kind = identifier_kinds().get(head.keyword)
                if kind is not None and action in ("Z", "D") and not head.is_empty:
                    action = "P"
                decision = ctx.decisions[(head, mode, top)] = (action, set_value, kind)
            action, _, kind = decision
            loc = prefix + _name(head)
            self._element(ds, tag, head, action, kind, ctx, mode, loc, hits)

    def _element(self, ds: Dataset, tag: Any, head: Any, action: str, kind: str | None, ctx: ScrubContext,
                 mode: str, loc: str, hits: list[Hit]) -> None:
        name = _name(head)
        if head.VR == "SQ":
            elem = decoded(ds, tag)
            items = list(elem.value or [])
            if action in ("X", "Z") and items:
                hits.append(("DP-H001", "high", loc, f"{name}: a sequence the policy removes or empties "
                                                    f"({action}) has items"))
                return
            sub = sequence_mode(head, action, mode)
            for i, item in enumerate(items):
                self._walk(item, ctx, sub, False, f"{loc}[{i}].", hits)
            return
        if head.VR in DATE_VRS:
            if action in ("X", "Z") or (action == "D" and not looks_replaced(head.VR, *plain_values(ds, tag, head.VR))):
                sev = "medium" if head.VR == "TM" else "high"
                hits.append(("DP-H006", sev, loc, f"{name}: a {head.VR} value the policy removes ({action}) is "
                                                  "present"))
            return
        if action in ("X", "Z"):
            hits.append(("DP-H001", _severity(head.VR, kind), loc,
                         f"{name}: an attribute the policy removes or empties ({action}) carries a value"))
            return
        if head.VR == "UI" and action in ("U", "D", "C", "P"):
            values, _ = plain_values(ds, tag, "UI")
            if any(is_mappable_uid(head.keyword, v) and not v.startswith("2.25.") for v in values):
                hits.append(("DP-H005", "medium", loc, f"{name}: an instance UID that is not under 2.25"))
            return
        if self.presidio and action in ("K", "C") and is_free_text(head):
            from deidpipe.header.text import model_spans

            texts = [_text(v) for v in _values(decoded(ds, tag))]
            if any(t and any(c.isalnum() for c in t) and model_spans(t) for t in texts):
                hits.append(("DP-H013", "medium", loc, f"{name}: presidio finds a name, date, place or number in "
                                                       "this free text, which the policy keeps or cleans"))
            return
        if action in ("D", "P"):
            if not looks_replaced(head.VR, *plain_values(ds, tag, head.VR)):
                what = "a keyed pseudonym" if action == "P" else "a dummy"
                hits.append(("DP-H002", _severity(head.VR, kind), loc,
                             f"{name}: the policy puts {what} here, and the value is neither a dummy nor a "
                             "pseudonym"))

    def _private(self, ds: Dataset, tag: Any, prefix: str, hits: list[Hit]) -> None:
        t = int(tag)
        group, element = t >> 16, t & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            return  # a Private Creator: a label; its block's elements are judged
        head = head_of(ds._dict[tag])
        if head.is_empty:
            return
        creator = private_creator(ds, t)
        loc = prefix + private_name(t, creator)
        safe = bool(creator) and element >= 0x1000 and load_safe().is_safe(group, creator, element & 0xFF)
        if safe:
            if "RetainSafePrivate" not in self.policy.options:
                hits.append(("DP-H004", "low", loc, "a safe private element, which this policy removes"))
            return
        sev = "medium" if head.VR in NUMBER_VRS else "high"
        hits.append(("DP-H003", sev, loc, "a private element outside the safe list"))

    # -- object-level attributes ----------------------------------------------------------------------------
    def _dataset_level(self, ds: Dataset, hits: list[Hit]) -> None:
        removed = _text(ds.get("PatientIdentityRemoved", "")).upper()
        if removed != "YES":
            hits.append(("DP-H007", "medium", "PatientIdentityRemoved",
                         "Patient Identity Removed is missing" if not removed else
                         "Patient Identity Removed is not YES"))
        has_method = bool(ds.get("DeidentificationMethod"))
        codes = {_text(item.get("CodeValue", "")) for item in ds.get("DeidentificationMethodCodeSequence") or []}
        if removed == "YES" and not has_method and not codes:
            hits.append(("DP-H008", "low", "DeidentificationMethod",
                         "Patient Identity Removed is YES but no De-identification Method is given"))
        elif removed == "YES" and not codes:
            hits.append(("DP-H008", "low", "DeidentificationMethodCodeSequence",
                         "De-identification Method Code Sequence is missing"))
        elif codes:
            missing = sorted(set(expected_method_codes(self.policy)) - codes)
            if removed != "YES":
                hits.append(("DP-H008", "low", "DeidentificationMethodCodeSequence",
                             "a De-identification Method Code Sequence without Patient Identity Removed YES"))
            elif missing:
                hits.append(("DP-H008", "low", "DeidentificationMethodCodeSequence",
                             f"the code sequence lacks the policy's codes {', '.join(missing)}"))
        if _text(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            hits.append(("DP-H009", "high", "BurnedInAnnotation", "Burned In Annotation is YES"))
        if self.policy.temporal == "modified":
            if _text(ds.get("LongitudinalTemporalInformationModified", "")).upper() != "MODIFIED":
                hits.append(("DP-H012", "medium", "LongitudinalTemporalInformationModified",
                             "the policy shifts dates but this attribute does not say MODIFIED"))

    def _file_meta(self, ds: Dataset, hits: list[Hit]) -> None:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        for tag in sorted(meta._dict, key=int):
            head = head_of(meta._dict[tag])
            loc = f"file_meta.{_name(head)}"
            if head.is_empty:
                continue
            if int(tag) == 0x00020003:
                value = _text(decoded(meta, tag).value)
                if value and not value.startswith("2.25."):
                    hits.append(("DP-H005", "medium", loc, "Media Storage SOP Instance UID is not under 2.25"))
            elif int(tag) not in FILE_META_ALLOWED:
                hits.append(("DP-H011", "high", loc, f"{_name(head)}: a File Meta element that can identify "
                                                     "the source"))


def private_creator(ds: Dataset, tag: int) -> str:
    """The Private Creator of a private data element's block ('' when there is none or it cannot be decoded);
    the engine's own lookup (:func:`deidpipe.header.walk.private_creator`), stripped."""
    try:
        return _text(walk_private_creator(ds, tag))
    except Exception:  # noqa: BLE001 - an undecodable creator: no creator
        return ""


def private_name(tag: int, creator: str) -> str:
    """``(gggg,eeee) "CREATOR"``: how a location names a private element. A Private Creator is free text that a
    file can fill with anything, a patient's name included: it is printed only when the knowledge base lists it
    (a vendor's label), otherwise the location says the creator is unlisted."""
    if not creator:
        label = ""
    elif load_safe().knows_creator(creator):
        label = f' "{creator}"'
    else:
        label = " (creator not in the knowledge base)"
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}){label}"


def load_safe() -> Any:
    from deidpipe.ruledata import load_safe_private

    return load_safe_private()


def expected_method_codes(policy: Policy) -> list[str]:
    """The CID 7050 codes the engine writes for ``policy`` (113100 and one per option)."""
    from deidpipe.ruledata import load_rule_file

    data = load_rule_file("options.yaml")
    return [data["profile"]["code"]] + [data["options"][o]["code"] for o in sorted(policy.options)]


# -- known identities ---------------------------------------------------------------------------------------
def _element_texts(elem: DataElement) -> list[str]:
    if elem.VR in ("OB", "UN", "OW"):
        data = elem.value or b""
        return [bytes(data).decode("latin-1")] if isinstance(data, bytes | bytearray) else []
    return [_text(v) for v in _values(elem) if v is not None]


def known_identity_locations(ds: Dataset, known: DenyList, prefix: str = "") -> Iterator[str]:
    """Locations of every text value (any depth, private and File Meta included) where a known term occurs."""
    if not prefix:
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            yield from _search(meta, known, "file_meta.", ds)
    yield from _search(ds, known, prefix, ds)


def _search(ds: Dataset, known: DenyList, prefix: str, top: Dataset) -> Iterator[str]:
    for tag in sorted(ds._dict, key=int):
        head = head_of(ds._dict[tag])
        if head.is_empty or (head.VR not in SEARCHED_VRS and head.VR != "SQ"):
            continue
        t = int(tag)
        name = _name(head) if not (t >> 16) & 1 else private_name(t, private_creator(ds, t))
        raw = ds._dict[tag]  # before decoding: pydicom may replace the stored raw element
        try:
            elem = decoded(ds, tag)
        except Exception:  # noqa: BLE001 - an undecodable element: searched as raw bytes below
            if any(known.spans(bytes(getattr(raw, "value", b"") or b"").decode("latin-1"))):
                yield prefix + name
            continue
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                yield from _search(item, known, f"{prefix}{name}[{i}].", top)
        elif any(known.spans(text) for text in _element_texts(elem)) or (
                elem.VR in TEXT_VRS and _latin1_hit(raw, known)):
            yield prefix + name


def _latin1_hit(stored: Any, known: DenyList) -> bool:
    """A raw text value with bytes beyond ASCII whose Latin-1 reading holds a known name that its declared character
    set hid (:func:`deidpipe.header.screen.latin1_hit`; the header stage screens the same reading)."""
    value = stored.value if isinstance(stored, RawDataElement) else None
    return isinstance(value, bytes) and not value.isascii() and latin1_hit(value.decode("latin-1"), known)
