"""Per-object state of one de-identification: the key, the policy, the patient's pseudonym and date shift."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from deidpipe.header.rules import (
    IODAttributes,
    RuleTable,
    SafePrivate,
    iod_for_sop_class,
    load_safe_private,
    load_table,
)
from deidpipe.header.text import DenyList, date_variants
from deidpipe.keys import ProjectKey
from deidpipe.policy import Policy

# Attributes whose original values make up the object's deny-list (screening) and residual check.
IDENTITY_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "AccessionNumber", "IssuerOfPatientID", "PatientAddress",
    "PatientTelephoneNumbers", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
    "RequestingPhysician", "StudyID", "MedicalRecordLocator", "PatientBirthDate",
)
RESIDUAL_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthName")


def _strings(ds: Dataset, keyword: str) -> list[str]:
    tag = tag_for_keyword(keyword)
    # Membership by the tag number in the element dict: ``keyword in ds`` converts the keyword on every call.
    elem = ds[tag] if tag is not None and tag in ds._dict else None
    if elem is None or elem.value in (None, "", b""):
        return []
    values = elem.value if isinstance(elem.value, list | tuple) or elem.VM > 1 else [elem.value]
    return [str(v) for v in values if v not in (None, "")]


def identity_terms(ds: Dataset, keywords: tuple[str, ...] = IDENTITY_KEYWORDS, *, words: bool = True) -> list[str]:
    """The object's identifying strings: whole values, name components (and, with ``words``, each word of a
    component), and the usual spellings of dates."""
    terms: list[str] = []
    for kw in keywords:
        for s in _strings(ds, kw):
            if kw == "PatientBirthDate":
                terms += date_variants(s)
                continue
            terms.append(s)
            if "^" in s or "=" in s:  # PN: each group, each component, each word of a component
                for group in s.split("="):
                    comps = [c for c in group.split("^") if c.strip()]
                    terms += comps
                    if words:
                        terms += [w for c in comps for w in c.split()]
                    if len(comps) >= 2:
                        terms += [f"{comps[1]} {comps[0]}", f"{comps[0]} {comps[1]}", f"{comps[0]}, {comps[1]}"]
    return terms


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
    denylist: DenyList
    use_model: bool
    iod: IODAttributes | None = None  # the object's IOD, when the SOP class is known
    counts: Counter[str] = field(default_factory=Counter)
    #: (element head, walk mode, top level) -> (action, set value, identifier kind). The decision is a pure
    #: function of those, the policy and the IOD, so objects of one SOP class under one policy share it.
    decisions: dict[tuple[Any, ...], tuple[str, Any, str | None]] = field(default_factory=dict)

    @classmethod
    def for_dataset(cls, ds: Dataset, policy: Policy, key: ProjectKey) -> ScrubContext:
        pkey = patient_key(ds)
        sop_class = sop_class_of(ds)
        return cls(
            key=key,
            policy=policy,
            table=load_table(),
            safe_private=load_safe_private(),
            patient_token=key.token("patient", pkey, 16),
            shift_days=key.date_shift_days(pkey),
            denylist=DenyList.from_terms(identity_terms(ds)),
            use_model=policy.text_screening == "presidio",
            iod=iod_for_sop_class(sop_class),
            decisions=_shared_decisions(policy, sop_class),
        )


@lru_cache(maxsize=64)
def _shared_decisions(policy: Policy, sop_class: str) -> dict[tuple[Any, ...], tuple[str, Any, str | None]]:
    """One decision cache per (policy, SOP class): the rule table is fixed, the IOD follows the SOP class."""
    return {}
