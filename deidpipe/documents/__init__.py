"""Encapsulated documents: written clean or not at all.

An Encapsulated PDF, CDA, STL, OBJ or MTL object carries a whole document in Encapsulated Document (0042,0011).
Table E.1-1 gives that attribute action D, and a dummy of its length is no document at all, so the policy's
``documents`` setting decides instead:

- ``skip`` (default): the object is not written. The run's plan sets these objects aside up front from the SOP
  class in the manifest (status ``skipped``, reason :data:`ENCAPSULATED_DOCUMENT`); the header engine refuses any
  that reach it (a data set read directly, ``deidpipe serve``) with a :class:`~deidpipe.errors.SkippedError`.
- ``redact``: PDF (:mod:`deidpipe.documents.pdf`) and CDA (:mod:`deidpipe.documents.cda`) are rewritten to hold
  only their screened text (:mod:`deidpipe.documents.redact`); the rest of the header goes through the header
  engine as usual. A PDF without extractable text (a scan) and the other formats are skipped with their reason.

Nothing here is imported by the header engine unless an object is a document; pypdf only when it is a PDF.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from deidpipe.errors import SkippedError

if TYPE_CHECKING:  # pragma: no cover - the plan imports this module; pydicom is loaded where objects are read
    from pydicom.dataset import Dataset

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
ENCAPSULATED_CDA = "1.2.840.10008.5.1.4.1.1.104.2"
ENCAPSULATED_STL = "1.2.840.10008.5.1.4.1.1.104.3"
ENCAPSULATED_OBJ = "1.2.840.10008.5.1.4.1.1.104.4"
ENCAPSULATED_MTL = "1.2.840.10008.5.1.4.1.1.104.5"
#: Every storage SOP class whose object is an encapsulated document.
DOCUMENT_SOP_CLASSES = frozenset({ENCAPSULATED_PDF, ENCAPSULATED_CDA, ENCAPSULATED_STL, ENCAPSULATED_OBJ,
                                  ENCAPSULATED_MTL})

#: Audit reasons (status ``skipped``).
ENCAPSULATED_DOCUMENT = "encapsulated document"
NO_EXTRACTABLE_TEXT = "document has no extractable text"
NOT_REDACTABLE = "encapsulated document of a format that is not redacted (only PDF and CDA are)"
UNSAFE_XML = "document declares a DTD or entities"
NON_XML_BODY = "CDA document with a non-XML body"

#: Counted in the object's actions when its document was rewritten.
REDACTED_ACTION = "document_redacted"

_ENCAPSULATED_DOCUMENT = 0x00420011

#: What screens one piece of text: the text in, the cleaned text and the number of spans replaced out.
Screen = Callable[[str], tuple[str, int]]


def is_document(ds: Dataset, sop_class: str) -> bool:
    """Whether ``ds`` is an encapsulated document: by its SOP class, or by carrying Encapsulated Document
    (0042,0011) at the top level whatever its class says."""
    return sop_class in DOCUMENT_SOP_CLASSES or _ENCAPSULATED_DOCUMENT in ds._dict


def skip_document() -> SkippedError:
    """The error for an encapsulated document under ``documents: skip`` (no value of the object in it)."""
    return SkippedError(ENCAPSULATED_DOCUMENT, "the policy skips encapsulated documents (documents: skip)")
