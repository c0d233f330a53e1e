"""Bytes that real archives hide identity in, built by hand so that nothing here needs a new dependency.

* :func:`make_pdf`: a minimal valid PDF 1.4 with an uncompressed and a Flate-compressed content stream, an
  ``/Info`` dictionary (``/Author``, ``/Title``) and an XMP metadata stream;
* :func:`make_cda`: an HL7 CDA R2 document with ``recordTarget``, ``author``, ``custodian`` and a narrative;
* :func:`jpeg_with_metadata`: a baseline JPEG (Pillow) with an EXIF APP1, an XMP APP1 and a COM segment;
* :func:`j2k_with_comment`: a lossless JPEG 2000 codestream (pylibjpeg-openjpeg) with a COM marker segment
  (FF64) spliced into its main header;
* :func:`png_with_text`: a PNG with a text chunk.

Each returns the bytes; the caller records which values it put where (see :meth:`Recorder.hide`).
"""

from __future__ import annotations

import io
import struct
import unicodedata
import zlib
from xml.sax.saxutils import escape

import numpy as np

from deidpipe.documents.pdf import assemble_pdf

XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"


def ascii_fold(text: str) -> str:
    """``text`` with accents dropped and anything still not ASCII removed ("Jürgen Müller" -> "Jurgen Muller")."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def pdf_string(text: str) -> bytes:
    """A PDF text string: literal (PDFDocEncoding, which agrees with Latin-1 for these characters) when
    ``text`` is Latin-1, else a UTF-16BE hex string with its byte order mark (PDF 32000-1 7.9.2.2)."""
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        return b"<FEFF" + text.encode("utf-16-be").hex().upper().encode("ascii") + b">"
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _xmp(title: str, author: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f'<dc:title><rdf:Alt><rdf:li xml:lang="x-default">{escape(title)}</rdf:li></rdf:Alt></dc:title>'
        f'<dc:creator><rdf:Seq><rdf:li>{escape(author)}</rdf:li></rdf:Seq></dc:creator>'
        '</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>'
    ).encode()


def _text_stream(lines: list[str], y: int) -> bytes:
    """Content stream showing ``lines`` (Latin-1 only; other characters are dropped) in Helvetica."""
    ops = [b"BT", b"/F1 11 Tf", f"72 {y} Td".encode(), b"14 TL"]
    for line in lines:
        ops.append(pdf_string(line.encode("latin-1", "ignore").decode("latin-1")) + b" '")
    ops.append(b"ET")
    return b"\n".join(ops) + b"\n"


def make_pdf(*, title: str, author: str, plain_lines: list[str], compressed_lines: list[str]) -> bytes:
    """A one-page PDF: ``plain_lines`` in an uncompressed content stream, ``compressed_lines`` in a FlateDecode
    one, ``title``/``author`` in ``/Info`` and in the XMP packet of the catalog's ``/Metadata``."""
    plain = _text_stream(plain_lines, 720)
    packed = zlib.compress(_text_stream(compressed_lines, 600), 9)
    xmp = _xmp(title, author)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /Metadata 7 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents [5 0 R 6 0 R] >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(plain) + plain + b"\nendstream",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream",
        b"<< /Type /Metadata /Subtype /XML /Length %d >>\nstream\n" % len(xmp) + xmp + b"\nendstream",
        b"<< /Title " + pdf_string(title) + b" /Author " + pdf_string(author)
        + b" /Producer (deidpipe synth) /CreationDate (D:20200101000000Z) >>",
    ]
    # A fixed /ID from the content (deterministic for a seed), as writers derive it.
    doc_id = zlib.crc32(b"".join(objects)).to_bytes(4, "big").hex().encode() * 4
    return assemble_pdf(objects, b"/Info 8 0 R /ID [<%s> <%s>]" % (doc_id, doc_id))


def make_cda(*, doc_id: str, family: str, given: str, mrn: str, birth: str, sex: str, author_family: str,
             author_given: str, custodian: str, title: str, narrative: str, effective: str) -> bytes:
    """An HL7 CDA R2 ClinicalDocument (UTF-8) with the participants a de-identifier must drop or replace."""
    e = escape
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
 <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
 <id root="2.25.{doc_id}"/>
 <code code="18842-5" codeSystem="2.16.840.1.113883.6.1" displayName="Discharge summary"/>
 <title>{e(title)}</title>
 <effectiveTime value="{effective}"/>
 <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
 <recordTarget><patientRole><id root="2.16.840.1.113883.19.5" extension="{e(mrn)}"/>
  <patient><name><given>{e(given)}</given><family>{e(family)}</family></name>
   <administrativeGenderCode code="{sex}" codeSystem="2.16.840.1.113883.5.1"/><birthTime value="{birth}"/>
  </patient></patientRole></recordTarget>
 <author><time value="{effective}"/><assignedAuthor><id root="2.16.840.1.113883.19.5" extension="A{mrn}"/>
  <assignedPerson><name><given>{e(author_given)}</given><family>{e(author_family)}</family></name></assignedPerson>
 </assignedAuthor></author>
 <custodian><assignedCustodian><representedCustodianOrganization><id root="2.16.840.1.113883.19.5"/>
  <name>{e(custodian)}</name></representedCustodianOrganization></assignedCustodian></custodian>
 <component><structuredBody><component><section>
  <title>Summary</title>
  <text><paragraph>{e(narrative)}</paragraph></text>
 </section></component></structuredBody></component>
</ClinicalDocument>
"""
    return xml.encode("utf-8")


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def jpeg_with_metadata(pixels: np.ndarray, *, comment: str, exif: dict[int, str], xmp_title: str,
                       xmp_author: str) -> bytes:
    """A baseline (SOF0) greyscale JPEG of ``pixels`` (uint8) with an EXIF APP1 (``exif``: IFD0 tag -> ASCII
    text), then an XMP APP1 and a COM segment (UTF-8 text) spliced in after the APP segments Pillow wrote."""
    from PIL import Image

    ifd = Image.Exif()
    for tag, text in exif.items():
        ifd[tag] = text
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, "JPEG", quality=90, exif=ifd.tobytes())
    data = buf.getvalue()
    pos = 2  # after SOI: skip the APPn segments Pillow wrote (JFIF APP0, EXIF APP1)
    while data[pos] == 0xFF and 0xE0 <= data[pos + 1] <= 0xEF:
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    extra = _segment(0xFFE1, XMP_HEADER + _xmp(xmp_title, xmp_author)) + _segment(0xFFFE, comment.encode("utf-8"))
    return data[:pos] + extra + data[pos:]


def j2k_with_comment(pixels: np.ndarray, comment: str) -> bytes:
    """A lossless JPEG 2000 codestream of ``pixels`` with a COM marker segment (FF64, Rcom 1: Latin-1 text)
    inserted right after SIZ, inside the main header."""
    from openjpeg import encode

    data = bytes(encode(pixels, photometric_interpretation=2, use_mct=False))  # 2: greyscale
    if data[:4] != b"\xff\x4f\xff\x51":
        raise RuntimeError("synth bug: J2K codestream does not start with SOC, SIZ")
    siz_end = 4 + struct.unpack(">H", data[4:6])[0]
    com = _segment(0xFF64, b"\x00\x01" + comment.encode("latin-1"))
    return data[:siz_end] + com + data[siz_end:]


def png_with_text(pixels: np.ndarray, key: str, text: str) -> bytes:
    """A greyscale PNG with one text chunk (tEXt when Latin-1, else iTXt in UTF-8)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(key, text)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, "PNG", pnginfo=info)
    return buf.getvalue()
