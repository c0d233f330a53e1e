"""Private blocks of real creators, as listed in TCIA's private tag knowledge base (2024-02-01).

Each block mixes elements the KB marks safe ('k', harmless numbers or codes, recorded as ``safe_private`` in the
key: a Retain Safe Private policy must keep them) with elements the KB marks for removal ('d') or hashing ('h')
that here hold identifying values (recorded as planted).  The CTP block carries a private sequence whose item
holds PHI, including a standard PatientName nested inside the private sequence.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deidpipe.synth.people import Person
from deidpipe.synth.plant import FilePlanter

GE_IDEN = "GEMS_IDEN_01"
GE_PARM = "GEMS_PARM_01"
CTP = "CTP"
SIEMENS_MR = "SIEMENS MR HEADER"
SIEMENS_CSA = "SIEMENS CSA HEADER"
PHILIPS = "Philips Imaging DD 001"


def _even(data: bytes) -> bytes:
    """OB values must have even length."""
    return data if len(data) % 2 == 0 else data + b"\0"


def add_ct_private(ds: Dataset, fp: FilePlanter, person: Person, study_date: str) -> None:
    """GE identification block (0009), a GE parameter (0043) and a CTP block (0013) with a private sequence."""
    site = person.site
    fp.private(ds, 0x0009, GE_IDEN, 0x01, "LO", "GE_GENESIS_FF", None)  # Full Fidelity, k
    fp.private(ds, 0x0009, GE_IDEN, 0x02, "SH", f"{site.short.upper()}OC1", "device")  # Suite Id, d
    fp.private(ds, 0x0009, GE_IDEN, 0x04, "SH", "CT", None)  # Product Id, k
    fp.private(ds, 0x0009, GE_IDEN, 0x30, "SH", f"SVC{site.ct_serial[4:]}", "device")  # Service Id, d
    # Equipment UID (h): built from the device serial and the study date, as vendors do.
    fp.private(ds, 0x0009, GE_IDEN, 0xE3, "UI", f"1.2.840.113619.2.55.{site.ct_serial[4:]}.{study_date}", "uid")
    fp.private(ds, 0x0043, GE_PARM, 0x01, "SS", 4, None)  # Bitmap of prescan options, k
    fp.private(ds, 0x0013, CTP, 0x10, "LO", "PHANTOM-TRIAL-7", None)  # Project Name, k
    fp.private(ds, 0x0013, CTP, 0x15, "LO", "42", None)  # Batch, k
    # (0013,"CTP",01) is a private SQ the KB deletes; its item carries the original identity of the patient.
    seq_path = fp.private(ds, 0x0013, CTP, 0x01, "SQ", Sequence([]), "id")
    item = Dataset()
    prefix = seq_path + "[0]."
    fp.private(item, 0x0013, CTP, 0x20, "LO", person.patient_id, "id", prefix)
    fp.private(item, 0x0013, CTP, 0x26, "LT", f"Transferred from {site.name} for {person.natural_name}",
               "free_text", prefix, contains=[site.name], names=[person.natural_name])
    fp.put(item, "PatientName", person.name, "name", prefix)
    ds.private_block(0x0013, CTP)[0x01].value.append(item)


def add_mr_private(ds: Dataset, fp: FilePlanter, person: Person) -> None:
    """Siemens MR header numbers (k) and a CSA image header blob (d) that embeds the patient's identity."""
    fp.private(ds, 0x0019, SIEMENS_MR, 0x0A, "US", 1, None)  # Number of Images in Mosaic, k
    fp.private(ds, 0x0019, SIEMENS_MR, 0x0B, "DS", "245.5", None)  # Slice Measurement Duration, k
    fp.private(ds, 0x0019, SIEMENS_MR, 0x0C, "IS", "1000", None)  # B Value, k
    # CSA Image Header Type: neither safe in the KB ('d') nor identifying, so not in the key
    ds.private_block(0x0029, SIEMENS_CSA, create=True).add_new(0x08, "CS", "IMAGE NUM 4")
    text = f"SV10 PatientName={person.natural_name};PatientID={person.patient_id};Site={person.site.name}"
    fp.private(ds, 0x0029, SIEMENS_CSA, 0x10, "OB", _even(text.encode("utf-8")), "free_text",
               contains=[person.patient_id, person.site.name], names=[person.natural_name])


def add_us_private(ds: Dataset, fp: FilePlanter, person: Person) -> None:
    """Philips numbers (k), a Philips private stack sequence of safe numbers, and an exam card name (d)."""
    fp.private(ds, 0x2001, PHILIPS, 0x0A, "IS", "1", None)  # Slice Number MR, k
    fp.private(ds, 0x2001, PHILIPS, 0x13, "SL", 1, None)  # EPI Factor, k
    seq_path = fp.private(ds, 0x2001, PHILIPS, 0x5F, "SQ", Sequence([]), None)  # Stack Sequence, k
    item = Dataset()
    fp.private(item, 0x2001, PHILIPS, 0x2D, "SS", 1, None, seq_path + "[0].")  # Number of Slices in Stack, k
    ds.private_block(0x2001, PHILIPS)[0x5F].value.append(item)
    fp.private(ds, 0x2001, PHILIPS, 0xC8, "LO", f"ExamCard {person.natural_name} abdomen", "free_text",
               names=[person.natural_name])  # Exam Card Name, d
