"""Setting values on datasets while recording them for the answer key.

Builders never write an identifying value straight into a dataset: they go through :class:`FilePlanter`, which
sets the element and records (path, value, VR, kind, file).  That way the key cannot drift from the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from deidpipe.synth.answer_key import Hidden, Planted, Reference, SafePrivate, is_searchable, search_bytes_for


def private_step(group: int, creator: str, offset: int) -> str:
    """The path step of a private element, as the TCIA knowledge base writes it."""
    return f'({group:04x},"{creator}",{offset:02x})'


@dataclass
class _Rec:
    value: str
    path: str
    vr: str
    kind: str
    patient: int | None
    files: list[str] = field(default_factory=list)
    contains: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # the embedded identifiers that are names: split into words


def _iso_of(value: str, vr: str) -> str | None:
    if vr in {"DA", "DT"} and len(value) >= 8 and value[:8].isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:8]}"
    return None


@dataclass
class _HiddenRec:
    value: str
    where: str
    kind: str
    patient: int | None
    files: list[str] = field(default_factory=list)
    written: list[bytes] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


class Recorder:
    """Collects planted values, safe private elements and references over the whole archive."""

    def __init__(self) -> None:
        self._planted: dict[tuple[str, str, int | None], _Rec] = {}
        self._hidden: dict[tuple[str, str, int | None], _HiddenRec] = {}
        self._safe: dict[tuple[str, str], SafePrivate] = {}
        self._refs: list[tuple[str, str, str, str]] = []
        self.file_charsets: dict[str, str | list[str]] = {}

    def for_file(self, rel: str, patient: int | None, charset: str | list[str]) -> FilePlanter:
        """A planter for one file written under SpecificCharacterSet ``charset``."""
        self.file_charsets[rel] = charset
        return FilePlanter(self, rel, patient)

    def record(self, rel: str, patient: int | None, path: str, value: str, vr: str, kind: str,
               contains: list[str], names: list[str]) -> None:
        rec = self._planted.setdefault((path, value, patient), _Rec(value, path, vr, kind, patient))
        if rel not in rec.files:
            rec.files.append(rel)
        for c in [*contains, *names]:
            if c not in rec.contains:
                rec.contains.append(c)
        rec.names.extend(n for n in names if n not in rec.names)

    def hide(self, rel: str, patient: int | None, where: str, value: str, kind: str,
             written: list[bytes] | None = None, names: list[str] | None = None) -> None:
        """Record ``value`` planted outside the DICOM attributes of ``rel`` (a name, a document, a stream
        segment).  The search looks for it in UTF-8 and Latin-1, for each word of ``names``, and for the exact
        bytes ``written`` (e.g. a PDF's UTF-16BE string)."""
        rec = self._hidden.setdefault((where, value, patient), _HiddenRec(value, where, kind, patient))
        if rel not in rec.files:
            rec.files.append(rel)
        rec.written.extend(w for w in written or [] if w not in rec.written)
        rec.names.extend(n for n in names or [] if n not in rec.names)

    def hidden(self) -> list[Hidden]:
        """The values planted outside DICOM attributes, with their search bytes."""
        out: list[Hidden] = []
        for rec in self._hidden.values():
            vr = "PN" if rec.kind == "name" and "^" in rec.value else "LO"
            found = search_bytes_for(rec.value, vr, ["ISO_IR 192"], list(rec.names), list(rec.names))
            found += [w for w in rec.written if w not in found and is_searchable(w)]
            out.append(Hidden(value=rec.value, where=rec.where, kind=rec.kind, patient=rec.patient,
                              files=sorted(rec.files), search_bytes=[b.hex() for b in found],
                              searchable=bool(found)))
        return sorted(out, key=lambda h: (h.patient if h.patient is not None else -1, h.where, h.value))

    def record_safe(self, rel: str, path: str, creator: str, group: int, offset: int, vr: str, value: str) -> None:
        entry = self._safe.setdefault((path, value), SafePrivate(path, creator, group, offset, vr, value, []))
        if rel not in entry.files:
            entry.files.append(rel)

    def record_ref(self, rel: str, path: str, uid: str, kind: str) -> None:
        self._refs.append((rel, path, uid, kind))

    def planted(self) -> list[Planted]:
        """The planted records with their search bytes, computed from the charsets of the files they are in."""
        out: list[Planted] = []
        for rec in self._planted.values():
            # OB blobs are written as UTF-8 whatever the dataset's charset (see FilePlanter.private)
            written: list[str | list[str]] = ["ISO_IR 192"] if rec.vr == "OB" else []
            for rel in rec.files if rec.vr != "OB" else []:
                cs = self.file_charsets[rel]
                if cs not in written:
                    written.append(cs)
            patterns = search_bytes_for(rec.value, rec.vr, written, rec.contains, rec.names)
            searchable = bool(patterns) and is_searchable(rec.value.encode("utf-8"))
            out.append(Planted(
                value=rec.value, path=rec.path, vr=rec.vr, kind=rec.kind, patient=rec.patient,
                files=sorted(rec.files), search_bytes=[p.hex() for p in patterns] if searchable else [],
                searchable=searchable, date_iso=_iso_of(rec.value, rec.vr), contains=rec.contains,
            ))
        return sorted(out, key=lambda p: (p.patient if p.patient is not None else -1, p.path, p.value))

    def safe_private(self) -> list[SafePrivate]:
        return sorted(self._safe.values(), key=lambda s: (s.path, s.value))

    def references(self, targets: dict[tuple[str, str], list[str]]) -> list[Reference]:
        """References with the files holding each referenced UID (``targets`` maps (kind, uid) to files)."""
        return [Reference(rel, path, uid, kind, sorted(targets.get((kind, uid), [])))
                for rel, path, uid, kind in self._refs]


class FilePlanter:
    """Plants values into the datasets of one file."""

    def __init__(self, recorder: Recorder, rel: str, patient: int | None) -> None:
        self.recorder = recorder
        self.rel = rel
        self.patient = patient

    def put(self, ds: Dataset, keyword: str, value: Any, kind: str, prefix: str = "",
            contains: list[str] | None = None, names: list[str] | None = None) -> None:
        """Set ``ds.<keyword> = value`` and record it (each value of a multi-valued element separately).

        ``contains`` and ``names`` list the identifiers embedded in a free-text value; names are also searched
        word by word, the others (phone numbers, institution names) only whole, as their words are generic.
        """
        setattr(ds, keyword, value)
        vr = dictionary_VR(keyword)
        values = value if isinstance(value, list) else [value]
        for v in values:
            self.note(prefix + keyword, str(v), vr, kind, contains, names)

    def note(self, path: str, value: str, vr: str, kind: str, contains: list[str] | None = None,
             names: list[str] | None = None) -> None:
        """Record a value that is already in the dataset (set by other means, e.g. a private block)."""
        self.recorder.record(self.rel, self.patient, path, value, vr, kind, list(contains or []), list(names or []))

    def private(self, ds: Dataset, group: int, creator: str, offset: int, vr: str, value: Any,
                kind: str | None, prefix: str = "", contains: list[str] | None = None,
                names: list[str] | None = None) -> str:
        """Add a private element; ``kind`` None marks a KB-safe ('k') element.  Returns its path."""
        ds.private_block(group, creator, create=True).add_new(offset, vr, value)
        path = prefix + private_step(group, creator, offset)
        if vr == "SQ":
            return path
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if kind is None:
            self.recorder.record_safe(self.rel, path, creator, group, offset, vr, text)
        else:
            self.note(path, text if not isinstance(value, bytes) else _ob_text(value), vr, kind, contains, names)
        return path

    def hide(self, where: str, value: str, kind: str, written: list[bytes] | None = None,
             names: list[str] | None = None) -> None:
        """Record a value planted in this file outside its DICOM attributes (see :meth:`Recorder.hide`)."""
        self.recorder.hide(self.rel, self.patient, where, value, kind, written, names)

    def ref(self, path: str, uid: str, kind: str) -> None:
        """Record a cross-object reference held at ``path`` in this file."""
        self.recorder.record_ref(self.rel, path, uid, kind)


def _ob_text(data: bytes) -> str:
    """The printable text carried by an OB blob (the part a leak search can find)."""
    return data.rstrip(b"\0").decode("utf-8")
