"""The rule data: Table E.1-1 and the other files in ``rules/``, loaded once and turned into per-tag actions.

One loader for every stage that reads ``rules/`` (the policy's options, the header engine's tables, the pixel
stage's burned-in text regions, ``scan``'s checks); it depends on no stage, so none of them depends on another
through it.

Action codes are those of PS3.15 Table E.1-1:

=====  ===========================================================================================
``D``  replace with a non-zero-length dummy value consistent with the VR
``Z``  replace with a zero-length value (or a dummy, where the attribute must stay non-empty)
``X``  remove
``K``  keep (non-sequence attributes); a kept sequence still has its items processed
``C``  clean: keep the value with identifying information removed (text screened, dates shifted)
``U``  replace a UID with a keyed non-zero-length UID, the same for the same input everywhere
=====  ===========================================================================================

Compound codes (``Z/D``, ``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*``) name a choice the standard leaves to the
implementation, by the attribute's Type in the IOD. deidpipe resolves them without IOD tables by keeping the
attribute's *presence* and dropping its *content*; see :func:`resolve_compound`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydicom.datadict import tag_for_keyword

from deidpipe.errors import PolicyError

ACTION_CODES = ("D", "Z", "X", "K", "C", "U")
COMPOUND_CODES = ("Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*")


def rules_dir() -> Path:
    """The ``rules/`` folder: beside the package in a checkout, inside it in an installed wheel."""
    here = Path(__file__).resolve().parent  # the deidpipe package
    for candidate in (here.parent / "rules", here / "_rules"):
        if (candidate / "ps315_table_e1_1.json").is_file():
            return candidate
    raise PolicyError("rules/ folder not found beside or inside the deidpipe package")


@cache
def load_rule_file(name: str) -> Any:
    """Parse one file of ``rules/`` (JSON or YAML), cached for the life of the process."""
    path = rules_dir() / name
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


@dataclass(frozen=True)
class TableRow:
    """One row of Table E.1-1: a single tag, or a group pattern such as ``(60XX,3000)``."""

    tag: str
    name: str
    basic: str
    options: dict[str, str]
    addition: bool = False  # deidpipe's own row (rules/additions.yaml), not part of Table E.1-1

    def action(self, option_columns: frozenset[str]) -> str:
        """The row's action under the enabled option columns.

        Options only ever make the profile less destructive, so when two apply, a keep (``K``) wins over a
        clean (``C``), which wins over the Basic Profile's action.
        """
        chosen = [self.options[c] for c in option_columns if c in self.options]
        if "K" in chosen:
            return "K"
        if "C" in chosen:
            return "C"
        return self.basic


_PATTERN = re.compile(r"^\(([0-9A-FX]{4}),([0-9A-FX]{4})\)$")


@dataclass(frozen=True)
class RuleTable:
    """Table E.1-1 indexed by tag, with the few group patterns (50xx curves, 60xx overlays) kept apart."""

    by_tag: dict[int, TableRow]
    patterns: tuple[tuple[int, int, int, int, TableRow], ...]  # (group mask, group, elem mask, elem, row)
    edition: dict[str, str]

    def lookup(self, tag: int) -> TableRow | None:
        """The row that governs ``tag``, or None when the table does not list it."""
        row = self.by_tag.get(tag)
        if row is not None:
            return row
        group, elem = tag >> 16, tag & 0xFFFF
        for gmask, gval, emask, evalue, prow in self.patterns:
            if group & gmask == gval and elem & emask == evalue:
                return prow
        return None

    def __len__(self) -> int:
        return len(self.by_tag) + len(self.patterns)


@cache
def load_table() -> RuleTable:
    """Load ``rules/ps315_table_e1_1.json`` (built by ``scripts/build_rules.py``)."""
    data = load_rule_file("ps315_table_e1_1.json")
    by_tag: dict[int, TableRow] = {}
    patterns = []
    for r in data["rows"]:
        row = TableRow(tag=r["tag"], name=r["name"], basic=r["basic"], options=r["options"])
        m = _PATTERN.match(row.tag)
        if not m:
            continue  # "(GGGG,EEEE) WHERE GGGG IS ODD": private attributes, handled by header.private
        g, e = m.groups()
        if "X" in g or "X" in e:
            gmask = int("".join("0" if c == "X" else "F" for c in g), 16)
            emask = int("".join("0" if c == "X" else "F" for c in e), 16)
            patterns.append((gmask, int(g.replace("X", "0"), 16), emask, int(e.replace("X", "0"), 16), row))
        else:
            by_tag[int(g + e, 16)] = row
    for add in load_rule_file("additions.yaml"):
        tag = int(tag_for_keyword(add["keyword"]))
        by_tag.setdefault(tag, TableRow(tag=f"({tag >> 16:04X},{tag & 0xFFFF:04X})", name=add["keyword"],
                                        basic=add["action"], options={}, addition=True))
    return RuleTable(by_tag=by_tag, patterns=tuple(patterns), edition=data["edition"])


def resolve_compound(code: str, *, present_and_nonempty: bool, is_sequence: bool,
                     iod_type: str | None = None, in_known_iod: bool = False) -> str:
    """Choose one action for a compound code (or a plain X on a required attribute) so that the output stays
    valid for its IOD.

    The standard's rule: X where the attribute is Type 3 in the object's IOD, Z where Type 2, D where Type 1.
    For a top-level attribute of a SOP class that ``rules/iod_attributes.json`` knows, that is what happens
    (``iod_type`` is its Type; an attribute that is not part of the IOD at all is removed when X is allowed).

    Elsewhere (inside sequences, or unknown SOP classes) deidpipe keeps the attribute's *presence* and drops
    its *content*, which is valid whatever the Type:

    - ``X/Z/U*``: the sequence stays, its items are processed (every UID inside mapped) -> ``U``;
    - a sequence under ``X/D``, ``X/Z/D`` or ``Z/D`` keeps its items in dummy mode -> ``D``; under ``X/Z``
      it keeps its items -> ``K`` (an empty sequence would be invalid where the attribute is Type 3); either
      way the items' own attributes follow their own rows, so nothing identifying survives;
    - an empty input value stays empty -> ``Z``;
    - a non-empty value becomes a dummy when the code allows ``D`` (valid even for Type 1), else empty (``Z``).
    """
    if code == "X" and in_known_iod and iod_type is not None and not is_sequence:
        # A plain X on an attribute the object's own IOD requires (e.g. Presentation Creation Date, Type 1 in
        # every presentation state) would leave an invalid object: it gets a dummy (Type 1) or an empty value
        # (Type 2) instead. Neither carries anything of the original; Type 3 attributes are removed as listed.
        if iod_type in ("1", "1C"):
            return "D"
        if iod_type in ("2", "2C"):
            return "Z"
    if code not in COMPOUND_CODES:
        return code
    if code == "X/Z/U*":
        return "U"
    if in_known_iod:
        if iod_type is None or iod_type == "3":
            if "X" in code:
                return "X"
        elif iod_type in ("2", "2C"):
            if "Z" in code:
                return "Z"
        elif "D" in code:  # Type 1 or 1C
            return "D"
    if is_sequence:
        return "D" if "D" in code else "K"
    if not present_and_nonempty:
        return "Z"
    return "D" if "D" in code else "Z"


@dataclass(frozen=True)
class SafePrivate:
    """Creator-qualified private elements that the Retain Safe Private option may keep."""

    keys: frozenset[tuple[int, str, int]]  # (group, creator lower-cased and stripped, element byte)
    creators: frozenset[str] = frozenset()  # every creator the knowledge base names, lower-cased and stripped

    def is_safe(self, group: int, creator: str, element_byte: int) -> bool:
        return (group, creator.strip().lower(), element_byte) in self.keys

    def knows_creator(self, creator: str) -> bool:
        """Whether the knowledge base names this Private Creator (a vendor's label, so safe to print)."""
        return creator.strip().lower() in self.creators


@cache
def load_safe_private() -> SafePrivate:
    """Load ``rules/safe_private.json`` (TCIA private tag knowledge base, disposition keep)."""
    data = load_rule_file("safe_private.json")
    keys = frozenset(
        (int(e["group"], 16), e["creator"].strip().lower(), int(e["element"], 16)) for e in data["entries"]
    )
    return SafePrivate(keys, frozenset(c.strip().lower() for c in data.get("creators", [])))


@dataclass(frozen=True)
class IODAttributes:
    """The attributes of one IOD (``rules/iod_attributes.json``): top-level Types and every nested tag."""

    name: str
    top: dict[int, str]  # tag -> Type (1, 1C, 2, 2C, 3) of the IOD's top-level attributes
    nested: frozenset[int]  # tags that occur inside the IOD's sequences

    def __contains__(self, tag: int) -> bool:
        return tag in self.top or tag in self.nested


_TYPE_RANK = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}


@cache
def iod_for_sop_class(sop_class_uid: str) -> IODAttributes | None:
    """The IOD of a SOP class, or None when the tables do not know it (private or newer SOP classes)."""
    data = load_rule_file("iod_attributes.json")
    iod_id = data["sop_classes"].get(str(sop_class_uid).strip())
    if iod_id is None:
        return None
    iod = data["iods"][iod_id]
    top: dict[int, str] = {}
    nested: set[int] = set()
    for module in iod["modules"]:
        entry = data["modules"].get(module, {"top": {}, "nested": []})
        for tag, t in entry["top"].items():
            key = int(tag, 16)
            if key not in top or _TYPE_RANK[t] < _TYPE_RANK[top[key]]:
                top[key] = t
        nested.update(int(tag, 16) for tag in entry["nested"])
    for macro in iod["macros"]:  # functional groups live inside (5200,9229)/(5200,9230) items
        entry = data["macros"].get(macro, {"top": {}, "nested": []})
        nested.update(int(tag, 16) for tag in entry["top"])
        nested.update(int(tag, 16) for tag in entry["nested"])
    return IODAttributes(iod["name"], top, frozenset(nested))
