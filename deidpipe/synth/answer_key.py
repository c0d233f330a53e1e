"""The answer key: what was planted where, what refers to what, and how to search output bytes for leaks.

It is written as ``answer_key.json`` next to the archive.  Paths use pydicom keywords joined by ``.``, with
``[i]`` for a sequence item; a private element is written ``(gggg,"Creator",ee)`` (lower-case hex, ``ee`` the
element byte within the creator's block, as the TCIA knowledge base writes it); file meta elements start with
``file_meta.``.  :func:`lookup` resolves such a path against a dataset.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydicom.charset import convert_encodings, encode_string
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

KEY_VERSION = 2
#: Separates a zip file's archive path from a member's name in the key's paths: ``a/export.zip!/001.dcm``.
MEMBER_SEP = "!/"

# Encodings a leaked value may take in someone's output: as written, re-encoded to UTF-8, or to Latin-1.
_ALTERNATIVE_CHARSETS = ["ISO_IR 192", "ISO_IR 100"]


@dataclass
class FileEntry:
    """One DICOM file of the archive."""

    path: str  # relative to the archive root, POSIX separators
    sop_class_uid: str
    sop_instance_uid: str
    specific_character_set: str  # as written, multiple values joined by "\\"


@dataclass
class SeriesEntry:
    """One series of a study."""

    series_instance_uid: str
    modality: str
    series_number: int
    frame_of_reference_uid: str | None
    files: list[FileEntry] = field(default_factory=list)


@dataclass
class StudyEntry:
    """One study; the dates of a patient's studies give the intervals a date shift must preserve."""

    study_instance_uid: str
    study_date: str  # YYYYMMDD
    study_date_iso: str  # YYYY-MM-DD
    study_time: str
    accession_number: str
    series: list[SeriesEntry] = field(default_factory=list)


@dataclass
class PatientEntry:
    """One patient with the identifiers the archive carries for them."""

    index: int
    patient_id: str
    name: str
    birth_date: str
    birth_date_iso: str
    charset: str  # SpecificCharacterSet of the patient's image files, joined by "\\"
    studies: list[StudyEntry] = field(default_factory=list)


@dataclass
class Planted:
    """One identifying value planted at one attribute path (for one patient, in one or more files)."""

    value: str
    path: str
    vr: str
    kind: str  # name, id, date, time, datetime, uid, address, phone, institution, free_text, ae_title, ...
    patient: int | None  # patient index, or None for values not tied to one patient
    files: list[str]
    search_bytes: list[str]  # hex; empty when not searchable
    searchable: bool
    date_iso: str | None = None  # for DA (and the date part of DT) values
    contains: list[str] = field(default_factory=list)  # identifiers embedded in a free-text value

    def patterns(self) -> list[bytes]:
        """The byte strings a leak search must look for."""
        return [bytes.fromhex(h) for h in self.search_bytes]


@dataclass
class SafePrivate:
    """A private element the TCIA knowledge base marks safe ('k'), holding a harmless number or code."""

    path: str
    creator: str
    group: int
    element: int  # byte within the block, as in the KB
    vr: str
    value: str
    files: list[str]


#: For each Reference.kind, the attribute of the target object that holds the referenced UID.
REFERENCE_TARGET_ATTRIBUTE = {"sop": "SOPInstanceUID", "series": "SeriesInstanceUID", "study": "StudyInstanceUID",
                              "frame_of_reference": "FrameOfReferenceUID"}


@dataclass
class Reference:
    """A cross-object reference; ``target_files`` are the archive files that hold the referenced UID."""

    file: str
    path: str
    uid: str
    kind: str  # sop, series, study, frame_of_reference
    target_files: list[str]


@dataclass
class Hidden:
    """An identifying value planted outside the DICOM attributes: in a file or folder name, inside an
    encapsulated document (PDF, CDA), a compressed stream's metadata segment (JPEG COM/APPn, J2K COM), a
    DICOMDIR's records, or a sidecar file.  ``where`` says which, e.g. ``pdf:/Info/Author``, ``jpeg:COM``,
    ``path``; ``files`` are archive paths (a member of a zip is written ``outer.zip!/member``)."""

    value: str
    where: str
    kind: str
    patient: int | None
    files: list[str]
    search_bytes: list[str]  # hex; what a search of the unpacked bytes must look for
    searchable: bool

    def patterns(self) -> list[bytes]:
        """The byte strings a leak search must look for."""
        return [bytes.fromhex(h) for h in self.search_bytes]


#: Expected outcomes of a de-identification run, per entry of the archive (see :class:`Extra`).
EXPECT_WRITE = "write"
EXPECT_SKIP_DICOMDIR = "skip: DICOMDIR"
EXPECT_SKIP_DOCUMENT = "skip: encapsulated document"  # under the default policy (documents: skip)
EXPECT_SKIP_NOT_DICOM = "skip: not DICOM"


@dataclass
class Extra:
    """An entry of the archive beyond the plain image/SR/RT files: what it is and what a run should do with it
    under the default policy.  ``what``: dicomdir, sidecar, zip, encapsulated_pdf, encapsulated_cda, gsps,
    seg, ecg, jpeg, j2k, dicom_in_zip."""

    path: str
    what: str
    expected: str


@dataclass
class AnswerKey:
    """Everything a test needs to judge a de-identified copy of the archive."""

    seed: int
    rows: int
    cols: int
    patients: list[PatientEntry]
    planted: list[Planted]
    references: list[Reference]
    safe_private: list[SafePrivate]
    version: int = KEY_VERSION
    hidden: list[Hidden] = field(default_factory=list)
    extras: list[Extra] = field(default_factory=list)

    def files(self) -> list[str]:
        """Every DICOM file of the archive on disk, relative paths (DICOM objects inside zips: :meth:`members`;
        the DICOMDIR: :attr:`extras`)."""
        return [path for path in self._entries() if MEMBER_SEP not in path]

    def members(self) -> list[str]:
        """The DICOM objects held inside zip files, as ``outer.zip!/member`` (and ``a.zip!/b.zip!/c``)."""
        return [path for path in self._entries() if MEMBER_SEP in path]

    def objects(self) -> list[str]:
        """Every DICOM object of the archive, on disk or in a zip (not the DICOMDIR)."""
        return self._entries()

    def _entries(self) -> list[str]:
        return [f.path for p in self.patients for st in p.studies for se in st.series for f in se.files]

    def expected(self, outcome: str) -> list[str]:
        """Archive entries (objects, DICOMDIR, sidecars) a run should treat as ``outcome`` (EXPECT_*)."""
        special = {e.path: e.expected for e in self.extras}
        listed = [p for p in self._entries() if special.get(p, EXPECT_WRITE) == outcome]
        return listed + [e.path for e in self.extras if e.expected == outcome and e.path not in listed
                         and e.what != "zip"]

    def planted_paths(self) -> set[str]:
        """Distinct attribute paths (item indices kept) that hold planted values."""
        return {p.path for p in self.planted}

    def search_patterns(self) -> set[bytes]:
        """Every byte string that must not appear in a fully de-identified output."""
        return {b for p in [*self.planted, *self.hidden] for b in p.patterns()}

    def save(self, path: Path) -> None:
        """Write the key as indented, key-sorted JSON (byte-identical for a seed)."""
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True, ensure_ascii=False) + "\n", "utf-8")

    @classmethod
    def load(cls, path: Path | str) -> AnswerKey:
        """Read a key written by :meth:`save`."""
        raw: dict[str, Any] = json.loads(Path(path).read_text("utf-8"))
        patients = [
            PatientEntry(
                **{**p, "studies": [
                    StudyEntry(**{**st, "series": [
                        SeriesEntry(**{**se, "files": [FileEntry(**f) for f in se["files"]]})
                        for se in st["series"]
                    ]})
                    for st in p["studies"]
                ]}
            )
            for p in raw["patients"]
        ]
        return cls(
            seed=raw["seed"],
            rows=raw["rows"],
            cols=raw["cols"],
            patients=patients,
            planted=[Planted(**p) for p in raw["planted"]],
            references=[Reference(**r) for r in raw["references"]],
            safe_private=[SafePrivate(**s) for s in raw["safe_private"]],
            version=raw.get("version", KEY_VERSION),
            hidden=[Hidden(**h) for h in raw.get("hidden", [])],
            extras=[Extra(**e) for e in raw.get("extras", [])],
        )


def is_searchable(data: bytes) -> bool:
    """Too-generic byte strings (under 4 bytes, or all digits and under 6) would find false leaks."""
    if len(data) < 4:
        return False
    return not (data.isdigit() and len(data) < 6)


def encode_value(value: str, vr: str, charset: str | list[str]) -> bytes:
    """The bytes pydicom writes for ``value`` under a SpecificCharacterSet (PN groups encoded separately)."""
    encodings = convert_encodings(charset)
    if vr == "PN":
        return PersonName(value).encode(encodings)
    if vr in {"SH", "LO", "ST", "LT", "UT", "UC", "OB", "UN"}:
        return encode_string(value, encodings)
    return value.encode("ascii")


def _encodings_of(text: str, vr: str, charsets: list[str | list[str]]) -> list[bytes]:
    """``text`` in each charset that can represent it without replacement characters."""
    out: list[bytes] = []
    for cs in charsets:
        # pydicom warns, then writes '?', for characters a charset lacks: such an encoding is not one it takes
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                data = encode_value(text, vr, cs)
            except (UnicodeError, ValueError, UserWarning):
                continue
        if data not in out:
            out.append(data)
    return out


def _strip_escapes(data: bytes) -> bytes:
    """ISO 2022 bytes without their escape sequences: what a run in the middle of a longer text looks like."""
    return re.sub(rb"\x1b[$()*+\-./]{1,2}[@A-Z]", b"", data)


def _name_parts(pn: str) -> list[str]:
    """Each component group of a PN value and, within it, each component alone."""
    parts: list[str] = []
    for group in pn.split("="):
        parts.append(group)
        parts.extend(c for c in group.split("^") if c and c != group)
    return parts


def search_bytes_for(value: str, vr: str, written: list[str | list[str]], contains: list[str],
                     names: list[str] | None = None) -> list[bytes]:
    """Byte strings a leak search must look for.

    The value in every charset it was written in plus UTF-8 and Latin-1 (an output may re-encode it); for a
    name also each component group and each component; for free text also each embedded identifier, and the
    words of the embedded names (not of institutions or phone numbers: their words are generic); for ISO 2022
    encodings also the bytes without escape sequences.  Generic strings are left out.
    """
    charsets = [*written, *_ALTERNATIVE_CHARSETS]
    texts: list[tuple[str, str]] = [(value, vr)]
    if vr == "PN":
        texts += [(part, "PN") for part in _name_parts(value)]
    for extra in contains:
        texts.append((extra, "LO"))
        if extra in (names or []):
            texts += [(w, "LO") for w in re.split(r"[\^ ]", extra) if w and w != extra]
    found: list[bytes] = []
    for text, text_vr in texts:
        for data in _encodings_of(text, text_vr, charsets):
            for candidate in (data, _strip_escapes(data)):
                if is_searchable(candidate) and candidate not in found:
                    found.append(candidate)
    return found


def _parse_private(step: str) -> tuple[int, str, int] | None:
    m = re.fullmatch(r'\(([0-9A-Fa-f]{4}),"([^"]+)",([0-9A-Fa-f]{2})\)', step)
    return (int(m[1], 16), m[2], int(m[3], 16)) if m else None


def lookup(ds: Dataset, path: str) -> DataElement | None:
    """The element at an answer-key path, or None when any step is missing."""
    current: Dataset = ds
    if path.startswith("file_meta."):
        current = ds.file_meta
        path = path[len("file_meta."):]
    steps = re.findall(r'\([^)]*\)(?:\[\d+\])?|[A-Za-z0-9]+(?:\[\d+\])?', path)
    for n, step in enumerate(steps):
        m = re.fullmatch(r"(.*?)(?:\[(\d+)\])?", step)
        assert m is not None
        name, index = m[1], m[2]
        private = _parse_private(name)
        elem: DataElement | None
        if private:
            group, creator, offset = private
            try:
                elem = current.private_block(group, creator)[offset]
            except KeyError:
                return None
        else:
            elem = current.data_element(name) if name in current else None
        if elem is None:
            return None
        if index is None:
            return elem if n == len(steps) - 1 else None
        seq = elem.value
        if int(index) >= len(seq):
            return None
        current = seq[int(index)]
    return None
