"""Explain a policy: the effective action of every Table E.1-1 row and override (``deidpipe rules show``)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.datadict import keyword_for_tag
from pydicom.tag import Tag

from deidpipe.header.rules import COMPOUND_CODES, load_table
from deidpipe.policy import Policy, option_catalogue


@dataclass(frozen=True)
class EffectiveRule:
    """One line of the effective policy."""

    tag: str
    name: str
    basic: str
    effective: str
    source: str


def effective_rules(policy: Policy) -> list[EffectiveRule]:
    """Every row of the table with the action this policy takes, and why."""
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
            action = f"{action} (present: D or Z; absent: nothing)"
        out.append(EffectiveRule(row.tag, row.name, row.basic, action, source))
    for o in policy.overrides:
        if table.lookup(o.tag) is None:
            name = keyword_for_tag(o.tag) or "private/unknown"
            out.append(EffectiveRule(str(Tag(o.tag)), name, "-", o.action, "override"))
    out.append(EffectiveRule("(gggg,eeee) odd", "private attributes", "X",
                             "K if safe (TCIA KB)" if "RetainSafePrivate" in policy.options else "X",
                             "RetainSafePrivate" if "RetainSafePrivate" in policy.options else "basic profile"))
    return out
