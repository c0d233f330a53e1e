"""The scan's rules: stable ids, severities and fixed messages (a message never quotes a value).

A finding names its rule by id (``DP-H001`` ...); ids are never reused or renumbered, so a CI system can suppress
or track one. ``docs/scan.md`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("info", "low", "medium", "high")
RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    severity: str  # the default severity; a finding may raise or lower it (e.g. a name vs a number)
    meaning: str


_RULES = [
    Rule("DP-H001", "removed-attribute-present", "high",
         "An attribute that the policy removes or empties (X, Z) carries a value."),
    Rule("DP-H002", "replaced-attribute-not-pseudonymised", "high",
         "An attribute that the policy replaces (D dummy, keyed pseudonym) holds a value that is neither a dummy "
         "nor a pseudonym."),
    Rule("DP-H003", "private-element-not-safe", "high",
         "A private element outside the safe list (creator-qualified, TCIA knowledge base)."),
    Rule("DP-H004", "private-element-safe-not-retained", "low",
         "A private element on the safe list, but the policy does not retain safe private elements."),
    Rule("DP-H005", "uid-not-pseudonymised", "medium",
         "An instance UID that does not look pseudonymised (not under the 2.25 root)."),
    Rule("DP-H006", "date-not-removed-or-shifted", "high",
         "A date or time that the policy removes or shifts is present unchanged."),
    Rule("DP-H007", "patient-identity-removed-missing", "medium",
         "Patient Identity Removed (0012,0062) is missing or not YES."),
    Rule("DP-H008", "deidentification-method-inconsistent", "low",
         "De-identification Method (0012,0063) or its Code Sequence (0012,0064) is missing or does not match "
         "Patient Identity Removed / the policy."),
    Rule("DP-H009", "burned-in-annotation-yes", "high",
         "Burned In Annotation (0028,0301) is YES: the object says its pixels carry text."),
    Rule("DP-H010", "known-identity-in-header", "high",
         "A name, ID or birth date from --known-identities occurs in a header value."),
    Rule("DP-H011", "file-meta-identifying", "high",
         "The File Meta Information holds an element that can identify the source (AE title, private "
         "information)."),
    Rule("DP-H012", "longitudinal-temporal-inconsistent", "medium",
         "The policy shifts dates but Longitudinal Temporal Information Modified (0028,0303) does not say "
         "MODIFIED."),
    Rule("DP-H013", "phi-in-free-text", "medium",
         "presidio-analyzer finds a name, date, place or number in free text the policy keeps or cleans "
         "(--presidio)."),
    Rule("DP-P001", "burned-in-text", "high", "Text was found in the pixel data (box, frame)."),
    Rule("DP-P002", "known-identity-in-pixels", "high",
         "A name, ID or birth date from --known-identities was read in the pixel data."),
    Rule("DP-P003", "pixels-unchecked", "medium",
         "The pixel data cannot be decoded, so burned-in text was not looked for."),
    Rule("DP-F001", "face-visible", "high", "A head volume whose surface render still shows a face."),
    Rule("DP-R001", "reidentification-risk", "medium",
         "Records at prosecutor risk above the threshold (quasi-identifier table)."),
    Rule("DP-E001", "unreadable-object", "high",
         "An object that looks like DICOM but cannot be read, so it cannot be checked."),
]

RULES: dict[str, Rule] = {r.id: r for r in _RULES}


def severity_at_least(severity: str, threshold: str) -> bool:
    return RANK[severity] >= RANK[threshold]
