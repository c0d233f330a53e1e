"""Explain a policy: the effective action of every Table E.1-1 row and override (``deidpipe rules show``)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.datadict import keyword_for_tag
from pydicom.tag import Tag
from pydicom.uid import UID_dictionary

from deidpipe.errors import PolicyError
from deidpipe.policy import Policy, option_catalogue
from deidpipe.ruledata import COMPOUND_CODES, IODAttributes, iod_for_sop_class, load_table, resolve_compound


@dataclass(frozen=True)
class EffectiveRule:
    """One line of the effective policy."""

    tag: str
    name: str
    basic: str
    effective: str
    source: str


def sop_class_uid(spec: str) -> str:
    """A SOP Class UID from a UID or its name ("CT Image Storage"), matched case-insensitively."""
    spec = spec.strip()
    if spec in UID_dictionary:
        return spec
    for uid, entry in UID_dictionary.items():
        if entry[0].lower() == spec.lower():
            return uid
    raise PolicyError(f"unknown SOP class {spec!r}: give a UID or a name such as 'CT Image Storage'")


def _compound(action: str, iod: IODAttributes | None, tag: int) -> str:
    """How a compound code resolves for a top-level attribute of the IOD (or without one)."""
    if iod is None:
        return f"{action} (present: D or Z; absent: nothing)"
    t = iod.top.get(tag) if tag >= 0 else None
    resolved = resolve_compound(action, present_and_nonempty=True, is_sequence=False, iod_type=t,
                                in_known_iod=True)
    return f"{action} -> {resolved} ({'Type ' + t if t else 'not'} in {iod.name})"


def effective_rules(policy: Policy, sop_class: str | None = None) -> list[EffectiveRule]:
    """Every row of the table with the action this policy takes, and why; with a SOP class, compound
    codes are resolved by the attribute's Type in that class's IOD."""
    iod = iod_for_sop_class(sop_class_uid(sop_class)) if sop_class else None
    cat = option_catalogue()
    by_column = {v["column"]: name for name, v in cat.items()}
    table = load_table()
    out: list[EffectiveRule] = []
    rows = sorted(list(table.by_tag.items()) + [(-1, p[-1]) for p in table.patterns], key=lambda r: r[1].tag)
    for tag, row in rows:
        action = row.action(policy.option_columns)
        source = "deidpipe addition" if row.addition else "basic profile"
        if action != row.basic:
            source = ", ".join(by_column[c] for c in policy.option_columns if c in row.options)
        override = policy.override_map.get(tag) if tag >= 0 else None
        if override is not None:
            action, source = override.action + (f" {override.value!r}" if override.value else ""), "override"
        if action in COMPOUND_CODES:
            action = _compound(action, iod, tag)
        out.append(EffectiveRule(row.tag, row.name, row.basic, action, source))
    for o in policy.overrides:
        if table.lookup(o.tag) is None:
            name = keyword_for_tag(o.tag) or "private/unknown"
            out.append(EffectiveRule(str(Tag(o.tag)), name, "-", o.action, "override"))
    out.append(EffectiveRule("(gggg,eeee) odd", "private attributes", "X",
                             "K if safe (TCIA KB)" if "RetainSafePrivate" in policy.options else "X",
                             "RetainSafePrivate" if "RetainSafePrivate" in policy.options else "basic profile"))
    return out
