"""The quasi-identifier table: one row per patient (or per study), built from the headers, scored by
:mod:`deidpipe.risk`.

Each object gives a few facts an attacker could know from elsewhere (:data:`QI_COLUMNS`); the rows of one patient
(or study) are merged, each column holding the sorted distinct values joined by ``|`` (a patient seen at two
institutions is more identifiable than one seen at either). The patient is named by a keyed token of the header's
patient key (Patient ID, else name, else study), a study by a keyed token of its Study Instance UID: the table
never holds the raw Patient ID or UID.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydicom.dataset import Dataset

from deidpipe.risk.columns import PATIENT, QI_COLUMNS, STUDY, UNITS

__all__ = ["PATIENT", "QI_COLUMNS", "STUDY", "UNITS", "parse_qi", "patient_rows", "patient_token", "qi_row", "qi_table",
           "study_year"]


def element_text(ds: Dataset, keyword: str) -> str | None:
    try:
        v = ds.get(keyword)
    except Exception:  # noqa: BLE001 - an undecodable value counts as absent
        return None
    if v is None:
        return None
    if not isinstance(v, str | bytes) and hasattr(v, "__iter__"):
        v = "\\".join(str(x) for x in v)
    text = str(v).strip().rstrip("\x00").strip()
    return text or None


def age_years(ds: Dataset) -> str | None:
    """Age in whole years: Patient's Age (``045Y``, ``006M``), else from the birth and study dates."""
    a = element_text(ds, "PatientAge")
    if a and len(a) == 4 and a[:3].isdigit() and a[3] in "DWMY":
        n = int(a[:3])
        years = {"Y": n, "M": n // 12, "W": n // 52, "D": n // 365}[a[3]]
        if years > 0 or n > 0:
            return str(years)
    birth, study = element_text(ds, "PatientBirthDate"), element_text(ds, "StudyDate")
    if birth and study and len(birth) >= 8 and len(study) >= 8 and birth[:8].isdigit() and study[:8].isdigit():
        if birth[:4] == "1900" or study[:4] == "1900":
            return None  # dummies
        years = int(study[:4]) - int(birth[:4]) - (study[4:8] < birth[4:8])
        return str(years) if years >= 0 else None
    return None


def study_year(ds: Dataset) -> str | None:
    """The year of Study Date (None when absent, malformed or the 1900 dummy)."""
    year = element_text(ds, "StudyDate")
    return year[:4] if year and year[:4].isdigit() and year[:4] != "1900" else None


def patient_token(ds: Dataset, key: Any) -> str:
    """The patient's keyed token (the table's ``patient`` column): never the Patient ID itself."""
    from deidpipe.header.context import patient_key

    return key.token("scan-patient", patient_key(ds), 16)


def qi_row(ds: Dataset, key: Any) -> dict[str, str | None]:
    """The quasi-identifiers of one object, and its patient's keyed token."""
    from deidpipe.header.context import patient_key

    makers = (element_text(ds, "Manufacturer"), element_text(ds, "ManufacturerModelName"))
    make = " ".join(x for x in makers if x) or None
    return {
        PATIENT: patient_token(ds, key),
        STUDY: key.token("scan-study", f"{patient_key(ds)}/{element_text(ds, 'StudyInstanceUID') or ''}", 16),
        "age": age_years(ds),
        "sex": element_text(ds, "PatientSex"),
        "study_year": study_year(ds),
        "institution": element_text(ds, "InstitutionName"),
        "station": element_text(ds, "StationName"),
        "device_serial": element_text(ds, "DeviceSerialNumber"),
        "manufacturer_model": make,
        "body_part": element_text(ds, "BodyPartExamined"),
    }


def patient_rows(rows: list[dict[str, str | None]], unit: str = PATIENT) -> list[dict[str, str | None]]:
    """One row per patient (or study): each column the sorted distinct non-empty values joined by ``|`` (None if
    none). The first column is named ``unit`` and holds the keyed token."""
    merged: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for row in rows:
        slot = merged[str(row[unit])]
        for col in QI_COLUMNS:
            if row.get(col):
                slot[col].add(str(row[col]))
    out = []
    for token in sorted(merged):
        cols = merged[token]
        out.append({unit: token, **{c: ("|".join(sorted(cols[c])) if cols.get(c) else None) for c in QI_COLUMNS}})
    return out


def qi_table(rows: list[dict[str, str | None]], unit: str = PATIENT) -> Any:  # -> pl.DataFrame
    import polars as pl

    if unit not in UNITS:
        raise ValueError(f"the quasi-identifier table's unit is {' or '.join(UNITS)}")
    merged = patient_rows(rows, unit)
    schema = {unit: pl.String, **{c: pl.String for c in QI_COLUMNS}}
    return pl.DataFrame(merged, schema=schema)


def parse_qi(spec: str | None) -> list[str]:
    """``--qi age,sex``: the chosen columns (default all); unknown names raise ValueError."""
    if not spec:
        return list(QI_COLUMNS)
    cols = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in cols if c not in QI_COLUMNS]
    if unknown or not cols:
        raise ValueError(f"unknown quasi-identifier(s) {', '.join(unknown) or '(none)'}; "
                         f"known: {', '.join(QI_COLUMNS)}")
    return cols
