"""Encapsulated PDF under ``documents: redact``: the text out, screened, into a new PDF that holds nothing else.

A PDF hides identity in many places besides its page text: the document information dictionary (/Info: /Author,
/Title, ...), the XMP metadata stream, embedded files, form fields, annotations, JavaScript, images (a scanned
letter). Rather than chase each, the document is rebuilt from its text alone:

1. pypdf extracts the text of every page (content streams decompressed, fonts' encodings applied);
2. each page's text goes through the free-text screen (the object's own identifiers, then presidio);
3. :func:`write_text_pdf` writes a new PDF by hand: Helvetica, WinAnsi encoding, one page per 60 lines (each
   page of the input starts a new page), no /Info, no metadata, no images, no attachments, no actions;
4. the new PDF is read back with pypdf and its text must be the screened text, with none of the object's
   identifiers in it; otherwise the object is refused.

A PDF with no extractable text (a scan) is skipped with :data:`~deidpipe.documents.NO_EXTRACTABLE_TEXT`. Characters
outside Windows-1252 become ``?`` (the standard 14 fonts carry no others).
"""

from __future__ import annotations

import io
import logging
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from deidpipe.documents import NO_EXTRACTABLE_TEXT, Screen
from deidpipe.errors import DeidError, InputError, SkippedError
from deidpipe.header.text import DenyList

#: Bounds on what is read from one document (a hostile PDF must not take the worker's memory).
MAX_PAGES = 2000
MAX_TEXT_CHARS = 4_000_000
LINES_PER_PAGE = 60
WRAP_COLUMNS = 90
_FONT_SIZE = 10
_LEADING = 12
_PAGE_W, _PAGE_H = 595, 842  # A4 in points
_MARGIN = 50
_ENCODING = "cp1252"  # WinAnsiEncoding


class DocumentCheckError(DeidError):
    """The rewritten document did not read back as the screened text (nothing is written)."""


@contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """pypdf's warnings and log lines name objects of the input; none of them reaches a log."""
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _clean(text: str) -> str:
    """Text as extracted, without control characters (NUL, form feeds) but newlines and tabs."""
    return "".join(c if c in "\n\t" or c >= " " else " " for c in text.replace("\r\n", "\n").replace("\r", "\n"))


def extract_pages(data: bytes) -> list[str]:
    """The text of each page of a PDF. Raises :class:`InputError` (fixed reasons) for one that cannot be read."""
    from pypdf import PdfReader

    with _quiet_pypdf():
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted and not reader.decrypt(""):
                raise InputError(None, "encapsulated PDF is encrypted")
            if len(reader.pages) > MAX_PAGES:
                raise InputError(None, f"encapsulated PDF has more than {MAX_PAGES} pages")
            pages, total = [], 0
            for page in reader.pages:
                text = _clean(page.extract_text() or "")
                total += len(text)
                if total > MAX_TEXT_CHARS:
                    raise InputError(None, "encapsulated PDF holds more text than this pipeline rewrites")
                pages.append(text)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - pypdf raises many types on broken files; none quotes a value here
            raise InputError(None, f"encapsulated PDF cannot be read ({type(exc).__name__})") from None
    return pages


def _pdf_string(line: str) -> bytes:
    """A PDF literal string of ``line`` in WinAnsi: ``\\``, ``(`` and ``)`` escaped, other bytes as they are."""
    raw = line.encode(_ENCODING, errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def layout(pages: list[str]) -> list[list[str]]:
    """Output pages of at most :data:`LINES_PER_PAGE` lines, lines wrapped at :data:`WRAP_COLUMNS` characters;
    each input page starts a new output page; an empty input page gives an empty page."""
    out: list[list[str]] = []
    for text in pages:
        lines = [piece for line in text.split("\n")
                 for piece in (textwrap.wrap(line.replace("\t", "    "), WRAP_COLUMNS) or [""])]
        while lines and not lines[-1].strip():
            lines.pop()
        chunks = [lines[i:i + LINES_PER_PAGE] for i in range(0, len(lines), LINES_PER_PAGE)] or [[]]
        out += chunks
    return out


def write_text_pdf(pages: list[list[str]]) -> bytes:
    """A minimal PDF 1.4: a catalog, a page tree, one Helvetica font and, per page, one uncompressed content
    stream that shows its lines. No document information dictionary, no metadata, no other object."""
    objects: list[bytes] = []  # object n is objects[n - 1]
    first_page = 4
    kids = " ".join(f"{first_page + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for i, lines in enumerate(pages):
        content = [f"BT /F1 {_FONT_SIZE} Tf {_LEADING} TL {_MARGIN} {_PAGE_H - _MARGIN} Td".encode()]
        content += [_pdf_string(line) + b" Tj T*" for line in lines]
        content.append(b"ET")
        stream = b"\n".join(content)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {_PAGE_W} {_PAGE_H}] "
                       f"/Resources << /Font << /F1 3 0 R >> >> /Contents {first_page + 2 * i + 1} 0 R >>".encode())
        objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream")
    return assemble_pdf(objects)


def assemble_pdf(objects: list[bytes], trailer: bytes = b"") -> bytes:
    """A PDF 1.4 file from its object bodies (object n is ``objects[n - 1]``, object 1 the catalog), with a
    correct cross-reference table; ``trailer``: more trailer entries (e.g. ``b"/Info 8 0 R"``)."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R ".encode() + trailer
    out += f" >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _letters(text: str) -> str:
    """Text without whitespace: what must survive layout (wrapping, line ends) unchanged."""
    return "".join(text.split())


def check_rewritten(pdf: bytes, pages: list[list[str]], denylist: DenyList) -> None:
    """Read the new PDF back: its text must be the laid-out text, and hold none of the object's identifiers."""
    from pypdf import PdfReader

    expected = _letters("".join(line.encode(_ENCODING, errors="replace").decode(_ENCODING)
                                for lines in pages for line in lines))
    with _quiet_pypdf():
        try:
            reader = PdfReader(io.BytesIO(pdf), strict=True)
            text = "\n".join(page.extract_text() or "" for page in reader.pages)
            extra = reader.metadata is not None or "/Metadata" in reader.trailer["/Root"]
        except Exception as exc:  # noqa: BLE001
            raise DocumentCheckError(f"rewritten PDF does not read back ({type(exc).__name__})") from None
    if extra or len(reader.pages) != len(pages):
        raise DocumentCheckError("rewritten PDF has other content than its pages of text")
    if _letters(text) != expected:
        raise DocumentCheckError("rewritten PDF does not read back as the screened text")
    if denylist.hits(text):
        raise DocumentCheckError("an identifying value of the object survived in the rewritten PDF")


def redact_pdf(data: bytes, screen: Screen, denylist: DenyList) -> tuple[bytes, int]:
    """The redacted PDF of ``data`` and the number of text spans replaced. Raises :class:`SkippedError` when the
    PDF has no extractable text, :class:`InputError` when it cannot be read, :class:`DocumentCheckError` when the
    rewritten document does not check."""
    pages = extract_pages(data)
    if not any(any(c.isalnum() for c in text) for text in pages):
        raise SkippedError(NO_EXTRACTABLE_TEXT)
    screened, spans = [], 0
    for text in pages:
        clean, n = screen(text)
        screened.append(clean)
        spans += n
    laid_out = layout(screened)
    pdf = write_text_pdf(laid_out)
    check_rewritten(pdf, laid_out, denylist)
    return pdf, spans
