"""Per-object state of one de-identification: the key, the policy, the patient's pseudonym and date shift."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from deidpipe.dicomio.plainread import dictionary_vr
from deidpipe.header.identity import identity_denylist, identity_tags
from deidpipe.header.text import DenyList
from deidpipe.keys import ProjectKey
from deidpipe.policy import Policy
from deidpipe.ruledata import (
    IODAttributes,
    RuleTable,
    SafePrivate,
    iod_for_sop_class,
    load_safe_private,
    load_table,
)


def _strings(ds: Dataset, keyword: str) -> list[str]:
    tag = tag_for_keyword(keyword)
    # Membership by the tag number in the element dict: ``keyword in ds`` converts the keyword on every call.
    elem = ds[tag] if tag is not None and tag in ds._dict else None
    if elem is None or elem.value in (None, "", b""):
        return []
    values = elem.value if isinstance(elem.value, list | tuple) or elem.VM > 1 else [elem.value]
    return [str(v) for v in values if v not in (None, "")]


@lru_cache(maxsize=64)
def kept_identity(policy: Policy) -> frozenset[int]:
    """The identity attributes (any PN, and those :mod:`~deidpipe.header.identity` collects) that the policy
    keeps as they are at the top level: a keep override, or a Table E.1-1 row whose action under the
    enabled options is K (RetainInstitutionIdentity keeps Institution Name). Their values are not looked for,
    and they are not screened: the policy says they may go out. One set per policy."""
    kinds = identity_tags()
    table = load_table()
    out = {tag for tag, row in table.by_tag.items()
           if (tag in kinds or dictionary_vr(tag) == "PN") and row.action(policy.option_columns) == "K"}
    for tag, override in policy.override_map.items():
        if tag in kinds or dictionary_vr(tag) == "PN":
            if override.action == "K":  # a set replaces the value: the original never goes out, so it is screened
                out.add(tag)
            else:
                out.discard(tag)
    return frozenset(out)


def sop_class_of(ds: Dataset) -> str:
    """SOP Class UID (0008,0016), else the File Meta's Media Storage SOP Class UID (0002,0002), else ''."""
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else "") or "")


def patient_key(ds: Dataset) -> str:
    """What identifies the patient for pseudonyms and date shifts: Patient ID, else name, else the study."""
    for kw in ("PatientID", "PatientName", "StudyInstanceUID"):
        s = _strings(ds, kw)
        if s and s[0].strip():
            return f"{kw}:{s[0].strip()}"
    return "unknown"


@dataclass
class ScrubContext:
    """Everything the actions need for one object; built by :meth:`for_dataset`."""

    key: ProjectKey
    policy: Policy
    table: RuleTable
    safe_private: SafePrivate
    patient_token: str
    shift_days: int
    denylist: DenyList  # the object's identity (:func:`~deidpipe.header.identity.identity_denylist`)
    use_model: bool
    iod: IODAttributes | None = None  # the object's IOD, when the SOP class is known
    #: top-level identity attributes the policy keeps as they are: not screened (see :func:`kept_identity`)
    exempt: frozenset[int] = frozenset()
    counts: Counter[str] = field(default_factory=Counter)
    #: (element head, walk mode, top level) -> (action, set value, identifier kind). The decision is a pure
    #: function of those, the policy and the IOD, so objects of one SOP class under one policy share it.
    decisions: dict[tuple[Any, ...], tuple[str, Any, str | None]] = field(default_factory=dict)

    @classmethod
    def for_dataset(cls, ds: Dataset, policy: Policy, key: ProjectKey) -> ScrubContext:
        pkey = patient_key(ds)
        sop_class = sop_class_of(ds)
        exempt = kept_identity(policy)
        return cls(
            key=key,
            policy=policy,
            table=load_table(),
            safe_private=load_safe_private(),
            patient_token=key.token("patient", pkey, 16),
            shift_days=key.date_shift_days(pkey),
            denylist=identity_denylist(ds, exempt),
            use_model=policy.text_screening == "presidio",
            iod=iod_for_sop_class(sop_class),
            decisions=shared_decisions(policy, sop_class),
            exempt=exempt,
        )


@lru_cache(maxsize=64)
def shared_decisions(policy: Policy, sop_class: str) -> dict[tuple[Any, ...], tuple[str, Any, str | None]]:
    """One decision cache per (policy, SOP class): the rule table is fixed, the IOD follows the SOP class."""
    return {}
