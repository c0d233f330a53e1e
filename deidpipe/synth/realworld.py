"""The objects real archives carry besides plain images: each hides identity somewhere a header scrub of the
usual attributes misses.

* :func:`sc_image`: a Secondary Capture image, JPEG baseline (EXIF, XMP and COM segments naming the patient),
  JPEG 2000 (a COM marker segment in the main header) or uncompressed;
* :func:`presentation_state`: a Grayscale Softcopy Presentation State on the JPEG image, with a text annotation,
  a graphic layer description, a Content Label (CS) and Content Description naming the patient, and a
  Retrieve URL whose query string holds the MRN;
* :func:`segmentation`: a binary Segmentation of the JPEG 2000 image, Segment Label and Description naming them;
* :func:`ecg`: a 12-lead ECG with identity in its Multiplex Group Label and Channel Labels;
* :func:`encapsulated_document`: an Encapsulated PDF (compressed and uncompressed content streams, /Info, XMP)
  or CDA (recordTarget, author, custodian, narrative), Document Title naming the patient.
"""

from __future__ import annotations

import re

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from deidpipe.synth.objects import Context, SeriesPlan, code_item, equipment_module, image_module
from deidpipe.synth.payloads import ascii_fold, j2k_with_comment, jpeg_with_metadata, make_cda, make_pdf, pdf_string
from deidpipe.synth.people import fmt_date, fmt_time
from deidpipe.synth.plant import FilePlanter

SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
ECG_12_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
ENCAPSULATED_CDA = "1.2.840.10008.5.1.4.1.1.104.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
#: Side of the compressed images: JPEG 2000's default six resolution levels need at least 32 pixels.
SC_SIZE = 32
_LEADS = [("2:1", "Lead I"), ("2:2", "Lead II"), ("2:61", "Lead III"), ("2:62", "Lead aVR"), ("2:63", "Lead aVL"),
          ("2:64", "Lead aVF"), ("2:3", "Lead V1"), ("2:4", "Lead V2"), ("2:5", "Lead V3"), ("2:6", "Lead V4"),
          ("2:7", "Lead V5"), ("2:8", "Lead V6")]


def family_given(pn: str) -> tuple[str, str]:
    """Family and given name of a PN value's first component group."""
    parts = pn.split("=")[0].split("^")
    return parts[0], parts[1] if len(parts) > 1 else ""


def cs_label(text: str, fallback: str) -> str:
    """A CS value (upper-case A-Z, digits, space, underscore; at most 16) made of ``text``, else ``fallback``."""
    label = re.sub(r"[^A-Z0-9 _]", "", ascii_fold(text).upper())[:16].strip()
    return label or fallback


def _pixels(ctx: Context) -> np.ndarray:
    """A smooth 8-bit gradient (no edges a burned-in text detector could take for text)."""
    y, x = np.mgrid[0:SC_SIZE, 0:SC_SIZE]
    return ((x * 3 + y * 2 + ctx.index * 17) % 200 + 20).astype(np.uint8)


def sc_image(ds: Dataset, fp: FilePlanter, ctx: Context, codec: str) -> str:
    """Secondary Capture image; ``codec`` jpeg, j2k or none.  Returns the transfer syntax UID to write."""
    p = ctx.person
    equipment_module(ds, fp, ctx, p.site.us_station, p.site.us_serial)
    image_module(ds, fp, ctx, ["DERIVED", "SECONDARY"], 8)
    ds.ConversionType = "WSD"
    pixels = _pixels(ctx)
    ds.Rows, ds.Columns = pixels.shape
    mrn = p.patient_id
    if codec == "none":
        ds.PixelData = pixels.tobytes()
        return "1.2.840.10008.1.2.1"
    if codec == "jpeg":
        folded = ascii_fold(p.natural_name)
        frame = jpeg_with_metadata(pixels, comment=f"{p.natural_name} MRN {mrn}",
                                   exif={0x013B: folded, 0x010E: f"MRN {mrn}"},
                                   xmp_title=f"MRN {mrn}", xmp_author=p.natural_name)
        fp.hide("jpeg:COM", p.natural_name, "name", names=[p.natural_name])
        fp.hide("jpeg:COM", mrn, "id")
        fp.hide("jpeg:APP1 EXIF Artist", folded, "name", [folded.encode("ascii")], names=[folded])
        fp.hide("jpeg:APP1 EXIF ImageDescription", mrn, "id")
        fp.hide("jpeg:APP1 XMP dc:creator", p.natural_name, "name", names=[p.natural_name])
        fp.hide("jpeg:APP1 XMP dc:title", mrn, "id")
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = "4"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        syntax = JPEG_BASELINE
    else:
        folded = ascii_fold(p.natural_name)
        frame = j2k_with_comment(pixels, f"{folded} MRN {mrn}")
        fp.hide("j2k:COM", folded, "name", [folded.encode("ascii")], names=[folded])
        fp.hide("j2k:COM", mrn, "id")
        syntax = J2K_LOSSLESS
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return syntax


def _ref_image(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item


def presentation_state(ds: Dataset, fp: FilePlanter, ctx: Context, images: SeriesPlan) -> None:
    """GSPS applying to the first image of ``images`` (the JPEG one), annotated with the patient's name."""
    p, st = ctx.person, ctx.study
    equipment_module(ds, fp, ctx, p.site.us_station, p.site.us_serial)
    family, _ = family_given(p.name)
    ds.Laterality = ""  # Type 2C in General Series, as on the images
    ds.InstanceNumber = 1
    fp.put(ds, "ContentLabel", cs_label(family, p.patient_id), "name")
    fp.put(ds, "ContentDescription", f"Annotations for MRN {p.patient_id}", "free_text", contains=[p.patient_id])
    fp.put(ds, "PresentationCreationDate", fmt_date(st.date), "date")
    fp.put(ds, "PresentationCreationTime", fmt_time(ctx.rng), "time")
    fp.put(ds, "ContentCreatorName", p.staff["reader"], "name")

    series = Dataset()
    series.SeriesInstanceUID = images.uid
    fp.ref("ReferencedSeriesSequence[0].SeriesInstanceUID", images.uid, "series")
    series.ReferencedImageSequence = Sequence([_ref_image(images.sop_class, images.sop_uids[0])])
    fp.ref("ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID", images.sop_uids[0],
           "sop")
    url = (f"https://pacs.{p.site.short.lower()}.example.org/wado-rs/studies?PatientID={p.patient_id}"
           f"&includefield=all")
    fp.put(series, "RetrieveURL", url, "url", "ReferencedSeriesSequence[0].", contains=[p.patient_id])
    ds.ReferencedSeriesSequence = Sequence([series])

    area = Dataset()
    area.DisplayedAreaTopLeftHandCorner = [1, 1]
    area.DisplayedAreaBottomRightHandCorner = [SC_SIZE, SC_SIZE]
    area.PresentationSizeMode = "SCALE TO FIT"
    area.PresentationPixelAspectRatio = [1, 1]
    ds.DisplayedAreaSelectionSequence = Sequence([area])

    layer = Dataset()
    layer.GraphicLayer = "NOTES"
    layer.GraphicLayerOrder = 1
    layer.GraphicLayerRecommendedDisplayGrayscaleValue = 0xFFFF
    fp.put(layer, "GraphicLayerDescription", f"Notes on {p.natural_name}", "free_text", "GraphicLayerSequence[0].",
           names=[p.natural_name])
    ds.GraphicLayerSequence = Sequence([layer])

    note = Dataset()
    note.ReferencedImageSequence = Sequence([_ref_image(images.sop_class, images.sop_uids[0])])
    fp.ref("GraphicAnnotationSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID", images.sop_uids[0],
           "sop")
    note.GraphicLayer = "NOTES"
    text = Dataset()
    text.BoundingBoxAnnotationUnits = "PIXEL"
    text.BoundingBoxTopLeftHandCorner = [2.0, 2.0]
    text.BoundingBoxBottomRightHandCorner = [30.0, 8.0]
    text.BoundingBoxTextHorizontalJustification = "LEFT"
    fp.put(text, "UnformattedTextValue", f"{p.name.split('=')[0]} {p.patient_id}", "free_text",
           "GraphicAnnotationSequence[0].TextObjectSequence[0].", contains=[p.patient_id],
           names=[p.name.split("=")[0]])
    note.TextObjectSequence = Sequence([text])
    arrow = Dataset()
    arrow.GraphicAnnotationUnits = "PIXEL"
    arrow.GraphicDimensions = 2
    arrow.NumberOfGraphicPoints = 2
    arrow.GraphicData = [10.0, 10.0, 20.0, 20.0]
    arrow.GraphicType = "POLYLINE"
    note.GraphicObjectSequence = Sequence([arrow])
    ds.GraphicAnnotationSequence = Sequence([note])
    ds.PresentationLUTShape = "IDENTITY"


def segmentation(ds: Dataset, fp: FilePlanter, ctx: Context, images: SeriesPlan) -> None:
    """Binary Segmentation (one segment, one frame) of the second image of ``images`` (the JPEG 2000 one)."""
    p, st = ctx.person, ctx.study
    equipment_module(ds, fp, ctx, p.site.us_station, p.site.us_serial)
    ds.ManufacturerModelName = "Synth SEG 1"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""  # Type 2C: no Plane Orientation functional group (the source has no frame)
    fp.put(ds, "ContentDate", fmt_date(st.date), "date")
    fp.put(ds, "ContentTime", fmt_time(ctx.rng), "time")
    family, _ = family_given(p.name)
    fp.put(ds, "ContentLabel", cs_label(family, p.patient_id), "name")
    ds.ContentDescription = ""
    fp.put(ds, "ContentCreatorName", p.staff["interpreter"], "name")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.LossyImageCompression = "00"
    ds.SegmentationType = "BINARY"
    ds.Rows = ds.Columns = SC_SIZE
    ds.NumberOfFrames = 1
    segment = Dataset()
    segment.SegmentNumber = 1
    fp.put(segment, "SegmentLabel", f"Lesion {p.natural_name}", "free_text", "SegmentSequence[0].",
           names=[p.natural_name])
    fp.put(segment, "SegmentDescription", f"Drawn for {p.natural_name}, MRN {p.patient_id}", "free_text",
           "SegmentSequence[0].", contains=[p.patient_id], names=[p.natural_name])
    segment.SegmentAlgorithmType = "MANUAL"
    segment.SegmentedPropertyCategoryCodeSequence = Sequence([code_item("49755003", "SCT", "Morphologically "
                                                                                            "Altered Structure")])
    segment.SegmentedPropertyTypeCodeSequence = Sequence([code_item("4147007", "SCT", "Mass")])
    ds.SegmentSequence = Sequence([segment])

    dim_uid = f"{ds.SOPInstanceUID}.1"
    ds.DimensionOrganizationSequence = Sequence([Dataset()])
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = dim_uid
    index = Dataset()
    index.DimensionOrganizationUID = dim_uid
    index.DimensionIndexPointer = 0x0062000B  # Referenced Segment Number
    index.FunctionalGroupPointer = 0x0062000A  # Segment Identification Sequence
    ds.DimensionIndexSequence = Sequence([index])

    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    frame = Dataset()
    content = Dataset()
    content.DimensionIndexValues = [1]
    frame.FrameContentSequence = Sequence([content])
    seg_id = Dataset()
    seg_id.ReferencedSegmentNumber = 1
    frame.SegmentIdentificationSequence = Sequence([seg_id])
    derivation = Dataset()
    derivation.DerivationCodeSequence = Sequence([code_item("113076", "DCM", "Segmentation")])
    source = _ref_image(images.sop_class, images.sop_uids[1])
    source.PurposeOfReferenceCodeSequence = Sequence([code_item("121322", "DCM",
                                                                "Source image for image processing operation")])
    derivation.SourceImageSequence = Sequence([source])
    fp.ref("PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]"
           ".ReferencedSOPInstanceUID", images.sop_uids[1], "sop")
    frame.DerivationImageSequence = Sequence([derivation])
    ds.PerFrameFunctionalGroupsSequence = Sequence([frame])

    common = Dataset()
    common.SeriesInstanceUID = images.uid
    fp.ref("ReferencedSeriesSequence[0].SeriesInstanceUID", images.uid, "series")
    common.ReferencedInstanceSequence = Sequence([_ref_image(images.sop_class, images.sop_uids[1])])
    ds.ReferencedSeriesSequence = Sequence([common])

    mask = np.zeros((SC_SIZE, SC_SIZE), np.uint8)
    mask[8:24, 10:22] = 1
    ds.PixelData = np.packbits(mask.ravel(), bitorder="little").tobytes()


def _made_during_study(ds: Dataset, fp: FilePlanter, ctx: Context) -> None:
    """What an ECG and an encapsulated document share: the equipment of the site's ultrasound room (General
    Equipment), Instance Number 1, and Content Date, Content Time and Acquisition DateTime at the study's own date
    and time."""
    st = ctx.study
    equipment_module(ds, fp, ctx, ctx.person.site.us_station, ctx.person.site.us_serial)
    ds.InstanceNumber = 1
    fp.put(ds, "ContentDate", fmt_date(st.date), "date")
    fp.put(ds, "ContentTime", st.time, "time")
    fp.put(ds, "AcquisitionDateTime", fmt_date(st.date) + st.time, "datetime")


def ecg(ds: Dataset, fp: FilePlanter, ctx: Context) -> None:
    """12-lead ECG, 500 Hz, 0.4 s: identity in Multiplex Group Label and in each Channel Label."""
    p = ctx.person
    _made_during_study(ds, fp, ctx)
    ds.ManufacturerModelName = "Synth ECG 1"
    ds.AcquisitionContextSequence = Sequence([])
    samples = 200
    group = Dataset()
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(_LEADS)
    group.NumberOfWaveformSamples = samples
    group.SamplingFrequency = "500"
    family, _ = family_given(p.name)
    fp.put(group, "MultiplexGroupLabel", f"ECG {cs_label(family, p.patient_id)}"[:16], "name",
           "WaveformSequence[0].")
    channels = []
    for n, (code, meaning) in enumerate(_LEADS):
        ch = Dataset()
        ch.WaveformChannelNumber = n + 1
        label = f"{meaning[5:]} {p.patient_id}" if n == 0 else meaning[5:]
        if n == 0:
            fp.put(ch, "ChannelLabel", label, "id", f"WaveformSequence[0].ChannelDefinitionSequence[{n}].")
        else:
            ch.ChannelLabel = label
        ch.ChannelSourceSequence = Sequence([code_item(code, "MDC", meaning)])
        ch.ChannelSensitivity = "2.5"
        ch.ChannelSensitivityUnitsSequence = Sequence([code_item("uV", "UCUM", "microvolt")])
        ch.ChannelSensitivityCorrectionFactor = "1"
        ch.ChannelBaseline = "0"
        ch.ChannelSampleSkew = "0"
        ch.WaveformBitsStored = 16
        channels.append(ch)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    t = np.arange(samples) / 500.0
    leads = np.stack([(np.sin(2 * np.pi * 1.2 * t + k) * 400).astype("<i2") for k in range(len(_LEADS))], axis=1)
    group.WaveformData = leads.tobytes()  # interleaved: sample by sample, channel by channel
    ds.WaveformSequence = Sequence([group])


def encapsulated_document(ds: Dataset, fp: FilePlanter, ctx: Context, kind: str) -> None:
    """Encapsulated PDF (``kind`` pdf) or CDA (``kind`` cda), with the patient named inside the document."""
    p, st = ctx.person, ctx.study
    _made_during_study(ds, fp, ctx)
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.ConceptNameCodeSequence = Sequence([code_item("18842-5", "LN", "Discharge summary")])
    mrn, name = p.patient_id, p.natural_name
    fp.put(ds, "DocumentTitle", f"Discharge summary {name}", "free_text", names=[name])
    if kind == "pdf":
        title, author = f"Discharge summary {name}", p.staff["reader"].split("^")[0]
        latin = name.encode("latin-1", "ignore").decode("latin-1").strip()
        document = make_pdf(title=title, author=name, plain_lines=[f"Patient {name}", f"MRN {mrn}"],
                            compressed_lines=[f"Seen by Dr {author}", f"Patient {name} ({mrn})"])
        fp.hide("pdf:/Info/Author", name, "name", [pdf_string(name)], names=[name])
        fp.hide("pdf:/Info/Title", title, "free_text", [pdf_string(title)], names=[name])
        fp.hide("pdf:XMP dc:creator", name, "name", names=[name])
        fp.hide("pdf:content stream", mrn, "id")
        if latin == name:
            fp.hide("pdf:content stream (FlateDecode)", name, "name", names=[name])
        fp.hide("pdf:content stream (FlateDecode)", author, "name")
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    else:
        family, given = family_given(p.name)
        birth = fmt_date(p.birth_date)
        reader_family, reader_given = family_given(p.staff["reader"])
        narrative = f"{name} (MRN {mrn}, born {birth}) was discharged from {p.site.name}."
        doc_id = int(re.sub(r"\D", "", ds.SOPInstanceUID)[-30:])
        document = make_cda(doc_id=str(doc_id), family=family, given=given, mrn=mrn, birth=birth, sex=p.sex,
                            author_family=reader_family, author_given=reader_given, custodian=p.site.name,
                            title=f"Discharge summary {name}", narrative=narrative, effective=fmt_date(st.date))
        fp.hide("cda:recordTarget/patientRole/id", mrn, "id")
        fp.hide("cda:recordTarget/patientRole/patient/name", family, "name", names=[family])
        fp.hide("cda:recordTarget/patientRole/patient/birthTime", birth, "date")
        fp.hide("cda:author/assignedAuthor/assignedPerson/name", reader_family, "name")
        fp.hide("cda:custodian", p.site.name, "institution")
        fp.hide("cda:section/text/paragraph", name, "name", names=[name])
        ds.MIMETypeOfEncapsulatedDocument = "text/XML"
        ds.HL7InstanceIdentifier = f"2.25.{doc_id}"
    ds.EncapsulatedDocumentLength = len(document)
    ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
