"""Under ``documents: redact``: the encapsulated document of an object rewritten to hold only its screened text.

:func:`redact_into` picks the format (by SOP class, else by MIME Type), hands the document to the PDF
(:mod:`deidpipe.documents.pdf`) or CDA (:mod:`deidpipe.documents.cda`) writer with the header's free-text screen,
and puts the result into the de-identified data set. What is skipped and why is decided in
:mod:`deidpipe.documents`; pypdf is imported only when a document is a PDF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.documents import (
    _ENCAPSULATED_DOCUMENT,
    DOCUMENT_SOP_CLASSES,
    ENCAPSULATED_CDA,
    ENCAPSULATED_PDF,
    NOT_REDACTABLE,
    REDACTED_ACTION,
)
from deidpipe.errors import InputError, SkippedError
from deidpipe.header.text import screen_text

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

    from deidpipe.header.context import ScrubContext

_DOCUMENT_LENGTH = 0x00420015
_MIME_TYPE = 0x00420012
_HL7_INSTANCE_IDENTIFIER = 0x0040E001


def _format_of(ds: Dataset, sop_class: str) -> str:
    """``pdf``, ``cda`` or ``other``: by SOP class, else by MIME Type of Encapsulated Document (0042,0012)."""
    if sop_class == ENCAPSULATED_PDF:
        return "pdf"
    if sop_class == ENCAPSULATED_CDA:
        return "cda"
    if sop_class in DOCUMENT_SOP_CLASSES:
        return "other"
    mime = str(ds.get(_MIME_TYPE).value if _MIME_TYPE in ds._dict else "").strip().lower()
    return {"application/pdf": "pdf", "text/xml": "cda"}.get(mime, "other")


def document_bytes(ds: Dataset) -> bytes:
    """The document as stored: Encapsulated Document (0042,0011) cut to Encapsulated Document Length
    (0042,0015) when that is given and fits (the value is padded to an even length)."""
    if _ENCAPSULATED_DOCUMENT not in ds._dict:
        raise InputError(None, "encapsulated document object has no Encapsulated Document (0042,0011)")
    try:
        value = ds[_ENCAPSULATED_DOCUMENT].value
        length = ds[_DOCUMENT_LENGTH].value if _DOCUMENT_LENGTH in ds._dict else None
    except Exception as exc:  # noqa: BLE001 - a decoder failure is an input problem, named by type only
        raise InputError(None, f"Encapsulated Document cannot be read ({type(exc).__name__})") from None
    if not isinstance(value, bytes | bytearray) or not value:
        raise InputError(None, "Encapsulated Document (0042,0011) is empty or not a single value")
    data = bytes(value)
    if isinstance(length, int) and 0 < length <= len(data):
        data = data[:length]
    return data


def redact_into(src: Dataset, out: Dataset, sop_class: str, ctx: ScrubContext) -> dict[str, int]:
    """Under ``documents: redact``: put the redacted document of ``src`` into ``out`` (the de-identified data set)
    with its Encapsulated Document Length; returns action counts. The screen is the header's free-text screen
    with the object's own identifiers (``ctx.denylist``). Raises :class:`SkippedError` for a document that
    cannot be made safe by rewriting (a scan, a format not redacted), :class:`InputError` for a broken one.
    """
    kind = _format_of(src, sop_class)
    if kind == "other":
        raise SkippedError(NOT_REDACTABLE)
    data = document_bytes(src)
    denylist = ctx.denylist

    def screen(text: str) -> tuple[str, int]:
        return screen_text(text, denylist, use_model=ctx.use_model)

    redacted: bytes
    spans: int
    if kind == "pdf":
        from deidpipe.documents.pdf import redact_pdf

        redacted, spans = redact_pdf(data, screen, denylist)
    else:
        from deidpipe.documents.cda import redact_cda

        # The document's id (ClinicalDocument/id, "root^extension" in HL7 Instance Identifier (0040,E001)) becomes
        # the keyed pseudonym of its original, in both places: references to the document still match.
        redacted, spans = redact_cda(data, screen, denylist, ctx.key.uid)
        if _HL7_INSTANCE_IDENTIFIER in src._dict:
            original = str(src[_HL7_INSTANCE_IDENTIFIER].value or "").strip()
            out.add_new(_HL7_INSTANCE_IDENTIFIER, "ST", ctx.key.uid(original) if original else "")
    set_document(out, redacted)
    return {REDACTED_ACTION: 1, "C:spans": spans}


def set_document(out: Dataset, document: bytes) -> None:
    """Encapsulated Document (0042,0011) and Encapsulated Document Length (0042,0015) of ``out``. Both writers
    end a document with a newline as needed to make it even, so the length is that of the value itself."""
    if len(document) % 2:
        document += b"\n"
    out.add_new(_ENCAPSULATED_DOCUMENT, "OB", document)
    out.add_new(_DOCUMENT_LENGTH, "UL", len(document))

