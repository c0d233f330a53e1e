"""Which DICOM series the defacing stage takes (policy ``deface: auto | all | off``), decided without a volume.

Light on purpose (no numpy, no SimpleITK): the index calls :func:`head_hint` on every object's header and the
plan calls :func:`series_needs_deface` on every series.

``auto`` takes MR and CT series of the head. What says "head":
* Body Part Examined (0018,0015) is one of :data:`HEAD_BODY_PARTS` (PS3.16 CID 4031 terms of the head), or
* a word of :data:`HEAD_WORDS` appears in Series Description (0008,103E), Protocol Name (0018,1030) or Study
  Description (0008,1030) (scanners and sites name head protocols this way even where the body part is empty).
A series whose body part names another region (CHEST, KNEE, ...) and whose descriptions name no head is
``other`` and passes untouched. A series with no body part and no head word is ``unknown``: ``auto`` takes it
(fail closed: a head whose body part nobody filled in still has a face), and the stage then lets it through
unchanged when its field of view is too small to hold a face or, after registration, the face region is not in
view; a large unknown volume that is no head is refused by the registration checks and quarantined. Archives of
other regions without body parts can set ``deface: off``.

The hint is stored in the manifest as one of ``head``, ``other`` or null: never the text it came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

HEAD = "head"
OTHER = "other"
#: CID 4031 body parts that contain (part of) the face or are taken with it.
HEAD_BODY_PARTS = frozenset({
    "HEAD", "BRAIN", "SKULL", "HEADNECK", "HEAD_NECK", "FACE", "ORBIT", "EYE", "NOSE", "SINUS", "PARANASALSINUS",
    "NASOPHARYNX", "MOUTH", "JAW", "MANDIBLE", "MAXILLA", "TMJ", "EAR", "IAC", "SELLA", "PITUITARY",
    "CEREBELLUM", "CEREBRUM", "BRAINSTEM",
})
#: Body parts that may or may not show the face (a neck scan often includes the chin and mouth): unknown.
AMBIGUOUS_BODY_PARTS = frozenset({"NECK", "CSPINE", "SPINE", "WHOLEBODY", "WHOLE BODY"})
#: Words (matched at the start of a word, upper case) of head protocols in descriptions.
HEAD_WORDS = ("HEAD", "BRAIN", "SKULL", "NEURO", "CRANI", "CEREB", "MPRAGE", "MP-RAGE", "MP2RAGE", "ORBIT",
              "SINUS", "FACE", "FACIAL", "IAC", "PITUIT", "SELLA", "HIPPOC", "STROKE", "KOPF", "SCHADEL", "CRANE",
              "TETE", "CERVEAU", "CRANEO", "CABEZA", "CEREBRO")
_WORD = re.compile(r"(?<![A-Z])(?:" + "|".join(re.escape(w) for w in HEAD_WORDS) + ")")
#: Policy values.
DEFACE_SELECTIONS = ("auto", "all", "off")
DEFACE_MODALITIES = frozenset({"MR", "CT"})
#: Images with fewer rows or columns than this cannot show a recognisable face (a whole head in under 32
#: pixels leaves the eyes a few pixels apart); the stage is not even planned for them.
MIN_FACE_MATRIX = 32


def _norm(text: str | bytes | None) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        # Only ASCII keywords are looked for: any ASCII-compatible character set reads them the same.
        text = text.decode("latin-1")
    return str(text).upper().replace("_", " ")


def head_hint(body_part: str | bytes | None, descriptions: Iterable[str | bytes | None] = ()) -> str | None:
    """``head``, ``other`` or None (unknown) for one object, from its body part and description texts."""
    if any(_WORD.search(_norm(d)) for d in descriptions):
        return HEAD
    part = _norm(body_part).strip().replace(" ", "")
    if not part:
        return None
    if part in HEAD_BODY_PARTS or part.replace("_", "") in HEAD_BODY_PARTS:
        return HEAD
    if part in AMBIGUOUS_BODY_PARTS:
        return None
    return OTHER


#: Description attributes whose words can say "head" (head_hint's ``descriptions``).
DESCRIPTION_KEYWORDS = ("SeriesDescription", "ProtocolName", "StudyDescription")


def dataset_head_hint(ds: Any) -> str | None:
    """:func:`head_hint` of one data set's Body Part Examined and descriptions: what the index stores per object
    and what the deface stage reads from the objects as read."""

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return None if value is None else str(value)

    return head_hint(text("BodyPartExamined"), [text(k) for k in DESCRIPTION_KEYWORDS])


def series_hint(hints: Iterable[str | None]) -> str | None:
    """One series' hint from its objects': head if any object says head; other only if every object says so."""
    seen = set(hints)
    if HEAD in seen:
        return HEAD
    if seen == {OTHER}:
        return OTHER
    return None


def series_needs_deface(selection: str, modalities: Iterable[str | None], hints: Iterable[str | None],
                        rows: Iterable[int | None], columns: Iterable[int | None]) -> bool:
    """Whether the plan gives a series the ``deface`` stage: ``off`` never; otherwise an MR or CT image series
    of at least :data:`MIN_FACE_MATRIX` pixels a side, and for ``auto`` one not marked ``other``."""
    if selection == "off":
        return False
    if not DEFACE_MODALITIES.intersection(m for m in modalities if m):
        return False
    sizes = [(r, c) for r, c in zip(rows, columns, strict=True) if r and c]
    if not sizes or max(min(r, c) for r, c in sizes) < MIN_FACE_MATRIX:
        return False
    return selection == "all" or series_hint(hints) != OTHER
