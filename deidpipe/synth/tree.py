"""The fourth study of each patient, laid out the way real archives are: in folders named after the patient,
next to sidecar files, in a zip holding a zip, and indexed by a DICOMDIR.

Layout (``<FOLDER>`` is ``<Family>^<Given>_<MRN>/<YYYYMMDD>``, the study date):

* ``PT<nnnnnn>/ST000000/SE000000/IM00000{0,1}``: the JPEG baseline and JPEG 2000 Secondary Captures, written by
  pydicom's FileSet, with the ``DICOMDIR`` at the archive root indexing them (its records name the patient);
* ``<FOLDER>/PR_<accession>.dcm``, ``SEG.dcm``, ``ECG.dcm``, ``report_pdf.dcm``, ``summary_cda.dcm``;
* ``<FOLDER>/notes.txt``, ``summary.json``, ``photo.png``: sidecars naming the patient (not DICOM);
* ``<FOLDER>/export.zip``: ``IMG001.dcm`` and ``inner.zip`` holding ``IMG002.dcm``.

Every identifying value in a name, a document, a stream segment or a sidecar is recorded as hidden in the key.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import zipfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from deidpipe.synth.answer_key import (
    EXPECT_SKIP_DICOMDIR,
    EXPECT_SKIP_DOCUMENT,
    EXPECT_SKIP_NOT_DICOM,
    EXPECT_WRITE,
    MEMBER_SEP,
    Extra,
)
from deidpipe.synth.objects import Context, SeriesPlan, StudyPlan, uid_for
from deidpipe.synth.payloads import png_with_text
from deidpipe.synth.people import Person, fmt_date, fmt_time
from deidpipe.synth.plant import FilePlanter, Recorder
from deidpipe.synth.realworld import (
    ECG_12_LEAD,
    ENCAPSULATED_CDA,
    ENCAPSULATED_PDF,
    GSPS,
    SC_IMAGE,
    SEGMENTATION,
    ecg,
    encapsulated_document,
    family_given,
    presentation_state,
    sc_image,
    segmentation,
)

EXPECT_OPEN = "open: archive"  # a zip: its members are objects of the run
DICOMDIR = "DICOMDIR"
# (modality, SOP class, description, file names, what) of the fourth study's series, in series-number order
_SERIES = [
    ("OT", SC_IMAGE, "Captures", ["jpeg", "j2k"], ["jpeg", "j2k"]),
    ("PR", GSPS, "Annotations", ["PR_{acc}.dcm"], ["gsps"]),
    ("SEG", SEGMENTATION, "Segmentation", ["SEG.dcm"], ["seg"]),
    ("ECG", ECG_12_LEAD, "Resting ECG", ["ECG.dcm"], ["ecg"]),
    ("DOC", ENCAPSULATED_PDF, "Discharge PDF", ["report_pdf.dcm"], ["encapsulated_pdf"]),
    ("DOC", ENCAPSULATED_CDA, "Discharge CDA", ["summary_cda.dcm"], ["encapsulated_cda"]),
    ("OT", SC_IMAGE, "Outside images", ["export.zip!/IMG001.dcm", "export.zip!/inner.zip!/IMG002.dcm"],
     ["dicom_in_zip", "dicom_in_zip"]),
]


def patient_folder(person: Person, study: StudyPlan) -> str:
    """``<Family>^<Given>_<MRN>/<YYYYMMDD>``: how a user exports a patient's study by hand."""
    family, given = family_given(person.name)
    return f"{family}^{given}_{person.patient_id}/{fmt_date(study.date)}"


def plan_fourth_study(person: Person, seed: int, rng: random.Random, after: StudyPlan) -> StudyPlan:
    """The study of the real-world objects, some weeks after ``after``; file paths are archive paths."""
    date = after.date + dt.timedelta(days=rng.randint(20, 90))
    uid = uid_for(person, seed, 4)
    study = StudyPlan(
        number=4, uid=uid, date=date, time=fmt_time(rng), accession=f"ACC{rng.randint(10_000_000, 99_999_999)}",
        study_id=f"ST{rng.randint(100_000, 999_999)}", requested_procedure_id=f"RP{rng.randint(100_000, 999_999)}",
        description=f"Emergency visit of {person.natural_name} MRN {person.patient_id}",
    )
    folder = patient_folder(person, study)
    for s, (modality, sop_class, what, names, _) in enumerate(_SERIES, start=1):
        se_uid = f"{uid}.{s}"
        plan = SeriesPlan(modality, s, se_uid, f"{what} for {person.natural_name}", sop_class, len(names), None,
                          [f"{se_uid}.{i}" for i in range(1, len(names) + 1)])
        if s == 1:  # FileSet names its files; the patient's index gives the PATIENT record's
            plan.files = [f"PT{person.index:06d}/ST000000/SE000000/IM{i:06d}" for i in range(len(names))]
        else:
            plan.files = [f"{folder}/{n.format(acc=study.accession)}" for n in names]
        study.series.append(plan)
    return study


def build_fourth(ds: Dataset, fp: FilePlanter, ctx: Context) -> str | None:
    """Fill ``ds`` for a file of the fourth study; returns the transfer syntax when not Explicit VR LE."""
    series = ctx.series
    captures = ctx.study.series[0]
    if series.number == 1:
        return sc_image(ds, fp, ctx, ("jpeg", "j2k")[ctx.index])
    if series.number == 7:
        return sc_image(ds, fp, ctx, "none")
    if series.modality == "PR":
        presentation_state(ds, fp, ctx, captures)
    elif series.modality == "SEG":
        segmentation(ds, fp, ctx, captures)
    elif series.modality == "ECG":
        ecg(ds, fp, ctx)
    else:
        encapsulated_document(ds, fp, ctx, "pdf" if series.sop_class == ENCAPSULATED_PDF else "cda")
    return None


def extras_of(study: StudyPlan) -> list[Extra]:
    """What each entry of the fourth study is, and what a run should do with it (default policy)."""
    out: list[Extra] = []
    for series, (_, _, _, _, whats) in zip(study.series, _SERIES, strict=True):
        for rel, what in zip(series.files, whats, strict=True):
            expected = EXPECT_SKIP_DOCUMENT if what.startswith("encapsulated") else EXPECT_WRITE
            out.append(Extra(rel, what, expected))
    return out


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    """A deterministic zip (fixed timestamps) of ``members``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def write_fourth(out_dir: Path, person: Person, study: StudyPlan, datasets: dict[str, Dataset],
                 rec: Recorder, fileset: FileSet) -> list[Extra]:
    """Write the fourth study's objects (``datasets`` by archive path), the sidecars and the zips; stage the
    captures in ``fileset`` (written with the DICOMDIR by :func:`write_dicomdir`).  Returns the extras."""
    folder = patient_folder(person, study)
    zipped: dict[str, bytes] = {}
    for rel, ds in datasets.items():
        if rel.startswith("PT"):
            fileset.add(ds)
        elif MEMBER_SEP in rel:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            zipped[rel] = buf.getvalue()
        else:
            path = out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
    inner = _zip([(r.split(MEMBER_SEP)[-1], d) for r, d in zipped.items() if r.count(MEMBER_SEP) == 2])
    outer = [(r.split(MEMBER_SEP)[1], d) for r, d in zipped.items() if r.count(MEMBER_SEP) == 1]
    (out_dir / folder / "export.zip").write_bytes(_zip([*outer, ("inner.zip", inner)]))
    extras = [Extra(f"{folder}/export.zip", "zip", EXPECT_OPEN), *extras_of(study)]
    extras += _sidecars(out_dir, person, folder, rec)
    _record_paths(person, study, folder, rec)
    return extras


def _sidecars(out_dir: Path, person: Person, folder: str, rec: Recorder) -> list[Extra]:
    """A text note, a JSON summary and a PNG photo with a text chunk, each naming the patient."""
    p, mrn = person, person.patient_id
    birth = p.birth_date.isoformat()
    files = {
        "notes.txt": f"Patient {p.natural_name}, MRN {mrn}, born {birth}. Call {p.phone}.\n".encode(),
        "summary.json": (json.dumps({"patient": p.name, "mrn": mrn, "birthDate": birth}, ensure_ascii=False,
                                    indent=1) + "\n").encode(),
    }
    y, x = np.mgrid[0:16, 0:16]
    files["photo.png"] = png_with_text(((x + y) * 8).astype(np.uint8), "Author", p.natural_name)
    out: list[Extra] = []
    for name, data in files.items():
        rel = f"{folder}/{name}"
        (out_dir / rel).write_bytes(data)
        fp = rec.for_file(rel, p.index, "ISO_IR 192")
        fp.hide(f"sidecar:{name}", p.natural_name if name != "summary.json" else p.name, "name",
                names=[p.natural_name] if name != "summary.json" else None)
        if name != "photo.png":
            fp.hide(f"sidecar:{name}", mrn, "id")
            fp.hide(f"sidecar:{name}", birth, "date")
        if name == "notes.txt":
            fp.hide(f"sidecar:{name}", p.phone, "phone")
        out.append(Extra(rel, "sidecar", EXPECT_SKIP_NOT_DICOM))
    return out


def _record_paths(person: Person, study: StudyPlan, folder: str, rec: Recorder) -> None:
    """The identifying values in folder and file names: name and MRN, study date, accession number."""
    patient_dir, date_dir = folder.split("/")
    family, given = family_given(person.name)
    # Recorder.hide, not for_file: a path has no SpecificCharacterSet, and the PR file's must stay its own
    rec.hide(patient_dir, person.index, "path:folder", f"{family}^{given}", "name", names=[family, given])
    rec.hide(patient_dir, person.index, "path:folder", person.patient_id, "id")
    rec.hide(folder, person.index, "path:folder", date_dir, "date")
    rec.hide(study.series[1].files[0], person.index, "path:file", study.accession, "id")


def new_fileset() -> FileSet:
    """A pydicom FileSet with a fixed UID and ID (so the DICOMDIR is the same for a seed)."""
    fs = FileSet()
    fs.ID = "SYNTHCD"
    fs.UID = generate_uid(entropy_srcs=["deidpipe.synth fileset"])
    return fs


def write_dicomdir(out_dir: Path, fileset: FileSet, people: list[Person], rec: Recorder,
                   planned: dict[str, str]) -> Extra:
    """Write the staged captures and the DICOMDIR indexing them; check each landed where the key says
    (``planned``: SOP Instance UID -> archive path)."""
    fileset.write(out_dir)
    for instance in fileset:
        rel = Path(instance.path).resolve().relative_to(out_dir.resolve()).as_posix()
        if rel != planned.get(instance.SOPInstanceUID):
            raise RuntimeError("synth bug: FileSet wrote a capture elsewhere than the key says")
    for p in people:
        rec.hide(DICOMDIR, p.index, "dicomdir:PATIENT record PatientID", p.patient_id, "id")
        family, given = family_given(p.name)
        rec.hide(DICOMDIR, p.index, "dicomdir:PATIENT record PatientName", f"{family}^{given}", "name",
                 names=[family, given])
    return Extra(DICOMDIR, "dicomdir", EXPECT_SKIP_DICOMDIR)
