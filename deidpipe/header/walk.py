"""Walk a data set at every nesting level and decide, element by element, what de-identification does.

The decision for one element, in order:

1. a policy override for its tag (``K``, ``X``, ``Z``, ``D``, ``C``, ``U`` or ``set``);
2. its Table E.1-1 row, under the enabled options, compound codes resolved by
   :func:`~deidpipe.ruledata.resolve_compound`;
3. private elements: removed, unless Retain Safe Private and the TCIA knowledge base marks the
   creator-qualified element safe;
4. attributes the table does not list: UIDs mapped, PN replaced, free text screened, dates treated like the
   table's dates; unknown tags removed; everything else kept (strict mode: only the allow-list is kept).

Sequences are walked item by item; a sequence whose action is D (or C) passes that mode down, so that
free text the table does not list inside, e.g. an SR Content Sequence, gets a dummy (or is cleaned).

Then every value that survives (kept, cleaned, or a kept private element) passes the identity screen
(:func:`screened`, :mod:`deidpipe.header.screen`): a value holding the object's own name, ID or birth date goes
out as a dummy of its VR, or not at all.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from typing import TYPE_CHECKING, NamedTuple

from pydicom.datadict import dictionary_is_retired, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from deidpipe.dicomio.plainread import stored_vr
from deidpipe.errors import InvalidValueError, PolicyError
from deidpipe.header import actions
from deidpipe.header.context import ScrubContext
from deidpipe.header.identity import identity_rules
from deidpipe.header.screen import SCREENED_COUNT, latin1_hit, screen_values, split_values, text_of_bytes
from deidpipe.header.values import CHECKED_VRS, dummy_for, raw_value_is_valid, value_is_valid
from deidpipe.policy import is_known_tag
from deidpipe.ruledata import load_rule_file, resolve_compound

if TYPE_CHECKING:
    from deidpipe.header.text import DenyList

NORMAL, DUMMY, DUMMY_CODES, CLEAN = "normal", "dummy", "dummy_codes", "clean"
_ICC_PROFILE = 0x00282000  # kept, its free text blanked (_icc_profile_blanked)
ICC_COUNT = "icc_text_blanked"  # audit: ICC profiles whose text was blanked
_SPECIFIC_CHARACTER_SET = 0x00080005  # kept, and checked against the defined terms (actions.clean_character_set)
_TEXTUAL_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
                          "UI", "UR", "UT"})


class Head(NamedTuple):
    """What an action is decided on: tag, VR, keyword, emptiness. Read without decoding the value, so that
    elements kept as they are stay raw and are written back byte for byte (pydicom's fast path).
    A named tuple: one is made per element, and it keys the context's decision cache."""

    tag: int
    VR: str
    keyword: str
    is_empty: bool


@cache
def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or ""


def head_of(stored: DataElement | RawDataElement) -> Head:
    """The :class:`Head` of a stored element, raw (undecoded) or already a DataElement."""
    # A plain int: the caches below (and the decision cache the Head keys) compare keys, and pydicom's BaseTag
    # compares in Python.
    tag = int(stored.tag)
    vr = stored_vr(stored)
    if isinstance(stored, RawDataElement):
        value = stored.value
        empty = not value or (vr in _TEXTUAL_VRS and not value.strip(b" \x00"))
    else:
        empty = stored.is_empty
    return Head(tag, vr, _keyword(tag), empty)


def decoded(src: Dataset, tag: BaseTag) -> DataElement:
    """The decoded element, or an InvalidValueError naming the tag (never the value)."""
    try:
        return src[tag]
    except Exception as exc:  # noqa: BLE001 - any decoder failure is an input problem
        raise InvalidValueError(None, f"element {tag} cannot be decoded ({type(exc).__name__})") from None


@cache
def _free_text_rules() -> tuple[frozenset[str], re.Pattern[str], frozenset[str]]:
    data = load_rule_file("free_text.yaml")
    return frozenset(data["text_vrs"]), re.compile(data["keyword_pattern"]), frozenset(data["never_screen"])


@cache
def _strict_allow() -> tuple[frozenset[str], frozenset[str]]:
    data = load_rule_file("strict_allow.yaml")
    return frozenset(data["safe_vrs"]), frozenset(data["keep"])


@cache
def identifier_kinds() -> dict[str, str]:
    """Keyword -> the kind of identifier it holds (rules/identifiers.yaml): a patient's, or another value."""
    data = load_rule_file("identifiers.yaml")
    out = {kw: kind for kw, kind in data["patient"].items()}
    out.update({kw: "value" for kw in data["value"]})
    return out


def is_free_text(elem: Head) -> bool:
    """Whether an element is free text that may name a person (text VR, keyword pattern, not a coded one)."""
    text_vrs, pattern, never = _free_text_rules()
    return elem.VR in text_vrs and elem.keyword not in never and bool(pattern.search(elem.keyword))


def _strictly_allowed(elem: Head, ctx: ScrubContext) -> bool:
    """Strict mode's allow-list for attributes Table E.1-1 does not list: attributes of the object's IOD
    (any nesting level) whose VR cannot carry free-form identity, plus the keep list; for an unknown SOP
    class, any non-retired attribute of such a VR."""
    tag = int(elem.tag)
    safe_vrs, keep = _strict_allow()
    if elem.keyword in keep:
        return True
    if dictionary_is_retired(tag) or not (elem.VR in safe_vrs or elem.VR == "UI"):
        return False
    return ctx.iod is None or tag in ctx.iod


def _unlisted_action(elem: Head, ctx: ScrubContext, mode: str) -> str:
    """The action for a standard attribute that Table E.1-1 does not list."""
    tag = int(elem.tag)
    if not is_known_tag(tag):
        return "X"  # cannot judge what an unknown attribute holds
    if ctx.policy.strict and not _strictly_allowed(elem, ctx):
        return "X"
    vr = elem.VR
    if vr == "UI":
        return "U"
    if vr == "PN":
        return "D"
    if vr in ("DA", "DT", "TM"):
        return {"full": "K", "modified": "C", "removed": "D"}[ctx.policy.temporal]
    if mode == DUMMY_CODES and elem.VR in _free_text_rules()[0]:
        return "D"  # the codes of e.g. a Person Identification Code Sequence identify the person
    if is_free_text(elem):
        return "D" if mode in (DUMMY, DUMMY_CODES) else "C"
    return "K"


def decide(elem: Head, ctx: ScrubContext, mode: str, top_level: bool = True) -> tuple[str, str | None]:
    """The single action for a standard (even-group) element and, for ``set``, its value."""
    tag = int(elem.tag)
    override = ctx.policy.override_map.get(tag)
    if override is not None:
        return override.action, override.value
    row = ctx.table.lookup(tag)
    action = row.action(ctx.policy.option_columns) if row is not None else _unlisted_action(elem, ctx, mode)
    by_type = top_level and ctx.iod is not None
    action = resolve_compound(action, present_and_nonempty=not elem.is_empty, is_sequence=elem.VR == "SQ",
                              iod_type=ctx.iod.top.get(tag) if by_type else None, in_known_iod=by_type)
    return action, None


def _scrub_sequence(elem: DataElement, ctx: ScrubContext, mode: str) -> DataElement:
    items = Sequence([scrub_dataset(item, ctx, mode, top_level=False) for item in elem.value])
    return DataElement(elem.tag, "SQ", items, is_undefined_length=elem.is_undefined_length)


def sequence_mode(elem: Head, action: str, mode: str) -> str:
    """The mode a sequence's items are walked in: a D code sequence takes dummies even for its codes."""
    if action == "D":
        return DUMMY_CODES if elem.keyword.endswith("CodeSequence") or mode == DUMMY_CODES else DUMMY
    if action == "C":
        return CLEAN
    return mode


def scrub_element(src: Dataset, tag: BaseTag, ctx: ScrubContext, mode: str,
                  top_level: bool = True) -> DataElement | RawDataElement | None:
    """The de-identified element ``tag`` of ``src``, or None when it is removed; counts in ``ctx.counts``.

    Only elements whose value changes are decoded; a kept element is returned as stored (raw if undecoded).
    """
    stored = src._dict[tag]
    head = head_of(stored)
    decision = ctx.decisions.get((head, mode, top_level))
    if decision is None:
        action, set_value = decide(head, ctx, mode, top_level)
        kind = identifier_kinds().get(head.keyword)
        if kind is not None and action in ("Z", "D") and not head.is_empty:
            action = "P"  # a keyed pseudonym keeps objects linked where the profile would empty the value
        decision = ctx.decisions[(head, mode, top_level)] = (action, set_value, kind)
    action, set_value, kind = decision
    if action in ("X", "K") or (action == "Z" and head.VR != "SQ"):
        ctx.counts[action] += 1
        if action == "X":
            return None
        if action == "Z":
            return DataElement(tag, head.VR, None if head.VR in ("SQ",) else _empty(head.VR))
        if head.tag == _ICC_PROFILE and not head.is_empty:
            return _icc_profile_blanked(src, tag, ctx)
        if head.VR != "SQ":
            # A raw element without a VR in data declared explicit was read by pydicom's implicit-VR
            # fallback: decode it so it can be written with a VR; every other kept element stays raw.
            if isinstance(stored, RawDataElement) and (stored.VR is not None or src.original_encoding[0]):
                if head.VR in CHECKED_VRS and not raw_value_is_valid(tag, head.VR, stored.value):
                    return _invalid_kept(tag, head.VR, ctx)
                return screened(src, stored, head, ctx, top_level)
            elem = copy.copy(decoded(src, tag))
            if head.VR in CHECKED_VRS and not value_is_valid(tag, head.VR, elem.value):
                return _invalid_kept(tag, head.VR, ctx)
            return screened(src, elem, head, ctx, top_level, raw=stored)
    elem = decoded(src, tag)
    if action == "C" and elem.VR != "SQ":
        # A value whose bytes hide a name from the decoder (see _misread_hits) is not cleaned but replaced.
        misread = _beyond_ascii(stored) and _misread_hits(stored, elem.VR, _texts(src, elem, elem.VR), ctx)
        value = None if misread else actions.clean_value(elem, ctx)
        if value is None:  # PN, AE, binary: no partial clean possible, take a dummy
            action = "D"
    if action != "K":
        ctx.counts[action] += 1
    if elem.VR == "SQ":
        if action == "Z":
            return DataElement(elem.tag, "SQ", Sequence())
        if action == "set":
            raise PolicyError(f"override 'set' cannot be applied to the sequence {elem.tag}")
        return _scrub_sequence(elem, ctx, sequence_mode(head, action, mode))
    if action == "D":
        return DataElement(elem.tag, elem.VR, actions.dummy_value(elem, ctx))
    if action == "U":
        return DataElement(elem.tag, elem.VR, actions.map_uids(elem, ctx))
    if action == "P":
        return DataElement(elem.tag, elem.VR, actions.pseudonym(elem, ctx, kind or "value"))
    if action == "C":
        return screened(src, DataElement(elem.tag, elem.VR, value), head, ctx, top_level)
    if action == "set":
        return DataElement(elem.tag, elem.VR, set_value)
    raise ValueError(f"action {action}")


def screened(src: Dataset, elem: DataElement | RawDataElement, head: Head, ctx: ScrubContext, top_level: bool,
             private: bool = False,
             raw: DataElement | RawDataElement | None = None) -> DataElement | RawDataElement | None:
    """A kept or cleaned element after the identity screen (:mod:`deidpipe.header.screen`): as it came (raw stays
    raw) when no value holds the object's identity; else removed where it may be (a private element, an UN
    element, an attribute of Type 3 at the top of a known IOD), or each value that held one replaced by a dummy
    of the VR (a URI by its cleaned form). Counted as ``identity_screened`` and ``uri_cleaned``. ``raw``: the
    element as stored before ``elem`` was decoded from it, whose bytes are read as Latin-1 too (see
    :func:`_misread_hits`)."""
    vr = head.VR
    if (vr not in identity_rules().screened_vrs or head.is_empty or head.tag == _SPECIFIC_CHARACTER_SET
            or (top_level and head.tag in ctx.exempt)):
        return elem
    texts = _texts(src, elem, vr)
    if texts is None:
        return elem
    result = screen_values(texts, vr, ctx.denylist, ctx.counts)
    for i in _misread_hits(raw or elem, vr, texts, ctx):  # the identity the decoder hid: a hit as any other
        if result.values[i] is not None:
            result.values[i], result.hits, result.changed = None, result.hits + 1, True
    if not result.changed:
        return elem
    tag = head.tag
    if result.hits:
        ctx.counts[SCREENED_COUNT] += 1
        type_ = ctx.iod.top.get(tag, "3") if top_level and ctx.iod is not None else None
        if private or vr == "UN" or type_ == "3":
            return None
    values = [v if v is not None else actions.dummy_value(DataElement(tag, vr, text), ctx)
              for v, text in zip(result.values, texts, strict=True)]
    return DataElement(tag, vr, values if len(values) > 1 else values[0])


def _texts(src: Dataset, elem: DataElement | RawDataElement, vr: str) -> list[str] | None:
    """The values of a text element as strings (raw ASCII read without pydicom's decoders); None for an UN
    value that is not text."""
    value = elem.value
    if isinstance(value, bytes):
        text = text_of_bytes(value, vr)
        if text is not None:
            return split_values(text, vr)
        if vr == "UN" or isinstance(elem, DataElement):
            return None
        value = decoded(src, elem.tag).value  # another character set: pydicom knows it
    if value is None:
        return None
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return ["" if v is None else str(v) for v in values]


def _misread_hits(elem: DataElement | RawDataElement, vr: str, texts: list[str] | None,
                  ctx: ScrubContext) -> list[int]:
    """The indexes of the values whose raw bytes, read one by one as Latin-1, hold the object's identity where
    the declared character set hid it (see :func:`_hides_identity`). Each value is judged apart; an ASCII value
    is not read again. Empty where the value is not raw, or where the Latin-1 reading splits into another number
    of values (0x5C inside a two-byte character): the decoding stands."""
    if not texts or not _beyond_ascii(elem):
        return []
    misread = split_values(elem.value.decode("latin-1"), vr)
    if len(misread) != len(texts):
        return []
    return [i for i, (text, latin1) in enumerate(zip(texts, misread, strict=True))
            if _hides_identity(text, latin1, ctx.denylist)]


def _beyond_ascii(elem: DataElement | RawDataElement) -> bool:
    """Whether an element is held as raw bytes with one beyond ASCII: the only values a character set can misread."""
    return isinstance(elem.value, bytes) and not elem.value.isascii()


def _hides_identity(text: str, latin1: str, denylist: DenyList) -> bool:
    """Whether ``latin1``, a value's bytes read as Latin-1, holds the identity where ``text``, the same bytes as
    the declared character set decoded them, reads otherwise (see :func:`deidpipe.header.screen.latin1_hit`)."""
    text, latin1 = text.strip("\x00 "), latin1.strip("\x00 ")
    return text != latin1 and latin1_hit(latin1, denylist)


def _icc_profile_blanked(src: Dataset, tag: BaseTag, ctx: ScrubContext) -> DataElement | RawDataElement | None:
    """A kept ICC Profile (0028,2000) with its free text blanked (:mod:`deidpipe.pixels.icc`: description,
    copyright, device descriptions; its colour data byte for byte), counted as ``icc_text_blanked``; one whose tag
    table does not add up is removed (counted under X), its text out of reach."""
    from deidpipe.pixels.icc import ICCError, blank_icc_text

    stored = src._dict[tag]
    value = decoded(src, tag).value
    try:
        blanked = blank_icc_text(bytes(value))
    except (ICCError, TypeError):
        ctx.counts["K"] -= 1
        ctx.counts["X"] += 1
        return None
    if blanked == value:
        return stored
    ctx.counts[ICC_COUNT] += 1
    return DataElement(tag, "OB", blanked)


def _invalid_kept(tag: int, vr: str, ctx: ScrubContext) -> DataElement:
    """A kept element whose value is not of its VR's form (see :mod:`deidpipe.header.values`): a dummy instead,
    counted as ``invalid_value`` (the K counted for it stands: the element is kept, its value is not)."""
    ctx.counts["invalid_value"] += 1
    return DataElement(tag, vr, dummy_for(vr))


def _empty(vr: str) -> str | None:
    """pydicom's empty value for a VR: '' for text VRs, None for the rest."""
    return "" if vr in _TEXTUAL_VRS or vr in ("LT", "ST", "UT", "UC", "UR") else None


def private_creator(ds: Dataset, tag: int) -> str:
    """The Private Creator (gggg,00xx) value of a private element's block, '' where there is none (or for an
    element below (gggg,1000), which has no block)."""
    group, element = tag >> 16, tag & 0xFFFF
    creator_tag = (group << 16) | (element >> 8)
    if element < 0x1000 or creator_tag not in ds._dict:
        return ""
    return str(decoded(ds, BaseTag(creator_tag)).value or "")


def _scrub_private(src: Dataset, tag: BaseTag, ctx: ScrubContext, mode: str,
                   kept_blocks: set[tuple[int, int]]) -> DataElement | RawDataElement | None:
    """Keep a private element only under Retain Safe Private, when its creator-qualified tag is safe."""
    group, el = tag.group, tag.element
    if el < 0x1000 or "RetainSafePrivate" not in ctx.policy.options:
        ctx.counts["X"] += _private_x(el)
        return None
    block = el >> 8
    creator = private_creator(src, int(tag))
    if not creator or not ctx.safe_private.is_safe(group, creator, el & 0xFF):
        ctx.counts["X"] += 1
        return None
    kept_blocks.add((group, block))
    ctx.counts["K"] += 1
    stored = src._dict[tag]  # before decoding, which replaces it: the raw bytes for the Latin-1 reading
    elem = decoded(src, tag)
    if elem.VR == "SQ":
        return _scrub_sequence(elem, ctx, mode)
    date_vr = elem.VR if elem.VR in ("DA", "DT", "TM") else _date_shaped(elem.value)
    if date_vr is not None and ctx.policy.temporal != "full" and not elem.is_empty:
        # A date in a safe private slot goes as a standard one would: shifted, or replaced by a dummy. Its VR
        # may be the private dictionary's LO (Implicit VR, or written as UN): a value shaped as a date counts.
        shifted = ctx.policy.temporal == "modified"
        ctx.counts["K"] -= 1
        ctx.counts["C" if shifted else "D"] += 1
        as_date = DataElement(tag, date_vr, elem.value)
        value = actions.clean_value(as_date, ctx) if shifted else actions.dummy_value(as_date, ctx)
        return DataElement(tag, elem.VR, value)
    return screened(src, copy.copy(elem), head_of(elem), ctx, top_level=False, private=True, raw=stored)


_DA_SHAPE = re.compile(r"(1[89]|2[01])\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])")
_DT_SHAPE = re.compile(r"(1[89]|2[01])\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])([01]\d|2[0-3])[0-5]\d"
                       r"([0-5]\d(\.\d{1,6})?)?([+-]\d{4})?")


def _date_shaped(value: object) -> str | None:
    """``DA`` or ``DT`` where a single text value is a date (YYYYMMDD) or a date-time in DICOM's form, else None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    return "DA" if _DA_SHAPE.fullmatch(text) else "DT" if _DT_SHAPE.fullmatch(text) else None


def _private_x(element: int) -> int:
    """How a removed private element counts under X: a Private Creator (gggg,0010-00FF) is not counted, it goes
    with its block."""
    return 1 if element >= 0x0100 or element < 0x0010 else 0


def scrub_dataset(src: Dataset, ctx: ScrubContext, mode: str = NORMAL, top_level: bool = True) -> Dataset:
    """A new Dataset holding the de-identified elements of ``src`` (whose values are left untouched).

    Private elements the reader left out (``private_left_out``, see :func:`deidpipe.dicomio.read_dataset`) are
    counted as removed, as they would have been."""
    out = Dataset()
    # Same encoding as the source, so that raw (kept) elements are written back without re-encoding; and an item
    # the character set it inherits from its parent, as pydicom's reader gave the source item (a new Dataset
    # would decode its raw text as ASCII/Latin-1, and be taken for re-encoded by the writer: pydicom's slow path).
    out.set_original_encoding(*src.original_encoding, src.original_character_set)
    out._parent_encoding = src._parent_encoding
    kept_blocks: set[tuple[int, int]] = set()
    removed_overlays: set[int] = set()
    safe_private = "RetainSafePrivate" in ctx.policy.options
    if top_level and (left_out := getattr(src, "private_left_out", None)):
        if safe_private:  # the reader was asked for them where they are not read: never written unscrubbed
            raise PolicyError("private elements were left out of an object whose policy keeps safe ones")
        # as the loop below counts them: group lengths not at all (dropped for every group), the rest by _private_x
        ctx.counts["X"] += sum(_private_x(t & 0xFFFF) for t in left_out if t & 0xFFFF)
    for tag in sorted(src._dict, key=int):  # key=int: BaseTag's own comparison is Python code
        t = int(tag)
        group, element = t >> 16, t & 0xFFFF
        if element == 0x0000:
            continue  # group lengths are retired and recomputed by nobody: drop them
        if group & 1:
            if not safe_private:  # the common case, decided without looking at the element
                ctx.counts["X"] += _private_x(element)
                continue
            new = _scrub_private(src, tag, ctx, mode, kept_blocks)
        else:
            new = scrub_element(src, tag, ctx, mode, top_level)
            if new is None and 0x6000 <= group <= 0x601E and element == 0x3000:
                removed_overlays.add(group)
        if new is None:
            continue
        if new.VR == "SQ":
            out[tag] = new  # Dataset.__setitem__ links the sequence to its parent (charset inheritance)
        else:
            out._dict[tag] = new  # plain elements: skip __setitem__'s bookkeeping, it is the hot path
    for group, block in kept_blocks:  # the Private Creator of every block something was kept from
        creator = src[(group << 16) | block]
        out.add(DataElement(creator.tag, creator.VR, creator.value))
    for group in removed_overlays:  # an overlay without its data is invalid: drop the whole plane
        for tag in [t for t in out.keys() if t.group == group]:
            del out[tag]
    return out
