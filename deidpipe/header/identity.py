"""The object's own identity, collected from the ORIGINAL data set at every nesting level.

What the free-text cleaning (action C) masks and the identity screen (:mod:`deidpipe.header.screen`) looks for
in every value that survives the policy:

- every person name anywhere (any PN value: Patient's Name, Other Patient Names, physicians, Operators' Name,
  observers, Verifying Observer Name, Person Name (0040,A123) of content-tree PNAME items, private PN elements):
  the whole name, each component group, each component and each word of a component;
- the whole values of the identifiers (Patient ID, Other Patient IDs, Issuer of Patient ID, telephone numbers...)
  and of the identifiers ``rules/identifiers.yaml`` lists (Accession Number, Study ID, Requested Procedure ID...),
  wherever they occur (an Other Patient IDs Sequence item, a Request Attributes Sequence item), and each word of
  four characters or more of them;
- institution names and addresses (whole values, and each comma- or line-separated part of an address);
- Patient's Birth Date in its common written forms (:func:`~deidpipe.header.text.date_variants`).

Which attributes these are is data: ``identity`` in ``rules/free_text.yaml``. A top-level attribute that the policy
keeps as it is (a keep override, or the option column that keeps it) is not collected: the policy says its value
may be released.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from deidpipe.dicomio.plainread import dictionary_vr, stored_vr
from deidpipe.errors import InvalidValueError
from deidpipe.header.text import DenyList, date_variants
from deidpipe.ruledata import load_rule_file

_ID, _PLACE, _DATE = "id", "place", "date"
#: Most distinct identifying strings an object may hold (an SR naming 300 people has about 2,000).
MAX_TERMS = 4096
TOO_MANY_TERMS = "object holds more identifying values than the identity screen takes"
_PARTS = re.compile(r"[,;\r\n]+")  # the lines of an address
_WORDS = re.compile(r"[\s,;]+")  # the words of an ID value ("MRN 12345, NHS 9434765919")
_DIGITS = re.compile(r"\d+")
_OID = re.compile(r"\d+(\.\d+)+")


@dataclass(frozen=True)
class IdentityRules:
    """``identity`` of ``rules/free_text.yaml``, with the identifiers of ``rules/identifiers.yaml``."""

    kinds: dict[int, str]  # tag -> id, place or date
    screened_vrs: frozenset[str]
    common_words: frozenset[str]


@cache
def identity_rules() -> IdentityRules:
    data = load_rule_file("free_text.yaml")["identity"]
    ids = load_rule_file("identifiers.yaml")
    kinds: dict[int, str] = {}
    for kind, keywords in ((_ID, data["ids"]), (_ID, list(ids["patient"]) + list(ids["value"])),
                           (_PLACE, data["places"]), (_DATE, data["dates"])):
        for kw in keywords:
            tag = tag_for_keyword(kw)
            if tag is not None and dictionary_vr(int(tag)) != "PN":  # PN values are names, whatever the keyword
                kinds[int(tag)] = kind
    return IdentityRules(kinds, frozenset(data["screened_vrs"]), frozenset(data["common_words"]))


def _strings(value: object) -> list[str]:
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(v).strip() for v in values if v not in (None, "", b"") and str(v).strip()]


_NAME_WORD = re.compile(r"\s+")  # words of a name component
_HYPHEN = re.compile(r"[\-\u2010\u2011]+")  # "Müller-Schmidt" is two words as well (a component without digits)
#: How German and Nordic names are written without their letters: "Müller" as "Mueller", "Jörg" as "Joerg".
_SPELLED_OUT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ø": "oe", "Ø": "Oe",
                              "å": "aa", "Å": "Aa"})
#: "ue" after a letter, as "Mueller" spells "Müller"; not a word's last two letters or before its last "l" (Chloe,
#: Michael, Samuel: names of their own).
_SPELLED = re.compile(r"(?<=[^\W\d_])([aou])e(?!l?\b)", re.IGNORECASE)


def spelling_variants(word: str) -> list[str]:
    """Other spellings of a name word that accent folding does not reach: "Müller" -> "Mueller"; "Mueller" ->
    "Muller" (which folding then matches with "Müller"); "Sørensen" -> "Soerensen"."""
    out = []
    spelled = word.translate(_SPELLED_OUT)
    if spelled != word:
        out.append(spelled)
    plain = _SPELLED.sub(r"\1", word)
    if plain != word and len(plain) >= 4:
        out.append(plain)
    return out


def _name_words(component: str) -> list[str]:
    """The words of a name component: split at spaces, and at hyphens where it holds no digit (a hyphenated
    surname, not a research pseudonym such as LIDC-IDRI-0001, whose pieces are everyone's)."""
    words = [w for w in _NAME_WORD.split(component) if w]
    if any(c.isdigit() for c in component):
        return words
    out = []
    for word in words:
        parts = [x for x in _HYPHEN.split(word) if x]
        out += [word, *parts] if len(parts) >= 2 else [word]
    return out


def name_terms(value: str) -> tuple[list[str], list[str]]:
    """The terms of one PN value (whole name, groups, components, words, given-family orders, the other
    spellings of its words) and its parts (every word of every component, however short)."""
    terms, parts = [value], []
    for group in value.split("="):
        comps = [c.strip() for c in group.split("^") if c.strip()]
        words = [w for c in comps for w in _name_words(c)]
        terms += comps + words + [v for w in words for v in spelling_variants(w)]
        parts += words
        if len(comps) >= 2:
            terms += [" ".join(comps), f"{comps[1]} {comps[0]}", " ".join(comps[1:] + comps[:1])]
    return terms, parts


def _value_terms(kind: str, value: str) -> list[str]:
    if kind == _DATE:
        return date_variants(value)
    if kind == _PLACE:
        return [value, *(p.strip() for p in _PARTS.split(value) if p.strip())]
    words = [w for w in _WORDS.split(value) if len(w) >= 4]
    if _OID.fullmatch(value.strip()):  # an issuer's OID: its arcs are everyone's ("113883" is HL7's)
        return [value, *words]
    # The number inside an ID ("QX7734521" -> "7734521", "0007734521" -> "7734521"): written without its
    # letters or zeros elsewhere. Seven digits at least: shorter runs are versions, codes and counts.
    digits = [d for run in _DIGITS.findall(value) for d in dict.fromkeys((run, run.lstrip("0")))
              if len(d) >= 7 and d != value]  # dict, not set: the same terms in the same order in every process
    return [value, *words, *digits]


#: Tag group of the Patient module's attributes (names, IDs, birth date, address, telephone numbers).
PATIENT_GROUP = 0x0010
#: The deny-list's groups, each compiled apart (:class:`~deidpipe.header.text.DenyList`): what changes from
#: object to object changes in one small group. The patient's own terms stay for every object of a patient,
#: places for a site; other people's names (physicians, operators) change by study or series, and identifiers
#: and dates (accession numbers, procedure step IDs) by study.
GROUPS = ("patient", "places", "names", "ids")


def _group(tag: int, vr: str, kind: str | None) -> str:
    if tag >> 16 == PATIENT_GROUP:
        return "patient"
    if vr == "PN":
        return "names"
    return "places" if kind == _PLACE else "ids"


def _collect(ds: Dataset, skip: frozenset[int], kinds: dict[int, str], groups: dict[str, list[str]],
             parts: list[str]) -> None:
    """Terms into ``groups`` (see :data:`GROUPS`) and name parts into ``parts``, at every level of ``ds``."""
    for tag, stored in ds._dict.items():
        t = int(tag)
        vr = stored_vr(stored)
        kind = kinds.get(t)
        if (vr != "SQ" and vr != "PN" and kind is None) or t in skip:
            continue
        try:
            value = ds[tag].value
        except Exception:  # noqa: BLE001 - an undecodable value: the walk refuses the object where it matters
            continue
        if vr == "SQ":
            for item in value or ():
                _collect(item, frozenset(), kinds, groups, parts)
            continue
        into = groups[_group(t, vr, kind)]
        if vr == "PN":
            for s in _strings(value):
                t_, p_ = name_terms(s)
                into += t_
                parts += p_
        elif kind is not None:
            for s in _strings(value):
                into += _value_terms(kind, s)


def _collect_groups(ds: Dataset, skip: Iterable[int]) -> tuple[dict[str, list[str]], list[str]]:
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    parts: list[str] = []
    _collect(ds, frozenset(skip), identity_rules().kinds, groups, parts)
    return groups, parts


def identity_denylist(ds: Dataset, skip: Iterable[int] = (), extra_terms: Iterable[str] = ()) -> DenyList:
    """One compiled matcher for the object's identity, its terms in :data:`GROUPS` compiled apart (each cached on
    its terms: a patient's objects share the first, a study's most of the rest).
    An object that names more than :data:`MAX_TERMS` distinct identifying strings (a hostile file with thousands
    of PN values) is refused rather than screened: compiling them would take seconds to minutes. ``extra_terms``:
    more of the object's values to match (scan's report paths add its dates)."""
    groups, parts = _collect_groups(ds, skip)
    groups["ids"] += extra_terms
    sets, seen = [], frozenset[str]()
    for g in GROUPS:  # a term in two groups is matched by the first only
        terms = frozenset(groups[g]) - seen
        sets.append(terms)
        seen |= terms
    if len(seen) > MAX_TERMS:
        raise InvalidValueError(None, TOO_MANY_TERMS)
    return DenyList.from_groups(sets, parts, identity_rules().common_words)


@cache
def identity_tags() -> frozenset[int]:
    """The tags whose values are collected by kind (names are collected from any PN)."""
    return frozenset(identity_rules().kinds)
