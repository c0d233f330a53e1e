"""The modules shared by every object (patient, study, series, equipment, SOP common) and the image objects.

Each builder fills a :class:`~pydicom.dataset.Dataset` for one file and plants its identifying values through a
:class:`~deidpipe.synth.plant.FilePlanter`, so the answer key records exactly what was written.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from deidpipe.synth.people import Person, age_string, fmt_date, fmt_time
from deidpipe.synth.plant import FilePlanter
from deidpipe.synth.private import add_ct_private, add_mr_private, add_us_private

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
RT_STRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
# Retired "Detached Study Management" class: the standard still prescribes it for study references.
STUDY_REF_CLASS = "1.2.840.10008.3.1.2.3.1"

# "UIDs count as identifiers": some scanners build UIDs from a site root plus birth date and MRN.  Ours do too.
UID_ROOT = "1.2.826.0.1.3680043.2.1125"


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """A Code Sequence Macro item."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


@dataclass
class SeriesPlan:
    """One series to write: what it is and the UIDs its files get."""

    modality: str
    number: int
    uid: str
    description: str
    sop_class: str
    count: int
    frame_of_reference: str | None = None
    sop_uids: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class StudyPlan:
    """One study of a patient, with its date (the intervals between studies are what date shifting keeps)."""

    number: int
    uid: str
    date: dt.date
    time: str
    accession: str
    study_id: str
    requested_procedure_id: str
    description: str
    series: list[SeriesPlan] = field(default_factory=list)


@dataclass
class Context:
    """What a builder needs besides the dataset: the patient, their studies, and a per-file random source."""

    person: Person
    study: StudyPlan
    series: SeriesPlan
    index: int  # instance index within the series, 0-based
    rng: random.Random
    seed: int
    rows: int
    cols: int
    other_study: StudyPlan | None = None


def uid_for(person: Person, seed: int, *parts: int) -> str:
    """A UID that embeds the patient's birth date and MRN digits (a planted identifier, as in the wild)."""
    uid = ".".join([UID_ROOT, fmt_date(person.birth_date), person.mrn_digits, str(seed % 1_000_000)]
                   + [str(p) for p in parts])
    assert len(uid) <= 64, uid
    return uid


def sop_common(ds: Dataset, fp: FilePlanter, ctx: Context, sop_class: str, sop_uid: str,
               charset: str | list[str]) -> None:
    """SOP Common module."""
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    fp.put(ds, "SOPInstanceUID", sop_uid, "uid")
    fp.put(ds, "InstanceCreationDate", fmt_date(ctx.study.date), "date")
    fp.put(ds, "InstanceCreationTime", fmt_time(ctx.rng), "time")
    fp.put(ds, "InstanceCreatorUID", generate_uid(entropy_srcs=["creator", ctx.person.site.name]), "uid")


def patient_modules(ds: Dataset, fp: FilePlanter, ctx: Context) -> None:
    """Patient, Patient Study (and, as real archives carry them, Patient Demographic) attributes."""
    p = ctx.person
    fp.put(ds, "PatientName", p.name, "name")
    fp.put(ds, "PatientID", p.patient_id, "id")
    fp.put(ds, "IssuerOfPatientID", p.issuer, "id")
    fp.put(ds, "PatientBirthDate", fmt_date(p.birth_date), "date")
    # Too generic to search for (the key marks them searchable: false), but quasi-identifiers all the same.
    fp.put(ds, "PatientSex", p.sex, "characteristic")
    other = Dataset()
    fp.put(other, "PatientID", p.other_id, "id", "OtherPatientIDsSequence[0].")
    fp.put(other, "IssuerOfPatientID", p.other_issuer, "id", "OtherPatientIDsSequence[0].")
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    fp.put(ds, "PatientComments", f"{p.local_name}: allergic to latex, prefers phone {p.phone}", "free_text",
           contains=[p.phone], names=[p.local_name])
    # Patient Demographic module attributes: not in the image IODs (dciodvfy warns), but hospitals send them.
    fp.put(ds, "PatientAddress", p.address, "address")
    fp.put(ds, "PatientTelephoneNumbers", p.phone, "phone")
    fp.put(ds, "PatientMotherBirthName", p.mother_birth_name, "name")
    fp.put(ds, "PatientAge", age_string(p.birth_date, ctx.study.date), "age")
    ds.PatientSize = "1.72"
    fp.put(ds, "PatientWeight", "68", "characteristic")
    fp.put(ds, "AdditionalPatientHistory",
           f"Prior surgery at {p.site.name}; contact {p.natural_name} on {p.phone}", "free_text",
           contains=[p.site.name, p.phone], names=[p.natural_name])


def study_module(ds: Dataset, fp: FilePlanter, ctx: Context) -> None:
    """General Study module, with a reference to the patient's previous study when there is one."""
    st, p = ctx.study, ctx.person
    fp.put(ds, "StudyInstanceUID", st.uid, "uid")
    fp.put(ds, "StudyDate", fmt_date(st.date), "date")
    fp.put(ds, "StudyTime", st.time, "time")
    fp.put(ds, "ReferringPhysicianName", p.staff["referring"], "name")
    fp.put(ds, "StudyID", st.study_id, "id")
    fp.put(ds, "AccessionNumber", st.accession, "id")
    fp.put(ds, "StudyDescription", st.description, "free_text", contains=[p.patient_id], names=[p.natural_name])
    fp.put(ds, "NameOfPhysiciansReadingStudy", p.staff["reader"], "name")
    issuer = Dataset()
    fp.put(issuer, "LocalNamespaceEntityID", f"{p.site.short.upper()}-RIS", "institution",
           "IssuerOfAccessionNumberSequence[0].")
    ds.IssuerOfAccessionNumberSequence = Sequence([issuer])
    ident = Dataset()
    prefix = "ReferringPhysicianIdentificationSequence[0]."
    badge = Dataset()
    fp.put(badge, "CodeValue", f"GMC{p.patient_id[1:]}", "id", prefix + "PersonIdentificationCodeSequence[0].")
    badge.CodingSchemeDesignator = "99HOSP"
    fp.put(badge, "CodeMeaning", p.staff["referring"].replace("^", " ").strip(), "name",
           prefix + "PersonIdentificationCodeSequence[0].")
    ident.PersonIdentificationCodeSequence = Sequence([badge])
    fp.put(ident, "PersonTelephoneNumbers", f"+44 1632 {st.accession[-6:]}", "phone", prefix)
    fp.put(ident, "InstitutionName", p.site.name, "institution", prefix)
    ds.ReferringPhysicianIdentificationSequence = Sequence([ident])
    if ctx.other_study is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = STUDY_REF_CLASS
        ref.ReferencedSOPInstanceUID = ctx.other_study.uid
        ds.ReferencedStudySequence = Sequence([ref])
        fp.ref("ReferencedStudySequence[0].ReferencedSOPInstanceUID", ctx.other_study.uid, "study")


def series_module(ds: Dataset, fp: FilePlanter, ctx: Context, *, image: bool = True) -> None:
    """General Series (or SR/RT series) attributes, the request that led to it and the people who ran it."""
    se, st, p = ctx.series, ctx.study, ctx.person
    ds.Modality = se.modality
    fp.put(ds, "SeriesInstanceUID", se.uid, "uid")
    ds.SeriesNumber = se.number
    fp.put(ds, "SeriesDate", fmt_date(st.date), "date")
    fp.put(ds, "SeriesTime", fmt_time(random.Random(se.uid)), "time")
    fp.put(ds, "SeriesDescription", se.description, "free_text", names=[p.natural_name])
    fp.put(ds, "OperatorsName", p.staff["operator"], "name")
    if image:
        if se.modality in {"CT", "MR"}:
            ds.PatientPosition = "HFS"
        # Type 2C, required for paired body parts; dciodvfy cannot know ours are not paired, so send it empty
        ds.Laterality = ""
        fp.put(ds, "PerformingPhysicianName", p.staff["performing"], "name")
        op = Dataset()
        code = Dataset()
        prefix = "OperatorIdentificationSequence[0].PersonIdentificationCodeSequence[0]."
        fp.put(code, "CodeValue", f"EMP{p.patient_id[2:]}{se.number}", "id", prefix)
        code.CodingSchemeDesignator = "99HOSP"
        fp.put(code, "CodeMeaning", p.staff["operator"].replace("^", " "), "name", prefix)
        op.PersonIdentificationCodeSequence = Sequence([code])
        fp.put(op, "InstitutionName", p.site.name, "institution", "OperatorIdentificationSequence[0].")
        ds.OperatorIdentificationSequence = Sequence([op])
        fp.put(ds, "PerformedProcedureStepStartDate", fmt_date(st.date), "date")
        fp.put(ds, "PerformedProcedureStepStartTime", st.time, "time")
        fp.put(ds, "PerformedProcedureStepID", f"PPS{st.accession[3:]}{se.number}", "id")
        fp.put(ds, "PerformedProcedureStepDescription", f"{se.modality} for {p.natural_name}", "free_text",
               names=[p.natural_name])
        ds.RequestAttributesSequence = Sequence([_request(fp, ctx)])


def _request(fp: FilePlanter, ctx: Context) -> Dataset:
    """Request Attributes Macro item; its protocol context nests a person's name three sequences deep."""
    st, p = ctx.study, ctx.person
    prefix = "RequestAttributesSequence[0]."
    req = Dataset()
    fp.put(req, "RequestedProcedureID", st.requested_procedure_id, "id", prefix)
    fp.put(req, "ScheduledProcedureStepID", f"SPS{st.requested_procedure_id[2:]}", "id", prefix)
    fp.put(req, "AccessionNumber", st.accession, "id", prefix)
    req.StudyInstanceUID = st.uid
    fp.ref(prefix + "StudyInstanceUID", st.uid, "study")
    fp.put(req, "ReasonForTheRequestedProcedure", f"Query relapse, referred by {p.staff['referring']}",
           "free_text", prefix, names=[p.staff["referring"]])
    proto = code_item(f"P{st.number}{ctx.series.number}", "99SYNTH", f"{ctx.series.modality} routine")
    ctx_item = Dataset()
    ctx_item.ValueType = "PNAME"
    ctx_item.ConceptNameCodeSequence = Sequence([code_item("121008", "DCM", "Person Observer Name")])
    fp.put(ctx_item, "PersonName", p.staff["reader"], "name",
           prefix + "ScheduledProtocolCodeSequence[0].ProtocolContextSequence[0].")
    proto.ProtocolContextSequence = Sequence([ctx_item])
    req.ScheduledProtocolCodeSequence = Sequence([proto])
    return req


def equipment_module(ds: Dataset, fp: FilePlanter, ctx: Context, station: str, serial: str) -> None:
    """General Equipment module: every field but the manufacturer identifies the site or the device."""
    site = ctx.person.site
    ds.Manufacturer = "SYNTHETIC MEDICAL"
    fp.put(ds, "InstitutionName", site.name, "institution")
    fp.put(ds, "InstitutionAddress", site.address, "address")
    fp.put(ds, "StationName", station, "device")
    fp.put(ds, "InstitutionalDepartmentName", site.department, "institution")
    ds.ManufacturerModelName = f"Synth {ctx.series.modality} 1"
    fp.put(ds, "DeviceSerialNumber", serial, "device")
    ds.SoftwareVersions = "1.0"


def image_module(ds: Dataset, fp: FilePlanter, ctx: Context, image_type: list[str], bits: int) -> None:
    """General Image, Image Pixel and (CT/MR) Image Plane attributes, with small deterministic pixels."""
    st, p = ctx.study, ctx.person
    ds.InstanceNumber = ctx.index + 1
    ds.ImageType = image_type
    acq_time = fmt_time(ctx.rng)
    fp.put(ds, "ContentDate", fmt_date(st.date), "date")
    fp.put(ds, "ContentTime", acq_time, "time")
    fp.put(ds, "AcquisitionDate", fmt_date(st.date), "date")
    fp.put(ds, "AcquisitionTime", acq_time, "time")
    fp.put(ds, "AcquisitionDateTime", fmt_date(st.date) + acq_time, "datetime")
    ds.AcquisitionNumber = 1
    fp.put(ds, "ImageComments", f"Slice {ctx.index + 1} of {p.local_name}, MRN {p.patient_id}", "free_text",
           contains=[p.patient_id], names=[p.local_name])
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ctx.rows
    ds.Columns = ctx.cols
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    gen = np.random.default_rng(ctx.rng.getrandbits(32))
    dtype = np.uint16 if bits == 16 else np.uint8
    pixels = gen.integers(0, 2 ** (12 if bits == 16 else 8), size=(ctx.rows, ctx.cols), dtype=dtype)
    ds.PixelData = pixels.astype("<u2" if bits == 16 else "u1").tobytes()
    if ctx.series.modality in {"CT", "MR"}:
        ds.PatientOrientation = ""
        ds.PixelSpacing = ["0.75", "0.75"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["-6", "-6", f"{ctx.index * 5:.1f}"]
        ds.SliceThickness = "5"
        ds.SliceLocation = f"{ctx.index * 5:.1f}"
        fp.put(ds, "FrameOfReferenceUID", ctx.series.frame_of_reference, "uid")
        ds.PositionReferenceIndicator = ""
    else:
        ds.PatientOrientation = ["A", "F"]


def ct_image(ds: Dataset, fp: FilePlanter, ctx: Context) -> None:
    """CT Image module and the GE private blocks a GE scanner writes."""
    equipment_module(ds, fp, ctx, ctx.person.site.ct_station, ctx.person.site.ct_serial)
    image_module(ds, fp, ctx, ["ORIGINAL", "PRIMARY", "AXIAL"], 16)
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = "120"
    add_ct_private(ds, fp, ctx.person, fmt_date(ctx.study.date))


def mr_image(ds: Dataset, fp: FilePlanter, ctx: Context) -> None:
    """MR Image module; each slice references its neighbours (Referenced Image) and the first slice (Source)."""
    equipment_module(ds, fp, ctx, ctx.person.site.mr_station, ctx.person.site.mr_serial)
    image_module(ds, fp, ctx, ["ORIGINAL", "PRIMARY", "OTHER"], 16)
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "500"
    ds.EchoTime = "20"
    ds.EchoTrainLength = "1"
    ds.MagneticFieldStrength = "1.5"
    se = ctx.series
    refs = []
    for j in (ctx.index - 1, ctx.index + 1):
        if 0 <= j < se.count:
            item = Dataset()
            item.ReferencedSOPClassUID = se.sop_class
            item.ReferencedSOPInstanceUID = se.sop_uids[j]
            fp.ref(f"ReferencedImageSequence[{len(refs)}].ReferencedSOPInstanceUID", se.sop_uids[j], "sop")
            refs.append(item)
    ds.ReferencedImageSequence = Sequence(refs)
    if ctx.index > 0:
        src = Dataset()
        src.ReferencedSOPClassUID = se.sop_class
        src.ReferencedSOPInstanceUID = se.sop_uids[0]
        ds.SourceImageSequence = Sequence([src])
        fp.ref("SourceImageSequence[0].ReferencedSOPInstanceUID", se.sop_uids[0], "sop")
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.DerivationDescription = "Reformatted from slice 1"
    add_mr_private(ds, fp, ctx.person)


def us_image(ds: Dataset, fp: FilePlanter, ctx: Context) -> None:
    """US Image module, 8-bit monochrome, single frame."""
    equipment_module(ds, fp, ctx, ctx.person.site.us_station, ctx.person.site.us_serial)
    image_module(ds, fp, ctx, ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"], 8)
    add_us_private(ds, fp, ctx.person)
