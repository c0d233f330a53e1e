"""Policy: the profile, its options and the user's overrides, resolved against ``rules/``.

A policy is plain, frozen data (it travels to worker processes and Dask workers), built in Python::

    Policy.basic(options=["RetainLongModifiedDates", "CleanDescriptors"])

or from a YAML file (``Policy.load("policy.yaml")``)::

    profile: basic
    options: [RetainLongModifiedDates, CleanDescriptors]
    strict: false                 # true: keep only the allow-list (see docs/header.md)
    text_screening: presidio      # presidio (default) or denylist (the object's own identifiers only)
    pixels: auto                  # burned-in text: auto (default), all or off; see docs/pixels.md
    pixel_redaction: all-text     # all-text (default) or phi
    pixel_detector: lines         # lines (default: letters chained by their strokes) or ocr (CRAFT on every region)
    allow_incomplete_pixels: false  # true: write objects whose pixel data is cut short, the reason in the audit
    deface: auto                  # head MR/CT series: auto (default), all or off; see docs/deface.md
    deface_ears: true             # remove the ears with the face (default); false: the face only
    documents: skip               # encapsulated PDF/CDA/...: skip (default, not written) or redact; docs/documents.md
    keep: [SeriesDescription]     # shorthand for action K
    remove: ["(0008,1030)"]       # shorthand for action X
    overrides:
      - {tag: PatientComments, action: C}
      - {tag: "(0012,0071)", action: set, value: "TRIAL-01"}
    deid_recipes: [my.deid]       # pydicom/deid recipe files; their %header actions become overrides
    reversible:
      recipients: [broker.crt]    # certificates for the Encrypted Attributes Sequence
    risk_target:                  # generalise the archive's quasi-identifiers to a risk target; docs/risk.md
      max_risk: 0.2               # or k: 5, or average_risk: 0.05; model: prosecutor (default)
      suppression: 0.05           # share of patients that may be set aside ("suppressed for risk")
      hierarchies: {age: "5,10,*"}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml
from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.tag import Tag

from deidpipe.errors import PolicyError
from deidpipe.ruledata import ACTION_CODES, load_rule_file

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.risk.target import ArchiveTarget

OVERRIDE_ACTIONS = (*ACTION_CODES, "set")
TextScreening = Literal["presidio", "denylist"]
PixelSelection = Literal["auto", "all", "off"]
PixelRedaction = Literal["all-text", "phi"]
PixelDetector = Literal["lines", "ocr"]
DefaceSelection = Literal["auto", "all", "off"]
DocumentHandling = Literal["skip", "redact"]
#: The policy's settings that take one of a few words: field -> the words (from the Literal types above).
CHOICES: dict[str, tuple[str, ...]] = {
    "text_screening": get_args(TextScreening),
    "pixels": get_args(PixelSelection),
    "pixel_redaction": get_args(PixelRedaction),
    "pixel_detector": get_args(PixelDetector),
    "deface": get_args(DefaceSelection),
    "documents": get_args(DocumentHandling),
}


def _flag(data: dict[str, Any], key: str) -> bool:
    """A yes/no policy key: YAML's true/false only (a quoted "false" would be truthy; refuse it)."""
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise PolicyError(f"{key} must be true or false")
    return value


def option_catalogue() -> dict[str, dict[str, str]]:
    """Option name -> {column, code, meaning}, from ``rules/options.yaml``."""
    return load_rule_file("options.yaml")["options"]


def parse_tag(spec: str | int) -> int:
    """A tag from a keyword (``PatientName``), ``(0010,0010)``, ``0010,0010``, ``00100010`` or an int."""
    if isinstance(spec, int):
        return spec
    s = str(spec).strip()
    if s in keyword_dict:
        return int(tag_for_keyword(s))
    digits = s.strip("()").replace(",", "").replace(" ", "")
    if len(digits) == 8:
        try:
            return int(Tag(int(digits, 16)))
        except ValueError:
            pass
    raise PolicyError(f"not a DICOM keyword or tag: {s!r}")


@dataclass(frozen=True)
class Override:
    """A user's action for one attribute, applied after the profile and its options."""

    tag: int
    action: str
    value: str | None = None  # for action "set": the literal value written

    def __post_init__(self) -> None:
        if self.action not in OVERRIDE_ACTIONS:
            raise PolicyError(f"override action must be one of {', '.join(OVERRIDE_ACTIONS)}")
        if self.action == "set" and self.value is None:
            raise PolicyError(f"override 'set' for {Tag(self.tag)} needs a value")


@dataclass(frozen=True)
class Policy:
    """What de-identification does to every object: the Basic Profile, options, overrides, strictness.

    Attributes:
        options: names from ``rules/options.yaml`` (``RetainSafePrivate``, ``RetainUIDs``, ...).
        overrides: per-attribute actions that win over the profile (later ones win over earlier).
        additions: attributes added when absent (``Override`` with action "set"), e.g. from deid ``ADD``.
        strict: keep only the allow-list of ``rules/strict_allow.yaml`` plus explicit keeps.
        text_screening: ``presidio`` (NER + patterns + the object's own identifiers) or ``denylist``.
        recipients: certificate paths; when set, original values go into the Encrypted Attributes Sequence.
        pixels: burned-in text: ``auto`` (text-likely images and any where a cheap screen fires), ``all``, ``off``.
        pixel_redaction: ``all-text`` (every detected text box) or ``phi`` (identifying words only).
        pixel_detector: how ``all-text`` finds text: ``lines`` (classical line finder, OCR only for short
            chains) or ``ocr`` (the CRAFT detector on every candidate region; slower).
        allow_incomplete_pixels: write an object whose pixel data is missing or shorter than its header declares
            (see :mod:`deidpipe.dicomio.completeness`) instead of quarantining it; the audit counts it under the action
            ``incomplete_pixels``. Off by default: a steward should not receive an image without its image.
        deface: which MR and CT series lose their face (:mod:`deidpipe.deface.select`): ``auto`` (series of the
            head by Body Part Examined and descriptions, and any that say nothing of their region), ``all`` (every
            MR and CT image series), ``off``.
        deface_ears: remove the ears together with the face (default, as UK Biobank does); False: the face only.
        documents: encapsulated documents (Encapsulated PDF, CDA, STL, OBJ, MTL; Encapsulated Document
            (0042,0011)): ``skip`` (not written, audited as skipped) or ``redact`` (PDF and CDA rewritten with
            only their screened text, see :mod:`deidpipe.documents`; other formats skipped).
    """

    options: frozenset[str] = frozenset()
    overrides: tuple[Override, ...] = ()
    additions: tuple[Override, ...] = ()
    strict: bool = False
    text_screening: TextScreening = "presidio"
    recipients: tuple[str, ...] = ()
    pixels: PixelSelection = "auto"
    pixel_redaction: PixelRedaction = "all-text"
    pixel_detector: PixelDetector = "lines"
    allow_incomplete_pixels: bool = False
    deface: DefaceSelection = "auto"
    deface_ears: bool = True
    #: Encapsulated documents are not written unless the policy asks for their redaction (docs/documents.md).
    documents: DocumentHandling = "skip"
    #: A re-identification risk the release must meet (:class:`deidpipe.risk.target.ArchiveTarget`): ``run``
    #: generalises the header quasi-identifiers per patient and suppresses the patients still at risk.
    risk_target: ArchiveTarget | None = None
    profile: str = "basic"
    source: str = field(default="built-in", compare=False)

    def __post_init__(self) -> None:
        if self.profile != "basic":
            raise PolicyError("the only profile is 'basic' (PS3.15 E.1); options refine it")
        known = option_catalogue()
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise PolicyError(f"unknown option(s) {unknown}; known: {sorted(known)}")
        if {"RetainLongFullDates", "RetainLongModifiedDates"} <= set(self.options):
            raise PolicyError("choose one of RetainLongFullDates and RetainLongModifiedDates")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                quoted = [f"'{value}'" for value in allowed]
                raise PolicyError(f"{name} must be {', '.join(quoted[:-1])} or {quoted[-1]}")

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def basic(cls, options: Iterable[str] = (), **kwargs: Any) -> Policy:
        """The Basic Profile with the named options."""
        return cls(options=frozenset(options), **kwargs)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a YAML policy file (relative recipe and certificate paths are taken from its folder)."""
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PolicyError(f"cannot read policy {p}: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise PolicyError(f"policy {p} must be a mapping")
        return cls.from_mapping(data, base_dir=p.parent, source=str(p))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], base_dir: Path = Path("."), source: str = "mapping") -> Policy:
        """Build from the parsed YAML structure documented in the module docstring."""
        allowed = {"profile", "options", "strict", "text_screening", "keep", "remove", "overrides",
                   "deid_recipes", "reversible", "pixels", "pixel_redaction", "pixel_detector",
                   "allow_incomplete_pixels", "deface", "deface_ears", "documents", "risk_target"}
        extra = set(data) - allowed
        if extra:
            raise PolicyError(f"unknown policy key(s) {sorted(extra)}")
        overrides: list[Override] = []
        additions: list[Override] = []
        for recipe in data.get("deid_recipes") or []:
            o, a = overrides_from_deid_recipe(base_dir / recipe)
            overrides += o
            additions += a
        overrides += [Override(parse_tag(t), "K") for t in data.get("keep") or []]
        overrides += [Override(parse_tag(t), "X") for t in data.get("remove") or []]
        for item in data.get("overrides") or []:
            if not isinstance(item, dict) or "tag" not in item or "action" not in item:
                raise PolicyError("each override needs 'tag' and 'action'")
            value = item.get("value")
            overrides.append(Override(parse_tag(item["tag"]), str(item["action"]),
                                      None if value is None else str(value)))
        recipients = tuple(str(base_dir / c) for c in (data.get("reversible") or {}).get("recipients", []))
        # Only the keys the file gives: every default is the dataclass's own, stated once above.
        settings: dict[str, Any] = {}
        if "profile" in data:
            settings["profile"] = data["profile"]
        if "strict" in data:
            settings["strict"] = bool(data["strict"])
        for name in CHOICES:
            if name in data:
                # YAML 1.1 reads a bare ``off`` as false: that is what the user wrote.
                settings[name] = "off" if data[name] is False and "off" in CHOICES[name] else str(data[name])
        for name in ("allow_incomplete_pixels", "deface_ears"):
            if name in data:
                settings[name] = _flag(data, name)
        if data.get("risk_target") is not None:
            from deidpipe.risk.errors import RiskError
            from deidpipe.risk.target import ArchiveTarget

            try:
                settings["risk_target"] = ArchiveTarget.from_mapping(data["risk_target"], base_dir)
            except (RiskError, TypeError) as exc:
                raise PolicyError(str(exc) if isinstance(exc, RiskError) else
                                  f"risk_target: {type(exc).__name__}") from None
        return cls(options=frozenset(data.get("options") or []), overrides=tuple(overrides),
                   additions=tuple(additions), recipients=recipients, source=source, **settings)

    def with_options(self, *names: str) -> Policy:
        """A copy with more options enabled."""
        return replace(self, options=self.options | frozenset(names))

    # -- derived ------------------------------------------------------------------------------------------
    @cached_property
    def option_columns(self) -> frozenset[str]:
        """The Table E.1-1 columns that the enabled options read."""
        cat = option_catalogue()
        return frozenset(cat[o]["column"] for o in self.options)

    @cached_property
    def override_map(self) -> dict[int, Override]:
        """Tag -> the last override given for it."""
        return {o.tag: o for o in self.overrides}

    @property
    def temporal(self) -> Literal["removed", "full", "modified"]:
        """How dates and times are treated: removed (Basic), kept, or shifted per patient."""
        if "RetainLongFullDates" in self.options:
            return "full"
        if "RetainLongModifiedDates" in self.options:
            return "modified"
        return "removed"

    def describe(self) -> str:
        """One line for logs and reports (no secrets, no values)."""
        opts = ", ".join(sorted(self.options)) or "none"
        return (f"PS3.15 Basic Profile; options: {opts}; strict: {self.strict}; "
                f"overrides: {len(self.overrides)}; reversible: {bool(self.recipients)}"
                + ("; incomplete pixel data written" if self.allow_incomplete_pixels else "")
                + f"; deface: {self.deface}" + ("" if self.deface_ears else " (face only, ears kept)")
                + f"; documents: {self.documents}"
                + (f"; risk target: {self.risk_target.summary()}" if self.risk_target is not None else ""))


# -- pydicom/deid recipes ---------------------------------------------------------------------------------
_DEID_ACTIONS = {"REMOVE": "X", "BLANK": "Z", "KEEP": "K", "REPLACE": "set", "ADD": "set"}


def _deid_fields(field_spec: str) -> list[int]:
    """Expand a deid field expression (keyword, tag, contains:/startswith:/endswith:) to dictionary tags."""
    if ":" in field_spec:
        how, _, text = field_spec.partition(":")
        tests = {
            "contains": lambda k: text.lower() in k.lower(),
            "startswith": lambda k: k.lower().startswith(text.lower()),
            "endswith": lambda k: k.lower().endswith(text.lower()),
        }
        if how not in tests:
            raise PolicyError(f"deid field expression '{how}:' is not supported")
        return sorted(int(tag_for_keyword(k)) for k in keyword_dict if tests[how](k))
    try:
        return [parse_tag(field_spec)]
    except PolicyError:
        return []  # deid recipes name retired or misspelt keywords (e.g. PatientsName); nothing to do


def overrides_from_deid_recipe(path: str | Path) -> tuple[list[Override], list[Override]]:
    """Translate the ``%header`` section of a pydicom/deid recipe, parsed with the ``deid`` package.

    REMOVE -> X, BLANK -> Z, KEEP -> K, REPLACE/ADD with a literal value -> set. Values computed by deid
    functions or variables (``func:``, ``var:``) and JITTER have no stateless equivalent here: they raise
    a PolicyError rather than being silently dropped (use the RetainLongModifiedDates option for dates).
    """
    import logging

    from deid.config import DeidRecipe
    from deid.logger import bot

    bot.level = logging.ERROR  # deid prints every parsed line at DEBUG
    p = Path(path)
    if not p.is_file():
        raise PolicyError(f"deid recipe not found: {p}")
    try:
        recipe = DeidRecipe(deid=str(p), base=False)
        actions = recipe.get_actions() or []
    except Exception as exc:  # noqa: BLE001 - deid raises bare exceptions on syntax errors
        raise PolicyError(f"cannot parse deid recipe {p}: {type(exc).__name__}") from None
    overrides: list[Override] = []
    additions: list[Override] = []
    for act in actions:
        name = act["action"].upper()
        if name not in _DEID_ACTIONS:
            raise PolicyError(f"deid recipe {p}: action {name} is not supported")
        value = act.get("value")
        if name in ("REPLACE", "ADD") and (value is None or str(value).startswith(("func:", "var:"))):
            raise PolicyError(f"deid recipe {p}: {name} {act['field']} uses a computed value; not supported")
        for tag in _deid_fields(act["field"]):
            o = Override(tag, _DEID_ACTIONS[name], None if value is None else str(value))
            (additions if name == "ADD" else overrides).append(o)
    return overrides, additions


def is_known_tag(tag: int) -> bool:
    """True when pydicom's dictionary knows ``tag`` (so it has a keyword and a VR)."""
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True
