"""Writing a whole synthetic archive and its answer key."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from deidpipe.synth.answer_key import (
    AnswerKey,
    Extra,
    FileEntry,
    PatientEntry,
    SeriesEntry,
    StudyEntry,
    encode_value,
)
from deidpipe.synth.documents import rt_structure_set, sr_document
from deidpipe.synth.objects import (
    COMPREHENSIVE_SR,
    CT_IMAGE,
    MR_IMAGE,
    RT_STRUCT,
    US_IMAGE,
    Context,
    SeriesPlan,
    StudyPlan,
    ct_image,
    mr_image,
    patient_modules,
    series_module,
    sop_common,
    study_module,
    uid_for,
    us_image,
)
from deidpipe.synth.people import UTF8, Person, fmt_date, fmt_time, make_person
from deidpipe.synth.plant import FilePlanter, Recorder
from deidpipe.synth.search import read_member, search_bytes
from deidpipe.synth.tree import build_fourth, new_fileset, plan_fourth_study, write_dicomdir, write_fourth

KEY_FILE = "answer_key.json"
# Fixed, so that files do not change with the installed pydicom version.
IMPLEMENTATION_UID = generate_uid(entropy_srcs=["deidpipe.synth implementation"])
IMPLEMENTATION_VERSION = "DEIDPIPE_SYNTH1"


def _charset_str(cs: str | list[str]) -> str:
    return "\\".join(cs) if isinstance(cs, list) else cs


def _plan(person: Person, seed: int, rng: random.Random) -> list[StudyPlan]:
    """Three studies months apart: MR first, then CT with its RT structure set and SR report, then US."""
    first = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randint(0, 7 * 365))
    dates = [first, first + dt.timedelta(days=rng.randint(40, 200)), first + dt.timedelta(days=rng.randint(220, 500))]
    layout = [
        [("MR", MR_IMAGE, 3, "MR brain")],
        [("CT", CT_IMAGE, 3, "CT chest"), ("RTSTRUCT", RT_STRUCT, 1, "Structures"), ("SR", COMPREHENSIVE_SR, 1,
                                                                                     "Report")],
        [("US", US_IMAGE, 2, "US abdomen")],
    ]
    studies = []
    for n, (date, series) in enumerate(zip(dates, layout, strict=True), start=1):
        uid = uid_for(person, seed, n)
        acc = f"ACC{rng.randint(10_000_000, 99_999_999)}"
        study = StudyPlan(
            number=n, uid=uid, date=date, time=fmt_time(rng), accession=acc,
            study_id=f"ST{rng.randint(100_000, 999_999)}", requested_procedure_id=f"RP{rng.randint(100_000, 999_999)}",
            description=f"Follow-up for {person.natural_name} MRN {person.patient_id}",
        )
        for s, (modality, sop_class, count, what) in enumerate(series, start=1):
            se_uid = f"{uid}.{s}"
            frame = None
            if modality in {"CT", "MR"}:
                frame = generate_uid(entropy_srcs=["frame", str(seed), person.patient_id, se_uid])
            plan = SeriesPlan(modality, s, se_uid, f"{what} for {person.natural_name}", sop_class, count, frame,
                              [f"{se_uid}.{i}" for i in range(1, count + 1)])
            plan.files = [f"patient{person.index:03d}/study{n}/series{s:02d}_{modality}/{i:03d}.dcm"
                          for i in range(1, count + 1)]
            study.series.append(plan)
        studies.append(study)
    return studies


def _file_meta(ds: Dataset, fp: FilePlanter, person: Person) -> FileMetaDataset:
    """File meta with a site-identifying AE title and private information naming the patient."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fp.note("file_meta.MediaStorageSOPInstanceUID", ds.SOPInstanceUID, "UI", "uid")
    fp.ref("file_meta.MediaStorageSOPInstanceUID", ds.SOPInstanceUID, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    fp.put(meta, "SourceApplicationEntityTitle", person.site.pacs_ae, "ae_title", "file_meta.")
    fp.put(meta, "PrivateInformationCreatorUID", generate_uid(entropy_srcs=["private-info", person.site.name]),
           "uid", "file_meta.")
    info = f"SITE={person.site.name};MRN={person.patient_id}"
    meta.PrivateInformation = info.encode("ascii")  # even length is ensured by the text below
    if len(meta.PrivateInformation) % 2:
        meta.PrivateInformation += b"\0"
    fp.note("file_meta.PrivateInformation", info, "OB", "free_text", [person.site.name, person.patient_id])
    return meta


def generate_archive(out_dir: Path, *, patients: int = 3, seed: int = 0, rows: int = 16, cols: int = 16,
                     burned_text: bool = False, real_world: bool = True) -> AnswerKey:
    """Write a synthetic DICOM archive under ``out_dir`` and its ``answer_key.json``; return the key.

    Every UID, date, name and pixel comes from ``seed``: the same arguments give byte-identical files.
    Layout: ``patient<NNN>/study<N>/series<NN>_<MODALITY>/<NNN>.dcm`` for the first three studies (folders
    named by index).  Patients cycle through the character sets ISO_IR 100, ISO 2022 IR 87, ISO 2022 IR 149 and
    ISO_IR 192; SR reports are always UTF-8, so three patients already cover all four.

    With ``real_world`` (the default) each patient also gets a fourth study laid out as real archives are
    (see :mod:`deidpipe.synth.tree`): JPEG and JPEG 2000 captures indexed by a root ``DICOMDIR``, a GSPS, a
    segmentation, a 12-lead ECG, an Encapsulated PDF and CDA in a folder named after the patient, sidecar files
    and a zip within a zip.  The key lists their hidden values (``hidden``) and expected outcomes (``extras``).
    """
    if patients < 1:
        raise ValueError("patients must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = Recorder()
    targets: dict[tuple[str, str], list[str]] = defaultdict(list)
    entries: list[PatientEntry] = []
    people: list[Person] = []
    extras: list[Extra] = []
    fileset = new_fileset() if real_world else None
    in_fileset: dict[str, str] = {}
    for index in range(patients):
        rng = random.Random(f"deidpipe.synth/{seed}/{index}")
        person = make_person(index, rng)
        people.append(person)
        studies = _plan(person, seed, rng)
        fourth = plan_fourth_study(person, seed, rng, studies[-1]) if real_world else None
        entry = PatientEntry(index, person.patient_id, person.name, fmt_date(person.birth_date),
                             person.birth_date.isoformat(), _charset_str(person.specific_character_set))
        late: dict[str, Dataset] = {}  # the fourth study's datasets, written by write_fourth
        for s_index, study in enumerate([*studies, *([fourth] if fourth else [])]):
            previous = studies[s_index - 1] if s_index else None
            st_entry = StudyEntry(study.uid, fmt_date(study.date), study.date.isoformat(), study.time,
                                  study.accession)
            for series in study.series:
                se_entry = SeriesEntry(series.uid, series.modality, series.number, series.frame_of_reference)
                for i, rel in enumerate(series.files):
                    ctx = Context(person, study, series, i, random.Random(f"{seed}/{rel}"), seed, rows, cols,
                                  previous)
                    ds, charset = _build(ctx, rec, rel, studies)
                    if study is fourth:
                        late[rel] = ds
                        if rel.startswith("PT"):
                            in_fileset[ds.SOPInstanceUID] = rel
                    else:
                        path = out_dir / rel
                        path.parent.mkdir(parents=True, exist_ok=True)
                        ds.save_as(path, enforce_file_format=True)
                    se_entry.files.append(FileEntry(rel, ds.SOPClassUID, ds.SOPInstanceUID, _charset_str(charset)))
                    targets[("sop", ds.SOPInstanceUID)].append(rel)
                    targets[("series", ds.SeriesInstanceUID)].append(rel)
                    targets[("study", ds.StudyInstanceUID)].append(rel)
                    if "FrameOfReferenceUID" in ds:
                        targets[("frame_of_reference", ds.FrameOfReferenceUID)].append(rel)
                st_entry.series.append(se_entry)
            entry.studies.append(st_entry)
        if fourth is not None:
            extras += write_fourth(out_dir, person, fourth, late, rec, fileset)
        entries.append(entry)
    if fileset is not None:
        extras.insert(0, write_dicomdir(out_dir, fileset, people, rec, in_fileset))
    key = AnswerKey(seed=seed, rows=rows, cols=cols, patients=entries, planted=rec.planted(),
                    references=rec.references(targets), safe_private=rec.safe_private(), hidden=rec.hidden(),
                    extras=extras)
    _self_check(out_dir, key, rec)
    key.save(out_dir / KEY_FILE)
    if burned_text:  # only when asked: the default archive stays byte-identical
        from deidpipe.synth.burned import add_burned_images

        add_burned_images(out_dir, key, seed)
    return key


def _build(ctx: Context, rec: Recorder, rel: str, studies: list[StudyPlan]) -> tuple[Dataset, str | list[str]]:
    """One file's dataset, every identifying value planted through the recorder."""
    modality = ctx.series.modality
    charset = UTF8 if modality == "SR" else ctx.person.specific_character_set
    fp = rec.for_file(rel, ctx.person.index, charset)
    ds = Dataset()
    sop_common(ds, fp, ctx, ctx.series.sop_class, ctx.series.sop_uids[ctx.index], charset)
    patient_modules(ds, fp, ctx)
    study_module(ds, fp, ctx)
    series_module(ds, fp, ctx, image=modality in {"CT", "MR", "US", "OT"})
    builders: dict[str, Callable[[Dataset, FilePlanter, Context], None]] = {
        "CT": ct_image, "MR": mr_image, "US": us_image,
    }
    syntax = None
    if ctx.study.number == 4:
        syntax = build_fourth(ds, fp, ctx)
    elif modality in builders:
        builders[modality](ds, fp, ctx)
    else:
        ct = next(se for st in studies for se in st.series if se.modality == "CT")
        mr_study = next(st for st in studies if any(se.modality == "MR" for se in st.series))
        if modality == "SR":
            sr_document(ds, fp, ctx, ct, mr_study, mr_study.series[0])
        else:
            rt_structure_set(ds, fp, ctx, ct)
    ds.file_meta = _file_meta(ds, fp, ctx.person)
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.preamble = b"\0" * 128
    return ds, charset


def _self_check(out_dir: Path, key: AnswerKey, rec: Recorder) -> None:
    """The key must be right: each planted value, as encoded in each file's charset, is in that file's bytes;
    each hidden value is found by the leak search in its file (unpacked) or path."""
    data = {rel: read_member(out_dir, rel) for rel in key.objects()}
    for planted in key.planted:
        for rel in planted.files:
            # OB blobs are written as UTF-8 whatever the dataset's charset, as vendors' blobs are
            charset = UTF8 if planted.vr == "OB" else rec.file_charsets[rel]
            needle = encode_value(planted.value, planted.vr, charset)
            if needle not in data[rel]:
                raise RuntimeError(f"synth bug: {planted.path} not written as recorded in {rel}")
    for hidden in key.hidden:
        for rel in hidden.files:
            found = hidden.where.startswith("path:") and any(p.lower() in rel.encode().lower()
                                                             for p in hidden.patterns())
            if not found:
                blob = data[rel] if rel in data else (out_dir / rel).read_bytes()
                found = bool(search_bytes(blob, hidden.patterns()))
            if not found:
                raise RuntimeError(f"synth bug: {hidden.where} not written as recorded in {rel}")
    for ref in key.references:
        if not ref.target_files:
            raise RuntimeError(f"synth bug: dangling reference {ref.path} in {ref.file}")
