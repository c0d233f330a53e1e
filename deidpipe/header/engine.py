"""The header de-identification engine: one pydicom Dataset in, a de-identified Dataset out.

    result = deidentify(ds, Policy.basic(), ProjectKey.from_file("project.key"))
    result.dataset          # a new FileDataset; ``ds`` is not modified
    result.actions          # Counter of actions taken, by Table E.1-1 code (P = keyed pseudonym)

Fail closed: anything unexpected raises a :class:`~deidpipe.errors.DeidError` naming the tag and the kind of
failure, never a value, and no partial result is returned. Every value the policy keeps or cleans is screened
for the object's own identity as the walk passes it (:mod:`deidpipe.header.screen`): a value that holds a name,
an ID or the birth date goes out as a dummy, or not at all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    UID_dictionary,
)

from deidpipe.dicomio import quiet_pydicom
from deidpipe.dicomio.completeness import INCOMPLETE_ACTION, pixel_data_problem
from deidpipe.dicomio.write import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from deidpipe.documents import is_document, skip_document
from deidpipe.documents.redact import redact_into
from deidpipe.errors import DeidError, InputError, PolicyError
from deidpipe.header.actions import clean_character_set, is_uid_text
from deidpipe.header.context import ScrubContext, sop_class_of
from deidpipe.header.walk import scrub_dataset
from deidpipe.keys import ProjectKey
from deidpipe.policy import Policy, is_known_tag
from deidpipe.ruledata import load_rule_file
from deidpipe.version import __version__

NO_SOP_INSTANCE_UID = "object has no SOP Instance UID"
NO_SOP_CLASS_UID = "object has no SOP Class UID"
BAD_SOP_CLASS_UID = "SOP Class UID is not a UID"


@dataclass
class HeaderResult:
    """What :func:`deidentify` produced for one object.

    Attributes:
        dataset: the de-identified data set, with new File Meta Information.
        actions: how often each action was applied (D, Z, X, K, C, U, P for pseudonym, set; and
            ``C:spans``, the number of text spans replaced while cleaning; ``identity_screened``, elements
            whose surviving value held the object's identity and was replaced or removed; ``uri_cleaned``, URIs
            that lost a query, fragment or identifying path segment).
    """

    dataset: FileDataset
    actions: Counter[str] = field(default_factory=Counter)


def _method_codes(policy: Policy) -> list[tuple[str, str]]:
    data = load_rule_file("options.yaml")
    codes = [(data["profile"]["code"], data["profile"]["meaning"])]
    codes += [(data["options"][o]["code"], data["options"][o]["meaning"]) for o in sorted(policy.options)]
    return codes


def set_method_attributes(ds: Dataset, policy: Policy) -> None:
    """PatientIdentityRemoved, DeidentificationMethod (+ Code Sequence, CID 7050) and
    LongitudinalTemporalInformationModified, as PS3.15 E.1.1 asks."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [f"deidpipe {__version__}"] + [m for _, m in _method_codes(policy)]
    items = []
    for code, meaning in _method_codes(policy):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    ds.LongitudinalTemporalInformationModified = {
        "full": "UNMODIFIED", "modified": "MODIFIED", "removed": "REMOVED"}[policy.temporal]


#: Audit action: the output's SOP Class / Instance UID taken from the File Meta's copy (the data set lacked it).
UID_FROM_FILE_META = "sop_uid_from_file_meta"
#: Data set keyword -> the File Meta's copy of it (PS3.10 7.1: Media Storage SOP Class / Instance UID "uniquely
#: identifies the SOP Class / Instance associated with the Data Set").
_META_COPIES = {"SOPClassUID": "MediaStorageSOPClassUID", "SOPInstanceUID": "MediaStorageSOPInstanceUID"}


def _sop_uid(ds: Dataset, keyword: str) -> str | None:
    """The data set's SOP Class / Instance UID; where the data set has neither (no SOP Common module at all),
    the File Meta's copy. None where that gives none."""
    value = ds.get(keyword)
    if not value and not any(ds.get(k) for k in _META_COPIES):
        meta = getattr(ds, "file_meta", None) or Dataset()
        value = meta.get(_META_COPIES[keyword])
    return str(value) if value else None


def check_storable(ds: Dataset) -> None:
    """Refuse what is not a composite object: a DICOMDIR, or an object without SOP Class/Instance UIDs.

    Both UIDs are Type 1 in the SOP Common module. A data set without that module at all (neither UID: a
    header-only test object, a partial export) is named by its File Meta, whose copies then stand in (the output's
    File Meta gets the class as it is and the instance's pseudonym). A data set that has one
    and lacks the other has a broken SOP Common module: refused, the sources are not mixed. An object named
    nowhere is refused too, here at the header stage rather than at write time (its output could not be named)."""
    meta = getattr(ds, "file_meta", None) or Dataset()
    if meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise InputError(getattr(ds, "filename", None),
                         "is a DICOMDIR (Media Storage Directory): rebuild it from the de-identified files")
    if not _sop_uid(ds, "SOPInstanceUID"):
        raise InputError(getattr(ds, "filename", None), NO_SOP_INSTANCE_UID)
    sop_class = _sop_uid(ds, "SOPClassUID")
    if not sop_class:
        raise InputError(getattr(ds, "filename", None), NO_SOP_CLASS_UID)
    if not is_uid_text(sop_class.strip().rstrip("\0")):
        raise InputError(getattr(ds, "filename", None), BAD_SOP_CLASS_UID)


def count_sop_uids_from_file_meta(src: Dataset, counts: Counter[str]) -> None:
    """Count under :data:`UID_FROM_FILE_META` an object whose data set has no SOP Common module: its output is
    named by the File Meta (the class as it is, the instance's keyed pseudonym, see :func:`_file_meta`) and its
    data set stays as delivered, without the UIDs (adding them would declare an IOD the data set does not
    fulfil)."""
    if not any(src.get(k) for k in _META_COPIES):
        counts[UID_FROM_FILE_META] += 1


def check_pixels(ds: Dataset, policy: Policy, counts: Counter[str]) -> None:
    """Refuse an object whose pixel data is missing or cut short (see :mod:`deidpipe.dicomio.completeness`), or,
    where the policy allows incomplete pixel data, count it under ``incomplete_pixels`` so that the audit says so."""
    problem = pixel_data_problem(ds)
    if problem is None:
        return
    if not policy.allow_incomplete_pixels:
        raise InputError(getattr(ds, "filename", None), problem)
    counts[INCOMPLETE_ACTION] += 1


def _output_syntax(src: Dataset, ts: str | None) -> str:
    """The output's Transfer Syntax UID: the input's when it is one the standard defines; else (none, a private
    or unknown one, or text that is not a UID at all, which must not be copied) the little endian encoding the
    data set was read in (big endian stays big endian: its pixel bytes are in that order), when its pixel data is
    native. Compressed pixel data under an unknown syntax cannot be decoded by anyone: refused."""
    if ts is not None and UID_dictionary.get(str(ts), ("", ""))[1] == "Transfer Syntax":
        return ts
    implicit, little = getattr(src, "original_encoding", (False, True))
    pixels = src._dict.get(_PIXEL_DATA)
    encapsulated = pixels is not None and (getattr(pixels, "length", 0) == 0xFFFFFFFF
                                           or getattr(pixels, "is_undefined_length", False))
    if encapsulated:
        raise InputError(getattr(src, "filename", None), "transfer syntax is not one the standard defines")
    if not little:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


_PIXEL_DATA = BaseTag(0x7FE00010)


def _file_meta(src: Dataset, out: Dataset, key: ProjectKey) -> FileMetaDataset:
    """Fresh File Meta Information: only the transfer syntax survives; AE titles and private info do not."""
    meta = FileMetaDataset()
    old = getattr(src, "file_meta", None) or Dataset()
    ts = _output_syntax(src, old.get("TransferSyntaxUID"))
    meta.MediaStorageSOPClassUID = out.get("SOPClassUID") or _sop_uid(src, "SOPClassUID")  # check_storable
    meta.MediaStorageSOPInstanceUID = out.get("SOPInstanceUID") or key.uid(old.MediaStorageSOPInstanceUID)
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


_NATIVE_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                              "1.2.840.10008.1.2.1.99"})


def clean_pixel_stream(out: Dataset, ts: str, counts: Counter[str]) -> None:
    """Remove the metadata segments (JPEG COM/APPn, JPEG 2000 COM, JP2 boxes) that compressed Pixel Data can
    carry, whatever later stages do with the pixels (see :mod:`deidpipe.pixels.streams`). Native pixel data and
    objects without Pixel Data cost one look-up each; a stream that cannot be parsed raises (quarantine)."""
    if ts in _NATIVE_SYNTAXES or _PIXEL_DATA not in out._dict:
        return
    from deidpipe.pixels.streams import ACTION, clean_encapsulated

    if removed := clean_encapsulated(out, ts, incomplete=INCOMPLETE_ACTION in counts):
        counts[ACTION] += removed


def reads_private_elements(policy: Policy) -> bool:
    """Whether de-identification under ``policy`` reads private elements beyond person names and sequences (which
    the identity collection reads wherever they are): Retain Safe Private keeps some, and a reversible policy
    stores the originals of every element it removes. Otherwise the reader may leave them out
    (``read_dataset(leave_out_private=True)``): they are removed unread, and counted as removed."""
    return "RetainSafePrivate" in policy.options or bool(policy.recipients)


def deidentify(ds: Dataset, policy: Policy, key: ProjectKey) -> HeaderResult:
    """De-identify the header of one object under ``policy``; ``ds`` itself is not modified.

    Fail closed: any failure raises a :class:`DeidError` that names a tag or a kind of failure, never a value.
    """
    try:
        with quiet_pydicom():  # pydicom's validation warnings quote values, anywhere a value is decoded
            return _deidentify(ds, policy, key)
    except DeidError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unforeseen, without the message
        raise DeidError(f"header de-identification failed ({type(exc).__name__})") from None


def _deidentify(ds: Dataset, policy: Policy, key: ProjectKey) -> HeaderResult:
    check_storable(ds)
    # An encapsulated document is skipped, or its document rewritten (Encapsulated Document's own action, D,
    # would leave a dummy that claims to be a document): see deidpipe.documents.
    sop_class = sop_class_of(ds)
    document = is_document(ds, sop_class)
    if document and policy.documents == "skip":
        raise skip_document()
    ctx = ScrubContext.for_dataset(ds, policy, key)
    check_pixels(ds, policy, ctx.counts)
    out = scrub_dataset(ds, ctx)
    if document:
        ctx.counts.update(redact_into(ds, out, sop_class, ctx))
    count_sop_uids_from_file_meta(ds, ctx.counts)
    if dropped := clean_character_set(out):
        ctx.counts["charset_cleaned"] += dropped
    for add in policy.additions:
        if add.tag not in out and is_known_tag(add.tag):
            out.add_new(add.tag, dictionary_VR(add.tag), add.value)
            ctx.counts["set"] += 1
    set_method_attributes(out, policy)
    if policy.recipients:
        from deidpipe.header.recipients import load_certificates
        from deidpipe.header.reversible import add_encrypted_attributes, originals_from_diff

        add_encrypted_attributes(out, originals_from_diff(ds, out), load_certificates(policy.recipients))
    result = FileDataset("", out, file_meta=_file_meta(ds, out, key), preamble=b"\x00" * 128)
    # Kept elements are still raw. When the source was read in the encoding of the output's transfer syntax
    # they go back byte for byte; otherwise (big endian, or data sets without File Meta) decode them all.
    ts = result.file_meta.TransferSyntaxUID
    target = (ts.is_implicit_VR, ts.is_little_endian) if ts.is_transfer_syntax else (False, True)
    if tuple(ds.original_encoding) != target:
        for _ in result.iterall():
            pass
    result.set_original_encoding(*target, ds.original_character_set)
    clean_pixel_stream(result, ts, ctx.counts)
    return HeaderResult(dataset=result, actions=ctx.counts)


def deidentify_dataset(ds: Dataset, policy: Policy | None = None, key: ProjectKey | None = None) -> FileDataset:
    """De-identify one data set; the policy defaults to the Basic Profile, the key to the environment. A policy
    with a risk target is refused (:func:`refuse_risk_target`)."""
    policy = policy or Policy.basic()
    refuse_risk_target(policy, "deidentify_dataset")
    return deidentify(ds, policy, key or ProjectKey.from_env()).dataset


def refuse_risk_target(policy: Policy, where: str) -> None:
    """A release's risk target is chosen over a whole archive (``deidpipe run``): one object alone would be
    written with its quasi-identifiers exact. Raises :class:`PolicyError` when ``policy`` has one."""
    if policy.risk_target is not None:
        raise PolicyError(f"{where}: the policy's risk_target needs the whole archive (deidpipe run / "
                          "deidpipe.run); one object cannot be released to a risk target")
