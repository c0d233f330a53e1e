"""The non-image objects: a Comprehensive SR report and an RT Structure Set on the CT series.

Both carry the references a de-identifier must keep resolvable (Referenced SOP Instance UIDs several sequences
deep), and the SR carries names and free text in its content tree, three ContentSequence levels down.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deidpipe.synth.objects import STUDY_REF_CLASS, Context, SeriesPlan, StudyPlan, code_item, equipment_module
from deidpipe.synth.people import fmt_date, fmt_time
from deidpipe.synth.plant import FilePlanter


def _evidence(fp: FilePlanter, prefix: str, study: StudyPlan, series: SeriesPlan, retrieve_ae: str) -> Dataset:
    """A Hierarchical SOP Instance Reference Macro item for every instance of ``series``."""
    item = Dataset()
    item.StudyInstanceUID = study.uid
    fp.ref(prefix + "StudyInstanceUID", study.uid, "study")
    ser = Dataset()
    ser.SeriesInstanceUID = series.uid
    fp.ref(prefix + "ReferencedSeriesSequence[0].SeriesInstanceUID", series.uid, "series")
    fp.put(ser, "RetrieveAETitle", retrieve_ae, "ae_title", prefix + "ReferencedSeriesSequence[0].")
    sops = []
    for i, uid in enumerate(series.sop_uids):
        sop = Dataset()
        sop.ReferencedSOPClassUID = series.sop_class
        sop.ReferencedSOPInstanceUID = uid
        fp.ref(f"{prefix}ReferencedSeriesSequence[0].ReferencedSOPSequence[{i}].ReferencedSOPInstanceUID", uid, "sop")
        sops.append(sop)
    ser.ReferencedSOPSequence = Sequence(sops)
    item.ReferencedSeriesSequence = Sequence([ser])
    return item


def _content(rel: str, vtype: str, code: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.RelationshipType = rel
    item.ValueType = vtype
    item.ConceptNameCodeSequence = Sequence([code_item(*code)])
    return item


def sr_document(ds: Dataset, fp: FilePlanter, ctx: Context, ct: SeriesPlan, mr_study: StudyPlan | None,
                mr: SeriesPlan | None) -> None:
    """Comprehensive SR: a report whose content tree holds names, IDs, dates and free text, and image refs."""
    p, st = ctx.person, ctx.study
    equipment_module(ds, fp, ctx, p.site.ct_station, p.site.ct_serial)
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    fp.put(ds, "ContentDate", fmt_date(st.date), "date")
    fp.put(ds, "ContentTime", fmt_time(ctx.rng), "time")
    verifier = Dataset()
    fp.put(verifier, "VerifyingObserverName", p.staff["verifier"], "name", "VerifyingObserverSequence[0].")
    verifier.VerifyingObserverIdentificationCodeSequence = Sequence([])
    fp.put(verifier, "VerifyingOrganization", p.site.name, "institution", "VerifyingObserverSequence[0].")
    fp.put(verifier, "VerificationDateTime", fmt_date(st.date) + fmt_time(ctx.rng, 19, 22), "datetime",
           "VerifyingObserverSequence[0].")
    ds.VerifyingObserverSequence = Sequence([verifier])
    ds.PerformedProcedureCodeSequence = Sequence([])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence(
        [_evidence(fp, "CurrentRequestedProcedureEvidenceSequence[0].", st, ct, p.site.pacs_ae)])
    if mr_study is not None and mr is not None:
        ds.PertinentOtherEvidenceSequence = Sequence(
            [_evidence(fp, "PertinentOtherEvidenceSequence[0].", mr_study, mr, p.site.pacs_ae)])

    # Content tree (paths below are relative to the root ContentSequence).
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([code_item("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    observer = _content("HAS OBS CONTEXT", "PNAME", ("121008", "DCM", "Person Observer Name"))
    fp.put(observer, "PersonName", p.staff["reader"], "name", "ContentSequence[0].")
    subject = _content("HAS OBS CONTEXT", "PNAME", ("121029", "DCM", "Subject Name"))
    fp.put(subject, "PersonName", p.name, "name", "ContentSequence[1].")
    subject_id = _content("HAS OBS CONTEXT", "TEXT", ("121030", "DCM", "Subject ID"))
    fp.put(subject_id, "TextValue", p.patient_id, "id", "ContentSequence[2].")
    birth = _content("HAS OBS CONTEXT", "DATE", ("121031", "DCM", "Subject Birth Date"))
    fp.put(birth, "Date", fmt_date(p.birth_date), "date", "ContentSequence[3].")

    deep = "ContentSequence[4].ContentSequence[0].ContentSequence"
    finding = _content("CONTAINS", "TEXT", ("121071", "DCM", "Finding"))
    fp.put(finding, "TextValue", f"{p.natural_name} ({p.local_name}, MRN {p.patient_id}): 8 mm nodule, "
           f"right upper lobe, stable since {fmt_date(mr_study.date) if mr_study else 'baseline'}", "free_text",
           "ContentSequence[4].ContentSequence[0].", contains=[p.patient_id], names=[p.natural_name, p.local_name])
    image = _content("INFERRED FROM", "IMAGE", ("121112", "DCM", "Source of Measurement"))
    ref = Dataset()
    ref.ReferencedSOPClassUID = ct.sop_class
    ref.ReferencedSOPInstanceUID = ct.sop_uids[len(ct.sop_uids) // 2]
    image.ReferencedSOPSequence = Sequence([ref])
    fp.ref(f"{deep}[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID", ref.ReferencedSOPInstanceUID, "sop")
    who = _content("HAS PROPERTIES", "PNAME", ("121008", "DCM", "Person Observer Name"))
    fp.put(who, "PersonName", p.staff["performing"], "name", f"{deep}[1].")
    comment = _content("HAS PROPERTIES", "TEXT", ("121106", "DCM", "Comment"))
    mother = p.mother_birth_name.replace("^", " ")
    fp.put(comment, "TextValue", f"Results phoned to {mother} at {p.phone}", "free_text", f"{deep}[2].",
           contains=[p.phone], names=[mother])
    when = _content("HAS PROPERTIES", "DATETIME", ("111526", "DCM", "DateTime Started"))
    fp.put(when, "DateTime", fmt_date(st.date) + st.time, "datetime", f"{deep}[3].")
    study_ref = _content("HAS PROPERTIES", "UIDREF", ("110180", "DCM", "Study Instance UID"))
    study_ref.UID = st.uid
    fp.ref(f"{deep}[4].UID", st.uid, "study")
    finding.ContentSequence = Sequence([image, who, comment, when, study_ref])
    findings = _content("CONTAINS", "CONTAINER", ("121070", "DCM", "Findings"))
    findings.ContinuityOfContent = "SEPARATE"
    findings.ContentSequence = Sequence([finding])
    impression = _content("CONTAINS", "TEXT", ("121073", "DCM", "Impression"))
    fp.put(impression, "TextValue", f"Benign. Dr {p.staff['reader'].split('^')[0]} informed {p.natural_name}.",
           "free_text", "ContentSequence[5].ContentSequence[0].",
           names=[p.staff["reader"].split("^")[0], p.natural_name])
    impressions = _content("CONTAINS", "CONTAINER", ("121072", "DCM", "Impressions"))
    impressions.ContinuityOfContent = "SEPARATE"
    impressions.ContentSequence = Sequence([impression])
    ds.ContentSequence = Sequence([observer, subject, subject_id, birth, findings, impressions])


def rt_structure_set(ds: Dataset, fp: FilePlanter, ctx: Context, ct: SeriesPlan) -> None:
    """RT Structure Set with one ROI contoured on every CT slice."""
    p, st = ctx.person, ctx.study
    equipment_module(ds, fp, ctx, p.site.ct_station, p.site.ct_serial)
    ds.StructureSetLabel = "GTV"
    ds.InstanceNumber = 1
    fp.put(ds, "StructureSetName", f"Plan {p.natural_name}", "free_text", names=[p.natural_name])
    fp.put(ds, "StructureSetDate", fmt_date(st.date), "date")
    fp.put(ds, "StructureSetTime", fmt_time(ctx.rng), "time")

    # Frame of Reference module (the current standard includes it in the RT Structure Set IOD): the CT's.
    fp.put(ds, "FrameOfReferenceUID", ct.frame_of_reference, "uid")
    fp.ref("FrameOfReferenceUID", str(ct.frame_of_reference), "frame_of_reference")
    ds.PositionReferenceIndicator = ""

    prefix = "ReferencedFrameOfReferenceSequence[0]."
    fref = Dataset()
    fref.FrameOfReferenceUID = ct.frame_of_reference
    fp.ref(prefix + "FrameOfReferenceUID", str(ct.frame_of_reference), "frame_of_reference")
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_REF_CLASS
    study.ReferencedSOPInstanceUID = st.uid
    fp.ref(prefix + "RTReferencedStudySequence[0].ReferencedSOPInstanceUID", st.uid, "study")
    series = Dataset()
    series.SeriesInstanceUID = ct.uid
    fp.ref(prefix + "RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID", ct.uid,
           "series")
    images = []
    for i, uid in enumerate(ct.sop_uids):
        img = Dataset()
        img.ReferencedSOPClassUID = ct.sop_class
        img.ReferencedSOPInstanceUID = uid
        fp.ref(f"{prefix}RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].ContourImageSequence[{i}]"
               ".ReferencedSOPInstanceUID", uid, "sop")
        images.append(img)
    series.ContourImageSequence = Sequence(images)
    study.RTReferencedSeriesSequence = Sequence([series])
    fref.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([fref])

    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = ct.frame_of_reference
    fp.ref("StructureSetROISequence[0].ReferencedFrameOfReferenceUID", str(ct.frame_of_reference),
           "frame_of_reference")
    roi.ROIName = "GTV"
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = Sequence([roi])

    contours = []
    for i, uid in enumerate(ct.sop_uids):
        contour = Dataset()
        img = Dataset()
        img.ReferencedSOPClassUID = ct.sop_class
        img.ReferencedSOPInstanceUID = uid
        fp.ref(f"ROIContourSequence[0].ContourSequence[{i}].ContourImageSequence[0].ReferencedSOPInstanceUID",
               uid, "sop")
        contour.ContourImageSequence = Sequence([img])
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = 4
        z = f"{i * 5:.1f}"
        contour.ContourData = ["-2", "-2", z, "2", "-2", z, "2", "2", z, "-2", "2", z]
        contour.ContourNumber = i + 1
        contours.append(contour)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])

    obs = Dataset()
    obs.ObservationNumber = 1
    obs.ReferencedROINumber = 1
    obs.RTROIInterpretedType = "GTV"
    fp.put(obs, "ROIInterpreter", p.staff["interpreter"], "name", "RTROIObservationsSequence[0].")
    ds.RTROIObservationsSequence = Sequence([obs])

    ds.ApprovalStatus = "APPROVED"
    fp.put(ds, "ReviewDate", fmt_date(st.date), "date")
    fp.put(ds, "ReviewTime", fmt_time(ctx.rng, 19, 22), "time")
    fp.put(ds, "ReviewerName", p.staff["interpreter"], "name")
