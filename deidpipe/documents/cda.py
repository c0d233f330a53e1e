"""Encapsulated CDA under ``documents: redact``: the header's people and places out, the narrative screened.

An HL7 CDA R2 document (namespace ``urn:hl7-org:v3``) names its patient and the people around it in header
participations, and may name anyone anywhere in its narrative. The rewrite, on the parsed tree:

- header participations (recordTarget, author, custodian, authenticator, legalAuthenticator, informant,
  participant, dataEnterer, informationRecipient, and componentOf's encompassingEncounter location, responsible
  party and encounter participants) are dropped; the three CDA requires (recordTarget, author, custodian) are
  replaced by a placeholder whose identifiers are masked (``nullFlavor="MSK"``). The same participations inside
  the body's entries (performer, author, informant, participant, ...) are dropped;
- wherever they remain, ``id`` elements (patient and document identifiers in their ``extension``), ``name``,
  ``addr``, ``telecom``, ``birthTime``, ``effectiveTime`` and ``time`` (dates, as the Basic Profile removes them)
  and embedded files (``representation="B64"``, e.g. an observationMedia image) lose their content and are
  masked (``nullFlavor="MSK"``);
- every text node (narrative ``text`` with its paragraphs, lists and table cells, titles, ``originalText``) goes
  through the free-text screen; every other attribute value is screened against the object's own identifiers;
- comments and processing instructions are not kept (the parser drops them).

Safety of parsing: the standard library's expat, with any document type declaration refused before its
internal subset is read (so no entity is ever defined, expanded or fetched); such a document is skipped with
:data:`~deidpipe.documents.UNSAFE_XML`. A CDA with a ``nonXMLBody`` (an embedded or referenced file) is skipped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

from deidpipe.documents import NON_XML_BODY, UNSAFE_XML, Screen
from deidpipe.errors import DeidError, InputError, SkippedError
from deidpipe.header.text import DenyList

V3 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
_NS = f"{{{V3}}}"
#: Participations of the header and of entries: dropped wherever they are.
PARTICIPATIONS = frozenset({
    "recordTarget", "author", "custodian", "authenticator", "legalAuthenticator", "informant", "participant",
    "dataEnterer", "informationRecipient", "performer", "responsibleParty", "encounterParticipant", "location",
    "subject", "specimen",
})
#: Data types that identify by themselves: masked wherever they remain.
MASKED = frozenset({"id", "setId", "name", "addr", "telecom", "birthTime", "effectiveTime", "time"})
#: Maximum document size parsed (characters of XML).
MAX_XML_BYTES = 32 * 1024 * 1024


class _NoDoctype(ET.TreeBuilder):
    """A tree builder that refuses a document type declaration as soon as expat meets it."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise SkippedError(UNSAFE_XML)


def parse(data: bytes) -> ET.Element:
    """The document's root element. Raises :class:`SkippedError` for a DTD, :class:`InputError` for bad XML."""
    if len(data) > MAX_XML_BYTES:
        raise InputError(None, "encapsulated CDA is larger than this pipeline rewrites")
    parser = ET.XMLParser(target=_NoDoctype())
    try:
        parser.feed(data.rstrip(b"\x00"))
        root = parser.close()
    except SkippedError:
        raise
    except Exception as exc:  # noqa: BLE001 - expat's messages quote the input's position, not values; still fixed
        raise InputError(None, f"encapsulated CDA is not well-formed XML ({type(exc).__name__})") from None
    if root.tag != f"{_NS}ClinicalDocument":
        raise InputError(None, "encapsulated CDA has no ClinicalDocument root in the HL7 v3 namespace")
    return root


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _el(name: str, *children: ET.Element, **attrs: str) -> ET.Element:
    el = ET.Element(f"{_NS}{name}", attrs)
    el.extend(children)
    return el


def _masked_id() -> ET.Element:
    return _el("id", nullFlavor="MSK")


def _placeholder(name: str) -> ET.Element:
    """The minimal participation CDA R2 requires in place of a dropped recordTarget, author or custodian."""
    if name == "recordTarget":
        return _el("recordTarget", _el("patientRole", _masked_id()))
    if name == "author":
        return _el("author", _el("time", nullFlavor="MSK"), _el("assignedAuthor", _masked_id()))
    return _el("custodian", _el("assignedCustodian", _el("representedCustodianOrganization", _masked_id())))


def _mask(el: ET.Element) -> None:
    """Empty an identifying element and mark it masked (its xsi:type kept so that it stays valid)."""
    xsi_type, tail = el.get(f"{{{XSI}}}type"), el.tail
    el.clear()
    el.tail = tail  # the text after the element is its parent's (screened with it)
    el.set("nullFlavor", "MSK")
    if xsi_type:
        el.set(f"{{{XSI}}}type", xsi_type)


def _drop_participations(root: ET.Element) -> int:
    """Drop participations everywhere; put back the required header ones as placeholders. Returns how many."""
    dropped = 0
    required = ("recordTarget", "author", "custodian")
    for parent in list(root.iter()):
        for i, child in reversed(list(enumerate(parent))):
            name = _local(child.tag)
            if name not in PARTICIPATIONS:
                continue
            parent.remove(child)
            dropped += 1
            if parent is root and name in required and not any(_local(c.tag) == name for c in parent):
                parent.insert(i, _placeholder(name))
    return dropped


def _screen_tree(root: ET.Element, screen: Screen, denylist: DenyList,
                 keep: ET.Element | None = None) -> tuple[int, int]:
    """Mask identifying data types and embedded files, screen text nodes with the free-text screen and attribute
    values against the object's own identifiers (they are codes, numbers and references; a name typed into one is
    still found). Returns (elements masked, spans replaced)."""
    masked = spans = 0
    for el in list(root.iter()):
        if el is keep:
            continue  # the document's id, already its pseudonym
        # Unconditionally: an element that says nullFlavor="MSK" may still hold content.
        if _local(el.tag) in MASKED or el.get("representation") == "B64":
            _mask(el)
            masked += 1
        for attr in ("text", "tail"):
            value = getattr(el, attr)
            if value and value.strip():
                clean, n = screen(value)
                setattr(el, attr, clean)
                spans += n
        for name, value in list(el.attrib.items()):
            if denylist.hits(value):
                clean, n = screen(value)
                el.set(name, clean)
                spans += n
    return masked, spans


def _check(xml: bytes, denylist: DenyList) -> None:
    """The rewritten document must parse again and hold none of the object's identifiers in text or attributes."""
    root = parse(xml)
    for el in root.iter():
        values = [el.text or "", el.tail or "", *el.attrib.values()]
        if any(denylist.hits(v) for v in values):
            raise DeidError("an identifying value of the object survived in the rewritten CDA")


def _pseudonymise_id(root: ET.Element, uid: Callable[[str], str]) -> ET.Element | None:
    """ClinicalDocument/id becomes ``<id root="2.25...."/>``, the keyed pseudonym of its ``root^extension``
    (HL7 Instance Identifier (0040,E001) gets the same, see :func:`deidpipe.documents.redact.redact_into`)."""
    doc_id = root.find(f"{_NS}id")
    if doc_id is None or not doc_id.get("root"):
        return None
    original = doc_id.get("root", "") + (f"^{doc_id.get('extension')}" if doc_id.get("extension") else "")
    doc_id.attrib.clear()
    doc_id.set("root", uid(original))
    return doc_id


def redact_cda(data: bytes, screen: Screen, denylist: DenyList,
               uid: Callable[[str], str] | None = None) -> tuple[bytes, int]:
    """The redacted CDA of ``data`` (UTF-8, with an XML declaration) and the number of spans replaced. ``uid``
    maps the document's own id to its pseudonym (else it is masked like every other id)."""
    root = parse(data)
    if any(_local(el.tag) == "nonXMLBody" for el in root.iter()):
        raise SkippedError(NON_XML_BODY)
    doc_id = _pseudonymise_id(root, uid) if uid is not None else None
    _drop_participations(root)
    _, spans = _screen_tree(root, screen, denylist, keep=doc_id)
    ET.register_namespace("", V3)
    ET.register_namespace("xsi", XSI)
    xml = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    _check(xml, denylist)
    return xml, spans
