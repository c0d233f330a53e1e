"""Encapsulated documents (issue 17, section 3): written clean or not at all.

The objects are built here: an Encapsulated PDF whose identity hides in a compressed and an uncompressed content
stream, /Info, an XMP stream, an attachment and JavaScript; a CDA whose identity is in recordTarget, author,
custodian, the encounter's location and the narrative; a scanned (image-only) PDF. They go through the real
pipeline (``deidpipe.run``, in process) under the default policy (skipped) and under ``documents: redact``.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from pathlib import Path

import polars as pl
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.documents import ENCAPSULATED_CDA, ENCAPSULATED_DOCUMENT, ENCAPSULATED_PDF, NO_EXTRACTABLE_TEXT
from deidpipe.documents.pdf import assemble_pdf
from deidpipe.errors import PolicyError, SkippedError
from deidpipe.header.engine import deidentify
from deidpipe.pipeline import run
from deidpipe.pipeline.audit import STATUS_SKIPPED, STATUS_WRITTEN
from deidpipe.policy import Policy
from tests.conftest import dciodvfy_available
from tests.helpers import dciodvfy_errors

#: Planted values: the patient, the physician (both in the DICOM header, so in the object's own identifiers),
#: and names that appear only inside the documents' metadata, attachments and participants.
PLANTED = ("Wojciechowski", "Bartholomew", "PID884422X", "Throckmorton", "Evangeline", "Quigglesworth",
           "Zebediah")
REDACT = Policy(documents="redact")


# -- building the documents ------------------------------------------------------------------------------------
def _pdf(objects: list[bytes], info: int | None = None) -> bytes:
    """A PDF from object bodies (object n is objects[n - 1]; object 1 is the catalog) with a correct xref."""
    return assemble_pdf(objects, f"/Info {info} 0 R".encode() if info else b"")


def _stream(data: bytes, extra: str = "", flate: bool = False) -> bytes:
    if flate:
        data, extra = zlib.compress(data), extra + " /Filter /FlateDecode"
    return f"<< /Length {len(data)}{extra} >>\nstream\n".encode() + data + b"\nendstream"


def identifying_pdf() -> bytes:
    page1 = b"BT /F1 12 Tf 72 700 Td (Report for Bartholomew Wojciechowski, ID PID884422X.) Tj ET"
    page2 = b"BT /F1 12 Tf 72 700 Td (Seen by Dr. Evangeline Throckmorton. Impression: no acute findings.) Tj ET"
    xmp = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
           b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
           b'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>Evangeline Throckmorton</dc:creator>'
           b'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R /Metadata 7 0 R /OpenAction 10 0 R /Names << /EmbeddedFiles "
        b"<< /Names [(quigglesworth.txt) 8 0 R] >> /JavaScript << /Names [(js) 10 0 R] >> >> >>",
        b"<< /Type /Pages /Kids [3 0 R 5 0 R] /Count 2 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 11 0 R >> >> "
        b"/Contents 4 0 R >>",
        _stream(page1, flate=True),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 11 0 R >> >> "
        b"/Contents 6 0 R >>",
        _stream(page2),
        _stream(xmp, " /Type /Metadata /Subtype /XML"),
        b"<< /Type /Filespec /F (quigglesworth.txt) /EF << /F 9 0 R >> >>",
        _stream(b"Zebediah Quigglesworth, next of kin", " /Type /EmbeddedFile"),
        b"<< /S /JavaScript /JS (app.alert\\('Zebediah'\\);) >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Author (Evangeline Throckmorton) /Title (Letter about Wojciechowski) >>",
    ], info=12)


def scanned_pdf() -> bytes:
    """One page that only draws an image (a scan): no text to extract."""
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Im1 5 0 R >> >> "
        b"/Contents 4 0 R >>",
        _stream(b"q 612 0 0 792 0 0 cm /Im1 Do Q"),
        _stream(bytes(range(0, 256, 64)), " /Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace "
                "/DeviceGray /BitsPerComponent 8"),
    ])


CDA = b"""<?xml version="1.0" encoding="UTF-8"?>
<?xml-stylesheet type="text/xsl" href="CDA.xsl"?>
<!-- written for Bartholomew Wojciechowski -->
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <id root="2.16.840.1.113883.19.5" extension="DOC-PID884422X"/>
  <setId root="2.16.840.1.113883.19.5" extension="SET-77123409"/>
  <code code="11488-4" codeSystem="2.16.840.1.113883.6.1" displayName="Consult note"/>
  <title>Consultation for Bartholomew Wojciechowski</title>
  <effectiveTime value="20240314"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <recordTarget><patientRole><id extension="PID884422X" root="2.16.840.1.113883.19.5"/>
    <addr><streetAddressLine>17 Quigglesworth Lane</streetAddressLine></addr><telecom value="tel:+1-555-0199"/>
    <patient><name><given>Bartholomew</given><family>Wojciechowski</family></name>
      <administrativeGenderCode code="M" codeSystem="2.16.840.1.113883.5.1"/><birthTime value="19610203"/>
    </patient></patientRole></recordTarget>
  <author><time value="20240314"/><assignedAuthor><id extension="NPI-777" root="2.16.840.1.113883.4.6"/>
    <assignedPerson><name><given>Evangeline</given><family>Throckmorton</family></name></assignedPerson>
  </assignedAuthor></author>
  <custodian><assignedCustodian><representedCustodianOrganization><id root="2.16.840.1.113883.19.5"/>
    <name>Quigglesworth Clinic</name></representedCustodianOrganization></assignedCustodian></custodian>
  <legalAuthenticator><time value="20240314"/><signatureCode code="S"/><assignedEntity><id extension="NPI-777"
    root="2.16.840.1.113883.4.6"/><assignedPerson><name>Evangeline Throckmorton</name></assignedPerson>
  </assignedEntity></legalAuthenticator>
  <componentOf><encompassingEncounter><id extension="ENC-1" root="2.16.840.1.113883.19.5"/>
    <effectiveTime value="20240314"/><location><healthCareFacility><location><name>Zebediah Ward</name>
    </location></healthCareFacility></location></encompassingEncounter></componentOf>
  <component><structuredBody><component><section><title>Findings</title>
    <text><paragraph>Mr. Wojciechowski (PID884422X) was seen by Dr. Evangeline Throckmorton.</paragraph>
      <table><tbody><tr><td>Chest</td><td>no acute findings</td></tr></tbody></table></text>
  </section></component></structuredBody></component>
</ClinicalDocument>
"""


def document_object(sop_class: str, document: bytes, mime: str, title: str) -> Dataset:
    """An Encapsulated PDF or CDA object (PS3.3 A.45) with the patient in its header."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.PatientName, ds.PatientID = "WOJCIECHOWSKI^BARTHOLOMEW", "PID884422X"
    ds.PatientBirthDate, ds.PatientSex = "19610203", "M"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240314", "101500", "S1", "ACC99"
    ds.ReferringPhysicianName = "THROCKMORTON^EVANGELINE"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DOC", 1, 1
    ds.Manufacturer, ds.ConversionType = "", "WSD"
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20240314", "101500", "20240314101500"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = Sequence()
    ds.MIMETypeOfEncapsulatedDocument = mime
    if sop_class == ENCAPSULATED_CDA:
        ds.HL7InstanceIdentifier = "2.16.840.1.113883.19.5^DOC-PID884422X"  # root^extension of the id
    ds.EncapsulatedDocumentLength = len(document)
    ds.EncapsulatedDocument = document + (b"\x00" if len(document) % 2 else b"")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("documents")
    objects = {
        "report.dcm": document_object(ENCAPSULATED_PDF, identifying_pdf(), "application/pdf", "Wojciechowski letter"),
        "scan.dcm": document_object(ENCAPSULATED_PDF, scanned_pdf(), "application/pdf", "scanned letter"),
        "note.dcm": document_object(ENCAPSULATED_CDA, CDA, "text/XML", "Consult note"),
    }
    for name, ds in objects.items():
        write_dataset(ds, root / name)
    return root


def audit_of(dst: Path) -> pl.DataFrame:
    return pl.read_parquet(dst / "_deidpipe" / "audit.parquet")


def outputs(dst: Path) -> list[Path]:
    return [p for p in dst.rglob("*") if p.is_file() and "_deidpipe" not in p.parts and "quarantine" not in p.parts]


def planted_in(text: str | bytes) -> list[str]:
    s = text.decode("latin-1") if isinstance(text, bytes) else text
    return [v for v in PLANTED if v.lower() in s.lower()]


# -- policy ----------------------------------------------------------------------------------------------------
def test_policy_documents_setting():
    assert Policy().documents == "skip" and "documents: skip" in Policy().describe()
    assert Policy.from_mapping({"documents": "redact"}).documents == "redact"
    with pytest.raises(PolicyError):
        Policy.from_mapping({"documents": "keep"})


# -- default: skipped ------------------------------------------------------------------------------------------
def test_default_policy_skips_every_document(src, key, tmp_path):
    dst = tmp_path / "out"
    report = run(src, dst, Policy.basic(), key=key, workers=1)
    assert report.ok and report.skipped == 3 and report.written == 0 and report.quarantined == 0
    assert report.skipped_by_reason == {ENCAPSULATED_DOCUMENT: 3}
    audit = audit_of(dst)
    assert set(audit["status"]) == {STATUS_SKIPPED} and set(audit["reason"]) == {ENCAPSULATED_DOCUMENT}
    assert outputs(dst) == []


def test_library_refuses_a_document_under_skip(src, key):
    ds = read_dataset(src / "report.dcm")
    with pytest.raises(SkippedError) as err:
        deidentify(ds, Policy.basic(), key)
    assert err.value.reason == ENCAPSULATED_DOCUMENT and "documents: skip" in str(err.value)
    assert planted_in(str(err.value)) == []


def test_serve_audits_a_skipped_document(src, key, tmp_path):
    """The node's processing stage: the object is audited as skipped; no ticket, no quarantine record."""
    from deidpipe.pipeline.index import received_object_id
    from deidpipe.serve.process import Processor
    from deidpipe.serve.queue import Queue

    queue = Queue(tmp_path / "queue", ["copy"])
    queue.put(received_object_id(key, "1.2.3.4"), [(src / "note.dcm").read_bytes()])
    proc = Processor(queue, key, Policy.basic())
    try:
        assert proc.step() == 1
    finally:
        proc.close()
    assert proc.stats["skipped"] == 1 and proc.stats["quarantined"] == 0 and proc.stats["processed"] == 0
    assert not list(queue.path("quarantine").iterdir()) and not queue.tickets("copy")
    audit = [json.loads(line) for line in (tmp_path / "queue" / "audit.jsonl").read_text().splitlines()]
    assert [(a["status"], a["reason"]) for a in audit] == [(STATUS_SKIPPED, ENCAPSULATED_DOCUMENT)]


# -- redact ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redacted(src, key, tmp_path_factory) -> tuple[Path, pl.DataFrame, dict[str, Dataset]]:
    dst = tmp_path_factory.mktemp("redacted") / "out"
    report = run(src, dst, REDACT, key=key, workers=1)
    assert report.ok and report.written == 2 and report.skipped == 1
    audit = audit_of(dst)
    by_class = {}
    for p in outputs(dst):
        ds = read_dataset(p)
        by_class[str(ds.SOPClassUID)] = ds
    return dst, audit, by_class


def _streams(pdf: bytes) -> list[bytes]:
    """Every stream of a PDF, decompressed where it is Flate-compressed."""
    out = []
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            out.append(zlib.decompress(m.group(1)))
        except zlib.error:
            out.append(m.group(1))
    return out


def test_redacted_pdf_holds_only_the_screened_text(redacted):
    from pypdf import PdfReader

    _, audit, by_class = redacted
    ds = by_class[ENCAPSULATED_PDF]
    pdf = bytes(ds.EncapsulatedDocument)
    assert ds.EncapsulatedDocumentLength == len(pdf) and len(pdf) % 2 == 0
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    reader = PdfReader(io.BytesIO(pdf), strict=True)
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "no acute findings" in text  # the clinical text stays
    assert planted_in(pdf) == [] and planted_in(text) == []
    assert all(planted_in(s) == [] for s in _streams(pdf))
    assert reader.metadata is None and reader.xmp_metadata is None
    root = reader.trailer["/Root"]
    assert "/Metadata" not in root and "/Names" not in root and "/OpenAction" not in root
    for name in (b"/Info", b"/Metadata", b"/EmbeddedFiles", b"/JavaScript", b"/Image", b"/XObject"):
        assert name not in pdf
    assert planted_in(str(ds.get("DocumentTitle", ""))) == []
    row = audit.filter(pl.col("status") == STATUS_WRITTEN)
    assert all('"document_redacted": 1' in a for a in row["actions"])


def test_redacted_cda_holds_no_participant_and_a_screened_narrative(redacted):
    import xml.etree.ElementTree as ET

    _, _, by_class = redacted
    ds = by_class[ENCAPSULATED_CDA]
    xml = bytes(ds.EncapsulatedDocument)
    assert ds.EncapsulatedDocumentLength == len(xml) and len(xml) % 2 == 0
    assert planted_in(xml) == []
    root = ET.fromstring(xml)
    v3 = "{urn:hl7-org:v3}"
    assert root.tag == f"{v3}ClinicalDocument"
    for gone in ("legalAuthenticator", "patient", "assignedPerson", "location", "addr", "telecom"):
        assert root.find(f".//{v3}{gone}") is None
    patient_ids = root.findall(f"{v3}recordTarget/{v3}patientRole/{v3}id")
    assert [i.attrib for i in patient_ids] == [{"nullFlavor": "MSK"}]
    assert root.find(f"{v3}author") is not None and root.find(f"{v3}custodian") is not None  # required by CDA
    # the document's id and HL7 Instance Identifier: one keyed pseudonym, so that they still match
    assert root.find(f"{v3}id").attrib == {"root": ds.HL7InstanceIdentifier}
    assert ds.HL7InstanceIdentifier.startswith("2.25.")
    assert b"SET-77123409" not in xml  # the document set's id (setId) is masked like every other id
    narrative = "".join(root.find(f".//{v3}section/{v3}text").itertext())
    assert "no acute findings" in narrative and "***" in narrative


def test_scanned_pdf_is_skipped_under_redact(redacted):
    _, audit, _ = redacted
    skipped = audit.filter(pl.col("status") == STATUS_SKIPPED)
    assert skipped["reason"].to_list() == [NO_EXTRACTABLE_TEXT]


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_no_new_error(src, redacted):
    dst, _, by_class = redacted
    inputs = {str(read_dataset(p).SOPClassUID): p for p in (src / "report.dcm", src / "note.dcm")}
    for p in outputs(dst):
        out_class = str(read_dataset(p).SOPClassUID)
        assert dciodvfy_errors(p) - dciodvfy_errors(inputs[out_class]) == set()


def test_cda_with_a_doctype_is_skipped():
    from deidpipe.documents import UNSAFE_XML
    from deidpipe.documents.cda import redact_cda
    from deidpipe.header.text import DenyList

    bomb = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
            b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&b;</title></ClinicalDocument>')
    with pytest.raises(SkippedError) as err:
        redact_cda(bomb, lambda t: (t, 0), DenyList.from_terms([]))
    assert err.value.reason == UNSAFE_XML


def test_cda_masks_identifying_types_wherever_they_are():
    """A name that claims to be masked, a performer inside an entry, an embedded image: none survives."""
    from deidpipe.documents.cda import redact_cda
    from deidpipe.header.text import DenyList, screen_text

    deny = DenyList.from_terms(["Wojciechowski"])
    cda = (b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3" extension="X1"/>'
           b'<component><structuredBody><component><section><text>Wojciechowski</text><entry><observation '
           b'classCode="OBS" moodCode="EVN"><value xsi:type="ED" representation="B64" '
           b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">WmViZWRpYWg=</value><performer><assignedEntity>'
           b'<assignedPerson><name nullFlavor="MSK"><given>Zebediah</given></name></assignedPerson>'
           b'</assignedEntity></performer><participant><name>Quigglesworth</name></participant>'
           b'<subject><name>Quigglesworth</name></subject></observation></entry></section></component>'
           b'</structuredBody></component></ClinicalDocument>')
    out, spans = redact_cda(cda, lambda t: screen_text(t, deny, use_model=False), deny, lambda v: "2.25.1")
    assert spans == 1 and planted_in(out) == [] and b"WmViZWRpYWg" not in out
    assert b'<id root="2.25.1" />' in out and b"X1" not in out


def test_unreadable_pdf_is_quarantined_and_other_formats_skipped(key):
    from deidpipe.documents import NOT_REDACTABLE
    from deidpipe.errors import InputError

    broken = document_object(ENCAPSULATED_PDF, b"%PDF-1.4\nnot really", "application/pdf", "t")
    with pytest.raises(InputError) as err:
        deidentify(broken, REDACT, key)
    assert "cannot be read" in err.value.reason
    stl = document_object("1.2.840.10008.5.1.4.1.1.104.3", b"solid Wojciechowski\nendsolid\n", "model/stl", "t")
    with pytest.raises(SkippedError) as skipped:
        deidentify(stl, REDACT, key)
    assert skipped.value.reason == NOT_REDACTABLE
