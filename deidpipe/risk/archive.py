"""Risk targets for whole archives: the header quasi-identifiers of :mod:`deidpipe.risk.qi`, generalised per
patient until the release meets a target, with the least loss (:mod:`deidpipe.risk.generalise`).

``deidpipe run`` with a ``risk_target`` (the policy's section, :class:`ArchiveTarget`) reads every object's header
as the header stage writes it (:func:`object_labels`: the patient's keyed token and, per quasi-identifier, the
value's label at every level of its hierarchy), builds one row per patient (:func:`patient_table`), chooses one
transformation for the whole release (:func:`choose`), and then, while writing, applies it to every object
(:func:`generalise_dataset`); the patients it must suppress are set aside ("suppressed for risk"). ``scan`` on the
output reads the same quasi-identifiers (:func:`deidpipe.risk.qi.qi_row`) and finds the classes the search
counted, or larger ones.

Built-in hierarchies (level 0 first; ``*``: the value is removed):

========================  ====================================================================================
``age``                   whole years, top-coded at 90 (HIPAA: 90 and older are one class) -> 5, 10, 20-year
                          bands -> ``*``. Written as Patient's Age (0010,1010) = the band's first year
                          (``040Y``); Patient's Birth Date (0010,0030) is emptied, so the age is read from there.
``sex``                   Patient's Sex (0010,0040) -> ``*`` (emptied)
``study_year``            the year of Study Date (0008,0020) -> decade -> ``*``. Every date (DA, DT) of the
                          object, at any depth, becomes the first day of the decade, or is emptied at ``*``:
                          the other dates would tell the year (intervals between dates are lost with it).
``institution``           Institution Name (0008,0080) -> ``*`` (with its Address and Department)
``station``               Station Name (0008,1010) -> ``*``
``device_serial``         Device Serial Number (0018,1000) -> ``*``
``manufacturer_model``    Manufacturer (0008,0070) and Model Name (0008,1090) -> the manufacturer -> ``*``
``body_part``             Body Part Examined (0018,0015) -> ``*``
========================  ====================================================================================

A policy overrides them per column: ``age`` and ``study_year`` take interval widths (``5,10,*``: labels are the
interval's first value), the single-element text columns (``institution``, ``station``, ``device_serial``,
``body_part``) an ARX hierarchy file whose labels are written into the element.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from deidpipe.risk.classes import SUPPRESSED
from deidpipe.risk.errors import RiskError
from deidpipe.risk.qi import age_years, element_text, patient_token, study_year
from deidpipe.risk.target import AGE_WIDTHS, FILE_COLUMNS, TOP_AGE, YEAR_WIDTHS, ArchiveTarget, widths_of

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl
    from pydicom.dataset import Dataset

    from deidpipe.risk.hierarchy import Hierarchy

#: A patient's cell when none of its objects has a value (a control character: no header text equals it).
ABSENT = "\x1f-"
#: Between the distinct values of a patient's composite cell. ``scan`` joins them with ``|``; a separator no
#: value holds keeps two composites apart that ``|`` would run together (a finer split: never fewer classes).
JOIN = "\x1e"
#: Per column, the elements that carry the same fact elsewhere in the object: once the column is generalised
#: (level above 0) they are removed at every depth (a Contributing Equipment Sequence item repeats the
#: device's make, model, serial, station and institution), the named element itself excepted where it takes a
#: label. Sex: Pregnancy Status tells it; age: the birth time. From the rows of PS3.15 Table E.1-1 that the
#: Retain Patient Characteristics, Device Identity and Institution Identity options keep.
COMPANIONS: dict[str, tuple[str, ...]] = {
    "age": ("PatientAge", "PatientBirthTime"),
    "sex": ("PatientSex", "PatientSexNeutered", "PregnancyStatus"),
    "institution": ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
                    "InstitutionCodeSequence", "InstitutionalDepartmentTypeCodeSequence", "ClinicalTrialSiteID",
                    "ClinicalTrialSiteName"),
    "station": ("StationName", "PerformedStationName", "ScheduledStationName", "PerformedStationAETitle",
                "ScheduledStationAETitle", "TreatmentMachineName"),
    "device_serial": ("DeviceSerialNumber", "DeviceUID", "DeviceID", "DetectorID", "GantryID", "PlateID",
                      "SourceSerialNumber", "UniqueDeviceIdentifier", "UDISequence"),
    "manufacturer_model": ("ManufacturerModelName",),
    "body_part": ("BodyPartExamined",),
}
#: Type 2 elements (present, possibly empty, in their modules): emptied rather than removed.
_EMPTIED = frozenset({"PatientSex", "PatientBirthDate", "Manufacturer", "StudyDate"})
#: The audit's action for an element that a release generalised.
ACTION = "risk:generalised"
SUPPRESSED_REASON = "suppressed for risk: quasi-identifiers too rare"


def _bands(value: int, widths: Sequence[int], top: int | None) -> tuple[str, ...]:
    """``value`` (top-coded at ``top``) and the first value of its interval at each width, then ``*``."""
    if top is not None:
        value = min(value, top)
    firsts = [value if top is not None and value >= top else value // w * w for w in widths]
    return (str(value), *(str(f) for f in firsts), SUPPRESSED)


# -- one object's labels --------------------------------------------------------------------------------------
Labeller = Callable[["Dataset"], "tuple[str, ...] | None"]


@lru_cache(maxsize=4)
def _labellers(target: ArchiveTarget) -> dict[str, Labeller]:
    """Per column: the object's labels at every level (level 0 first, ``*`` last), or None without a value."""
    specs = dict(target.hierarchies)
    files = {c: {row[0]: row for row in rows} for c, rows in target.files}
    age_w = widths_of("age", specs["age"]) if "age" in specs else AGE_WIDTHS
    year_w = widths_of("study_year", specs["study_year"]) if "study_year" in specs else YEAR_WIDTHS

    def age(ds: Dataset) -> tuple[str, ...] | None:
        a = age_years(ds)
        return _bands(int(a), age_w, TOP_AGE) if a is not None else None

    def year(ds: Dataset) -> tuple[str, ...] | None:
        y = study_year(ds)
        return _bands(int(y), year_w, None) if y is not None else None

    def single(keyword: str, column: str) -> Labeller:
        table = files.get(column)

        def labels(ds: Dataset) -> tuple[str, ...] | None:
            v = element_text(ds, keyword)
            if v is None:
                return None
            if table is None:
                return (v, SUPPRESSED)
            row = table.get(v)
            if row is None:
                raise RiskError(f"risk_target: a value of {column} is missing from its hierarchy file")
            return row
        return labels

    def model(ds: Dataset) -> tuple[str, ...] | None:
        man, name = element_text(ds, "Manufacturer"), element_text(ds, "ManufacturerModelName")
        if man is None and name is None:
            return None
        # level 0 keeps the two apart (\x1f) where scan joins them with a space: a finer split, never a coarser
        return (f"{man or ''}\x1f{name or ''}", man or ABSENT, SUPPRESSED)

    out: dict[str, Labeller] = {"age": age, "sex": single("PatientSex", "sex"), "study_year": year,
                                "manufacturer_model": model}
    out.update({c: single(k, c) for c, k in FILE_COLUMNS.items()})
    return {c: out[c] for c in target.qi}


def object_labels(ds: Dataset, key: Any, target: ArchiveTarget) -> dict[str, Any]:
    """One object's row, read from its header as the header stage wrote it: ``patient`` (the keyed token
    :func:`deidpipe.risk.qi.qi_row` gives) and per quasi-identifier its labels (a list, level 0 first) or None."""
    from deidpipe.risk.qi import PATIENT

    row: dict[str, Any] = {PATIENT: patient_token(ds, key)}
    for column, labeller in _labellers(target).items():
        labels = labeller(ds)
        row[column] = list(labels) if labels is not None else None
    return row


# -- many objects' labels, compactly ----------------------------------------------------------------------------
class ObjectLabels:
    """The labels of many objects (:func:`object_labels` rows), interned: each distinct patient token and label
    tuple is held once, and an object is its patient's index and one index per column. An archive of a million
    objects holds a few hundred bytes each, not a dict of lists of strings (the run keeps them from the choice
    to the check of what was written, and in its state folder for resume)."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        self._patients: dict[str, int] = {}
        self._tuples: dict[str, dict[tuple[str, ...] | None, int]] = {c: {None: 0} for c in self.columns}
        self._objects: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._objects

    def add(self, object_id: str, row: Mapping[str, Any]) -> None:
        """Keep one object's row (from :func:`object_labels`)."""
        from deidpipe.risk.qi import PATIENT

        patient = self._patients.setdefault(str(row[PATIENT]), len(self._patients))
        ids = []
        for column in self.columns:
            labels = row.get(column)
            table = self._tuples[column]
            ids.append(table.setdefault(tuple(labels) if labels else None, len(table)))
        self._objects[object_id] = (patient, *ids)

    def objects_of(self, patients: Iterable[str]) -> frozenset[str]:
        """The ids of the objects kept for these patients (keyed tokens)."""
        wanted = {self._patients[p] for p in patients if p in self._patients}
        return frozenset(oid for oid, packed in self._objects.items() if packed[0] in wanted)

    def rows(self, object_ids: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """The rows of ``object_ids`` (default: every object kept), made again one at a time."""
        from deidpipe.risk.qi import PATIENT

        names = self._names()
        labels = {c: {i: t for t, i in table.items()} for c, table in self._tuples.items()}
        for oid in self._objects if object_ids is None else object_ids:
            packed = self._objects.get(oid)
            if packed is None:
                continue
            row: dict[str, Any] = {PATIENT: names[packed[0]]}
            for column, i in zip(self.columns, packed[1:], strict=True):
                found = labels[column][i]
                row[column] = list(found) if found is not None else None
            yield row

    def _names(self) -> list[str]:
        names = [""] * len(self._patients)
        for name, i in self._patients.items():
            names[i] = name
        return names

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "patients": self._names(),
                "labels": {c: [list(t) if t is not None else None for t in table] for c, table in
                           self._tuples.items()},
                "objects": {oid: list(packed) for oid, packed in self._objects.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObjectLabels:
        out = cls(data["columns"])
        out._patients = {name: i for i, name in enumerate(data["patients"])}
        out._tuples = {c: {(tuple(t) if t is not None else None): i for i, t in enumerate(labels)}
                       for c, labels in data["labels"].items()}
        out._objects = {oid: tuple(packed) for oid, packed in data["objects"].items()}
        return out


# -- the patients' table --------------------------------------------------------------------------------------
def _composite(labels: Iterable[tuple[str, ...]], height: int) -> tuple[str, ...]:
    """A patient's labels from its objects' distinct labels: at each level the sorted distinct labels joined (by
    :data:`JOIN`), as :func:`deidpipe.risk.qi.patient_rows` joins them by ``|`` (``*`` stays ``*``)."""
    rows = list(labels)
    if not rows:
        return (ABSENT,) * (height - 1) + (SUPPRESSED,)
    return tuple(JOIN.join(sorted({r[level] for r in rows})) for level in range(height))


@dataclass
class PatientTable:
    """The release's quasi-identifier table (one row per patient, polars) and a hierarchy per column."""

    table: pl.DataFrame
    hierarchies: dict[str, Hierarchy]


def patient_table(rows: Iterable[Mapping[str, Any]], target: ArchiveTarget) -> PatientTable:
    """One row per patient from :func:`object_labels` rows; the hierarchies hold each patient's composite."""
    import polars as pl

    from deidpipe.risk.hierarchy import Hierarchy
    from deidpipe.risk.qi import PATIENT

    per: dict[str, dict[str, set[tuple[str, ...]]]] = defaultdict(lambda: defaultdict(set))
    heights: dict[str, int] = {}
    for row in rows:
        slot = per[str(row[PATIENT])]
        for column in target.qi:
            labels = row.get(column)
            if labels:
                slot[column].add(tuple(labels))
                heights[column] = len(labels)
    columns: dict[str, list[str]] = {PATIENT: sorted(per)}
    hierarchy_rows: dict[str, dict[str, tuple[str, ...]]] = {c: {} for c in target.qi}
    for column in target.qi:
        height = heights.get(column, 2)
        cells = []
        for patient in columns[PATIENT]:
            comp = _composite(per[patient].get(column, ()), height)
            if hierarchy_rows[column].setdefault(comp[0], comp) != comp:  # a file mapping one value two ways
                raise RiskError(f"risk_target: the hierarchy of {column} gives one value two generalisations")
            cells.append(comp[0])
        columns[column] = cells
    table = pl.DataFrame(columns, schema={c: pl.String for c in columns})
    sources = dict(target.hierarchies)
    hierarchies = {c: Hierarchy.from_rows(c, rows.values(), sources.get(c, "built-in"))
                   for c, rows in hierarchy_rows.items()}
    return PatientTable(table, hierarchies)


@dataclass(frozen=True)
class ReleaseChoice:
    """What a run chose: ``levels`` per quasi-identifier, the patients to suppress (keyed tokens), and figures
    for the report (records, suppressed, loss, risk before and after as ``deidpipe risk`` scores them)."""

    levels: dict[str, int]
    suppressed: frozenset[str]
    figures: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"levels": self.levels, "suppressed": sorted(self.suppressed), "figures": self.figures}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReleaseChoice:
        return cls({str(k): int(v) for k, v in data["levels"].items()}, frozenset(data["suppressed"]),
                   dict(data.get("figures", {})))


def choose(rows: Iterable[Mapping[str, Any]], target: ArchiveTarget) -> ReleaseChoice:
    """The transformation with the least loss that meets ``target`` on the patients of ``rows``, and the
    patients it suppresses. Raises :class:`deidpipe.risk.generalise.NoTransformation` when none does."""
    from deidpipe.risk.qi import PATIENT
    from deidpipe.risk.release import anonymise

    pt = patient_table(rows, target)
    if pt.table.height == 0:
        return ReleaseChoice({c: 0 for c in target.qi}, frozenset(), {"patients": 0})
    released, result = anonymise(pt.table, list(target.qi), pt.hierarchies, target.target, suppressed="drop")
    # the suppressed patients leave the release whole: the rows "drop" left out
    suppressed = frozenset(set(pt.table[PATIENT].to_list()) - set(released[PATIENT].to_list()))
    figures = result.to_dict()
    figures["patients"] = pt.table.height
    return ReleaseChoice(dict(result.levels), suppressed, figures)


# -- applying the choice to one object ------------------------------------------------------------------------
def _drop(ds: Dataset, keywords: Iterable[str], top: bool = True) -> int:
    """Remove ``keywords`` at every depth (those of :data:`_EMPTIED` are emptied at the top level, where their
    modules want them present); how many elements changed."""
    wanted = set(keywords)
    changed = 0
    for elem in list(ds):
        if elem.keyword in wanted:
            if top and elem.keyword in _EMPTIED:
                if elem.value not in (None, ""):
                    elem.value = ""
                    changed += 1
            else:
                del ds[elem.tag]
                changed += 1
        elif elem.VR == "SQ":
            for item in elem.value or ():
                changed += _drop(item, wanted, top=False)
    return changed


def _dates(ds: Dataset, value: Callable[[str], str]) -> int:
    """Every DA and DT value of ``ds`` at any depth replaced by ``value(old)``; how many elements changed."""
    changed = 0
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value or ():
                changed += _dates(item, value)
        elif elem.VR in ("DA", "DT") and elem.value not in (None, ""):
            old = elem.value if isinstance(elem.value, str) else str(elem.value)
            elem.value = value(old)
            changed += 1
    return changed


def _label(labels: tuple[str, ...] | None, level: int) -> str | None:
    """The label at ``level``, or None where the object has no readable value (then it is removed, not kept)."""
    return labels[level] if labels is not None else None


def generalise_dataset(ds: Dataset, target: ArchiveTarget) -> dict[str, int]:
    """Apply the run's chosen ``target.levels`` to one de-identified object (changed in place); the audit's
    counts. A value the labels cannot read (a malformed Patient's Age, an undecodable name) is removed once its
    column is generalised, never left as it was; the companions of a generalised column (:data:`COMPANIONS`) go
    at every depth. Raises :class:`RiskError` when no choice was made (a release cannot be written without one)."""
    if target.levels is None:
        raise RiskError("no release transformation was chosen for this risk target")
    levels = dict(target.levels)
    labellers = _labellers(target)
    labels = {c: labellers[c](ds) for c in levels}  # read everything before anything changes
    changed = 0
    if "age" in levels:
        # whatever the level: the birth date would give the exact age back, and an age the labels cannot read
        # (045y, 45) would stay exact (top-coding included) if it were not removed
        label = _label(labels["age"], levels["age"])
        changed += _drop(ds, ("PatientBirthDate", *COMPANIONS["age"]))
        if label is not None and label != SUPPRESSED:
            ds.PatientAge = f"{int(label):03d}Y"
    if levels.get("study_year", 0) > 0:
        label = _label(labels["study_year"], levels["study_year"])
        decade = label if label not in (None, SUPPRESSED) else None
        changed += _dates(ds, (lambda _old: f"{decade}0101") if decade else (lambda _old: ""))
        if changed and "LongitudinalTemporalInformationModified" in ds:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
    for column, keyword in (("sex", "PatientSex"), *FILE_COLUMNS.items()):
        if levels.get(column, 0) > 0:
            label = _label(labels[column], levels[column])
            changed += _drop(ds, COMPANIONS[column])
            if label is not None and label != SUPPRESSED and column in FILE_COLUMNS:
                setattr(ds, keyword, label)  # a hierarchy file's intermediate label
    if levels.get("manufacturer_model", 0) > 0:
        changed += _drop(ds, COMPANIONS["manufacturer_model"])
        if levels["manufacturer_model"] > 1:
            changed += _drop(ds, ("Manufacturer",))
    return {ACTION: changed} if changed else {}


def check_release(rows: Iterable[Mapping[str, Any]], target: ArchiveTarget, levels: Mapping[str, int]) -> dict:
    """Whether the objects of ``rows`` (those written), at ``levels``, meet ``target`` with nothing more
    suppressed: the release as it is, not as it was chosen. Returns ``met``, ``patients``, ``k`` and the
    prosecutor's highest and average risk (``deidpipe risk``'s figures on the generalised table)."""
    from dataclasses import replace

    from deidpipe.risk.generalise import Problem
    from deidpipe.risk.release import apply_levels
    from deidpipe.risk.report import assess

    pt = patient_table(rows, target)
    if pt.table.height == 0:
        return {"met": True, "patients": 0}
    qi = list(target.qi)
    strict = replace(target.target, suppression=0.0)
    met = Problem(pt.table, qi, pt.hierarchies, strict).evaluate([levels[c] for c in qi]).passes
    scored = assess(apply_levels(pt.table, pt.hierarchies, levels), qi).to_dict()
    return {"met": bool(met), "patients": pt.table.height, "k": scored.get("k"),
            "prosecutor": scored.get("prosecutor")}
