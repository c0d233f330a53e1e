"""Issue 17 section 2: every value that survives the policy is screened against the object's own identity.

Objects are built here, of the kinds real archives carry (a presentation state with text annotations, a
segmentation, a waveform, an SR content tree, URIs), with the patient's name written with accents and other
separators, letter-digit IDs inside longer words, and the birth date in several written forms. Each test reads
its object back from bytes first, so that kept elements are raw as they are in a real run.
"""

from __future__ import annotations

import io
import re
import unicodedata

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.header.engine import deidentify
from deidpipe.header.screen import SCREENED_COUNT, URI_COUNT
from deidpipe.header.text import DenyList, date_variants, screen_text
from deidpipe.policy import Override, Policy
from tests.helpers import raw_part10

GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
DENYLIST = Policy.basic(text_screening="denylist")  # the object's own identity only: fast, and what is tested

# The planted identity; every word here must be gone from the output (a word of 1-2 letters only where it
# stands beside the rest of its name).
NAME = "Wälker^Álice^Marie"
ID = "AB12345"
ACCESSION = "ACC998877"
BIRTH = "19610305"
PHYSICIAN = "O'Brien^Seán"
OPERATOR = "Li^Wei"
OBSERVER = "Quennell^Tobias"
INSTITUTION = "Kestrel General Hospital"
OTHER_ID = "XZ-40417"
CLINICAL = "Measured 12 mm at the liver dome, no change since 2019"  # ordinary words: must survive as it is


def _item(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _code(value: str, meaning: str, scheme: str = "DCM") -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _base(sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the accented names
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, ID, BIRTH
    ds.AccessionNumber = ACCESSION
    ds.ReferringPhysicianName = PHYSICIAN
    ds.OperatorsName = OPERATOR
    ds.InstitutionName = INSTITUTION
    ds.OtherPatientIDsSequence = [_item(PatientID=OTHER_ID, IssuerOfPatientID="KESTREL_MRN")]
    ds.Manufacturer = "ACME"
    return ds


def _roundtrip(ds: Dataset) -> Dataset:
    """``ds`` as a file gives it back: kept elements raw, as in a run."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return read_dataset(buf.getvalue())


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def _flat(text: str) -> str:
    return re.sub(r"[\W_]+", "", _fold(text))


#: Words of the planted identity (folded), and the IDs and dates letters-and-digits only.
NAME_WORDS = {_fold(w) for n in (NAME, PHYSICIAN, OPERATOR, OBSERVER) for w in re.split(r"[\^' ]+", n) if w}
TOKENS = {_flat(t) for t in (ID, ACCESSION, OTHER_ID, *date_variants(BIRTH)) if len(_flat(t)) >= 6}


def _leaks(text: str) -> list[str]:
    """The planted words (as whole words, any case, accents or separators) and IDs (inside anything) in text."""
    words = set(re.findall(r"[^\W_]+", _fold(text)))
    found = sorted(words & NAME_WORDS)
    flat = _flat(text)
    found += sorted(t for t in TOKENS if t in flat)
    if _flat(INSTITUTION) in flat:
        found.append("institution")
    return found


def _all_values(ds: Dataset, path: str = "") -> list[tuple[str, str]]:
    """(path, text) of every text value of ``ds`` at every level, private elements and binary UN included."""
    out = []
    for elem in ds:
        where = f"{path}{elem.keyword or elem.tag}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                out += _all_values(item, f"{where}[{i}].")
        elif isinstance(elem.value, bytes):
            out.append((where, elem.value.decode("latin-1")))
        elif elem.VR not in ("OB", "OW", "OF", "OD", "OL", "OV", "US", "SS", "UL", "SL", "FL", "FD", "AT"):
            values = elem.value if elem.VM > 1 else [elem.value]
            out += [(where, str(v)) for v in values if v is not None]
    return out


def _assert_clean(ds: Dataset) -> None:
    leaks = [(where, found) for where, text in _all_values(ds) if (found := _leaks(text))]
    assert not leaks, leaks  # names of places and planted words only, never an original value in a message


def _run(ds: Dataset, policy: Policy = DENYLIST, key=None):
    return deidentify(_roundtrip(ds), policy, key)


# -- objects ------------------------------------------------------------------------------------------------------
def gsps() -> Dataset:
    """A Grayscale Softcopy Presentation State with the identity in its labels, layers and text annotations."""
    ds = _base(GSPS, "PR")
    ds.ContentLabel = "WALKER_ALICE"  # CS: upper case, underscores
    ds.ContentDescription = "Annotations, patient alice-walker"
    ds.ContentCreatorName = OBSERVER
    ds.GraphicLayerSequence = [
        _item(GraphicLayer="LAYER1", GraphicLayerOrder=1, GraphicLayerDescription="for Dr. O'Brien, Seán"),
        _item(GraphicLayer="MEASURE", GraphicLayerOrder=2, GraphicLayerDescription="Measurements"),
    ]
    texts = ["scanAB-12345x", "born 05.03.1961", "DOB 03/05/1961", "b. 5 March 1961", "WALKER, Alice M.", CLINICAL]
    ds.GraphicAnnotationSequence = [_item(GraphicLayer="LAYER1", TextObjectSequence=[
        _item(UnformattedTextValue=t, BoundingBoxAnnotationUnits="PIXEL", BoundingBoxTopLeftHandCorner=[1, 1],
              BoundingBoxBottomRightHandCorner=[20, 10], BoundingBoxTextHorizontalJustification="LEFT")
        for t in texts])]
    return ds


def seg() -> Dataset:
    ds = _base(SEG, "SEG")
    ds.ContentLabel = "ALICEWALKER"
    ds.SegmentSequence = [
        _item(SegmentNumber=1, SegmentLabel="Wälker liver", SegmentDescription="Tumour of AB12345",
              SegmentAlgorithmType="MANUAL", SegmentedPropertyCategoryCodeSequence=[_code("T-D0050", "Tissue", "SRT")]),
        _item(SegmentNumber=2, SegmentLabel="Liver", SegmentDescription="Whole liver, portal phase",
              SegmentAlgorithmType="MANUAL", SegmentedPropertyCategoryCodeSequence=[_code("T-D0050", "Tissue", "SRT")]),
    ]
    return ds


def ecg() -> Dataset:
    ds = _base(ECG, "ECG")
    channels = [_item(ChannelLabel=label, WaveformChannelNumber=i,
                      ChannelSourceSequence=[_code("2:1", "Lead I", "MDC")])
                for i, label in enumerate(["Lead I", "WALKER II", "ab_12345"], start=1)]
    ds.WaveformSequence = [_item(MultiplexGroupLabel="ECG Walker", NumberOfWaveformChannels=3,
                                 ChannelDefinitionSequence=channels)]
    return ds


def sr() -> Dataset:
    """A Comprehensive SR whose content tree names the patient, the physician and another person (PNAME)."""
    ds = _base(COMPREHENSIVE_SR, "SR")
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("11528-7", "Report for Alice Walker", "LN")]
    ds.VerifyingObserverSequence = [_item(VerifyingObserverName="Quennell^Tobias", VerificationDateTime="20200101",
                                          VerifyingOrganization="Kestrel General Hospital")]
    ds.ContentSequence = [
        _item(RelationshipType="CONTAINS", ValueType="TEXT", ConceptNameCodeSequence=[_code("121106", "Comment")],
              TextValue="Seen with Tobias Quennell on 1961-03-05"),
        _item(RelationshipType="CONTAINS", ValueType="CODE", ConceptNameCodeSequence=[_code("121071", "Finding")],
              ConceptCodeSequence=[_code("99X1", "Walker sign, patient AB12345", "99LOCAL")]),
        _item(RelationshipType="HAS OBS CONTEXT", ValueType="PNAME", PersonName="Quennell^Tobias",
              ConceptNameCodeSequence=[_code("121008", "Person Observer Name")]),
        _item(RelationshipType="CONTAINS", ValueType="TEXT", ConceptNameCodeSequence=[_code("121106", "Comment")],
              TextValue=CLINICAL),
    ]
    ds.DocumentTitle = "Report of Alice Walker"
    return ds


# -- tests --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [gsps, seg, ecg, sr])
@pytest.mark.parametrize("options", [(), ("CleanDescriptors", "CleanStructuredContent", "CleanGraphics")])
def test_no_identity_survives_anywhere(build, options, key):
    result = _run(build(), Policy.basic(options=options, text_screening="denylist"), key)
    _assert_clean(result.dataset)


def test_presentation_state_labels_and_annotations(key):
    # Clean Graphics keeps the text annotations, cleaned (the Basic Profile replaces them by dummies)
    result = _run(gsps(), Policy.basic(options=("CleanGraphics",), text_screening="denylist"), key)
    out = result.dataset
    assert out.ContentLabel.startswith("ANON") and re.fullmatch(r"[A-Z0-9_ ]{1,16}", out.ContentLabel)  # valid CS
    assert result.actions[SCREENED_COUNT] >= 1
    layers = out.GraphicLayerSequence
    assert layers[1].GraphicLayerDescription == "Measurements"  # nothing identifying: as it came
    texts = [t.UnformattedTextValue for t in out.GraphicAnnotationSequence[0].TextObjectSequence]
    assert texts[-1] == CLINICAL
    assert all(_leaks(t) == [] for t in texts), texts
    # No part of the name is left beside its masked neighbour: "WALKER, Alice M." goes whole.
    assert "M." not in texts[4] and "Alice" not in texts[4]


def test_segment_labels(key):
    out = _run(seg(), key=key).dataset
    labels = [s.SegmentLabel for s in out.SegmentSequence]
    descriptions = [s.SegmentDescription for s in out.SegmentSequence]
    assert labels[1] == "Liver" and descriptions[1] == "Whole liver, portal phase"
    assert not _leaks(labels[0]) and not _leaks(descriptions[0])
    assert out.ContentLabel != "ALICEWALKER"


def test_waveform_labels(key):
    out = _run(ecg(), key=key).dataset
    group = out.WaveformSequence[0]
    assert not _leaks(group.MultiplexGroupLabel)
    labels = [c.ChannelLabel for c in group.ChannelDefinitionSequence]
    assert labels[0] == "Lead I" and not _leaks(labels[1]) and not _leaks(labels[2])


def test_content_tree_code_meanings_and_text_values(key):
    out = _run(sr(), key=key).dataset
    _assert_clean(out)
    meaning = out.ConceptNameCodeSequence[0].CodeMeaning  # the document's title concept: a kept code meaning
    assert meaning != "Report for Alice Walker" and not _leaks(meaning)
    code = out.ContentSequence[1].ConceptCodeSequence[0].CodeMeaning
    assert code.startswith("ANON")  # a hit replaces the whole value, never "*** sign, patient ***"
    assert out.ContentSequence[1].ConceptNameCodeSequence[0].CodeMeaning == "Finding"  # no hit: kept
    assert "DocumentTitle" not in out or not _leaks(out.DocumentTitle)


def test_person_named_only_in_the_content_tree_is_collected(key):
    """Tobias Quennell is named only by a PNAME item and the Verifying Observer: still found in free text."""
    ds = sr()
    del ds.VerifyingObserverSequence
    out = _run(ds, Policy.basic(options=("CleanStructuredContent",), text_screening="denylist"), key).dataset
    text = out.ContentSequence[0].TextValue
    assert "Tobias" not in text and "Quennell" not in text and text.startswith("Seen with")


def test_uris_lose_query_fragment_and_identifying_path(key):
    ds = gsps()
    ds.RetrieveURL = "https://pacs.example.org/wado/AB12345/studies?patient=Walker&dob=19610305#top"
    ds.ReferencedSeriesSequence = [_item(
        SeriesInstanceUID=generate_uid(), RetrieveURL="https://pacs.example.org/wado/studies/7?token=s3cr3t")]
    ds.StudyComments = "https://viewer.example.org/open/alice.walker"  # LO holding one URL
    ds.RetrieveURI = "https://alice-walker.example.org/archive"  # the host itself holds the name
    result = _run(ds, key=key)
    out = result.dataset
    assert "RetrieveURL" not in out or out.RetrieveURL == "https://pacs.example.org/wado/studies"
    assert out.ReferencedSeriesSequence[0].RetrieveURL == "https://pacs.example.org/wado/studies/7"
    assert "RetrieveURI" not in out or out.RetrieveURI == "urn:deidpipe:removed"
    assert result.actions[URI_COUNT] >= 2
    _assert_clean(out)


@pytest.mark.parametrize("written", ["1961-03-05", "05.03.1961", "03/05/1961", "5 March 1961", "March 5, 1961",
                                     "19610305", "5.3.1961"])
def test_birth_date_in_its_written_forms(written, key):
    ds = gsps()
    ds.ContentLabel = "DOB"
    ds.GraphicLayerSequence[1].GraphicLayerDescription = f"born {written} here"
    out = _run(ds, key=key).dataset
    assert written not in out.GraphicLayerSequence[1].GraphicLayerDescription


@pytest.mark.parametrize("text", ["ALICE WALKER", "alice_walker", "Walker^Alice", "WALKER,ALICE", "Alice.Walker",
                                  "a.walker@example.org", "Walker-Alice", "WÄLKER", "walkér"])
def test_names_with_accents_and_separators(text, key):
    ds = gsps()
    ds.ContentDescription = "x"
    ds.GraphicLayerSequence[1].GraphicLayer = "L2"
    ds.GraphicLayerSequence[1].GraphicLayerDescription = text
    out = _run(ds, key=key).dataset
    assert not _leaks(out.GraphicLayerSequence[1].GraphicLayerDescription)


@pytest.mark.parametrize("text", ["scanAB-12345x", "ab 12345", "AB_12345_v2", "id:ab12345"])
def test_letter_digit_ids_inside_words(text, key):
    ds = gsps()
    ds.ContentLabel = "X"
    ds.Manufacturer = text  # a kept LO: whole value replaced
    out = _run(ds, key=key).dataset
    assert out.Manufacturer.startswith("ANON")


def test_no_false_positive_on_ordinary_words(key):
    """A patient called Long^Bo (a common word and a two-letter name), ID 12345: ordinary values stay as they are."""
    ds = gsps()
    ds.PatientName, ds.PatientID, ds.OperatorsName = "Long^Bo", "12345", "Head^Li"
    ds.AccessionNumber, ds.OtherPatientIDsSequence = "A77", []
    ds.ContentLabel = "LONG_AXIS"
    ds.ContentDescription = "Long axis, 123456 frames, series 12, bone window, head first"
    ds.GraphicLayerSequence[1].GraphicLayerDescription = "Bolus tracking in the liver, Lt 5 mm"
    ds.Manufacturer = "BOSTON LONGITUDINAL 1234"
    result = _run(ds, key=key)
    out = result.dataset
    assert out.ContentLabel == "LONG_AXIS"
    assert out.ContentDescription == "Long axis, 123456 frames, series 12, bone window, head first"
    assert out.GraphicLayerSequence[1].GraphicLayerDescription == "Bolus tracking in the liver, Lt 5 mm"
    assert out.Manufacturer == "BOSTON LONGITUDINAL 1234"
    assert result.actions[SCREENED_COUNT] == 0


@pytest.mark.parametrize("vr", ["SH", "UN"])
def test_kept_private_element_with_identity_is_removed(vr, key):
    """Retain Safe Private keeps (0009,xx01) and (0009,xx04) of GEMS_IDEN_01 (TCIA knowledge base); one holds an
    ID, as text or as UN bytes that decode as text: that one goes, the other stays."""
    ds = gsps()
    block = ds.private_block(0x0009, "GEMS_IDEN_01", create=True)
    block.add_new(0x01, vr, b"scan AB12345 " if vr == "UN" else "scan AB12345")
    block.add_new(0x04, "SH", "GE_GENESIS_FF")
    result = _run(ds, Policy.basic(options=("RetainSafePrivate",), text_screening="denylist"), key)
    kept = {int(e.tag): e.value for e in result.dataset if e.tag.group == 0x0009}
    assert kept[0x00091004] == "GE_GENESIS_FF" and 0x00091001 not in kept
    _assert_clean(result.dataset)


def test_what_the_policy_keeps_is_neither_collected_nor_screened(key):
    """RetainInstitutionIdentity keeps Institution Name: its words are no identity then."""
    ds = gsps()
    ds.GraphicLayerSequence[1].GraphicLayerDescription = "Kestrel General Hospital layer"
    policy = Policy.basic(options=("RetainInstitutionIdentity",), text_screening="denylist")
    out = _run(ds, policy, key).dataset
    assert out.InstitutionName == INSTITUTION
    assert out.GraphicLayerSequence[1].GraphicLayerDescription == "Kestrel General Hospital layer"
    kept = Policy.basic(text_screening="denylist", overrides=(Override(0x00180015, "K"),))  # BodyPartExamined
    ds.BodyPartExamined = "WALKER"
    out = _run(ds, kept, key).dataset
    assert out.get("BodyPartExamined") != "WALKER"  # a keep of another attribute does not protect a name in it


def test_a_set_override_does_not_let_the_original_name_out(key):
    """``set`` on Patient's Name replaces its value: the original is still the object's identity, screened
    wherever else it appears (only a keep lets it go out)."""
    ds = gsps()
    family = str(ds.PatientName).split("^")[0]
    ds.SeriesDescription = f"{family} head"
    policy = Policy.basic(text_screening="denylist",
                          overrides=(Override(0x00100010, "set", "ANON^PATIENT"), Override(0x0008103E, "K")))
    out = _run(ds, policy, key).dataset
    assert out.PatientName == "ANON^PATIENT"
    assert family.lower() not in str(out.get("SeriesDescription", "")).lower()


def test_short_name_part_beside_a_hit_is_masked_too():
    """The free-text clean masks the whole name: never "*** Li" after masking the given name."""
    deny = DenyList.from_terms(["Li^Wei^Ming", "Li", "Wei", "Ming", "Wei Li"], parts=["Li", "Wei", "Ming"])
    for text in ["Seen by Wei Ming Li today", "Seen by Wei M. Li today", "Seen by LI, Wei today"]:
        cleaned, n = screen_text(text, deny, use_model=False)
        assert cleaned == "Seen by *** today", cleaned
    assert screen_text("Li-Fraumeni syndrome", deny, use_model=False) == ("Li-Fraumeni syndrome", 0)


def test_the_model_path_masks_the_whole_name(key):
    """With presidio on (the default): a name the model finds takes the object's short surname with it."""
    ds = gsps()
    ds.PatientName = "Li^Jonathan"
    ds.GraphicLayerSequence[1].GraphicLayerDescription = "Reviewed with Jonathan Li yesterday"
    out = _run(ds, Policy.basic(), key).dataset
    text = out.GraphicLayerSequence[1].GraphicLayerDescription
    assert "Jonathan" not in text and not re.search(r"\bLi\b", text), text


def test_written_output_reads_back_clean(key, tmp_path):
    result = _run(gsps(), key=key)
    path = tmp_path / "o.dcm"
    write_dataset(result.dataset, path)
    _assert_clean(read_dataset(path))


def test_one_matcher_per_patient():
    """The compiled matcher is shared by a patient's objects (built from the same terms)."""
    from deidpipe.header.identity import identity_denylist

    a, b = _roundtrip(gsps()), _roundtrip(gsps())
    assert identity_denylist(a) is identity_denylist(b)


def test_scan_of_a_clean_object_changes_nothing(key):
    """An object with no identity in its text: the screen replaces nothing."""
    ds = seg()
    ds.SegmentSequence[0].SegmentLabel = "Lesion"
    ds.SegmentSequence[0].SegmentDescription = "Lesion 1"
    ds.ContentLabel = "SEGMENTATION"
    result = _run(ds, key=key)
    assert result.actions[SCREENED_COUNT] == 0
    assert result.dataset.ContentLabel == "SEGMENTATION"


def test_ids_from_nested_sequences(key):
    """An ID found only inside the Other Patient IDs Sequence (which the profile removes) is still looked for in
    the values that are kept."""
    ds = seg()
    ds.SegmentSequence[1].SegmentLabel = "Liver xz40417"
    ds.Manufacturer = "ACME XZ 40417"
    out = _run(ds, key=key).dataset
    assert not _leaks(out.SegmentSequence[1].SegmentLabel) and out.Manufacturer.startswith("ANON")
    _assert_clean(out)


def test_iso_2022_text_is_decoded_with_its_character_set(key):
    """Japanese in ISO 2022 is 7-bit: the screen reads it with the object's character set, not as ASCII."""
    ds = gsps()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎"
    ds.ReferringPhysicianName = ds.OperatorsName = ""
    ds.ContentDescription = "x"
    ds.Manufacturer = "山田 scanner"
    raw = _roundtrip(ds)
    assert b"\x1b" in raw._dict[0x00080070].value  # stored with escape sequences
    out = deidentify(raw, DENYLIST, key).dataset
    assert out.Manufacturer.startswith("ANON")


def test_an_object_naming_thousands_of_people_is_refused_quickly(key):
    """A hostile file with thousands of names: refused with a reason that quotes none, not compiled for minutes."""
    import time

    from deidpipe.errors import InvalidValueError
    from deidpipe.header.identity import TOO_MANY_TERMS

    ds = gsps()
    ds.OtherPatientNames = [f"Name{i:05d}x^Given{i:05d}y" for i in range(2000)]
    t0 = time.perf_counter()
    with pytest.raises(InvalidValueError) as info:
        _run(ds, key=key)
    assert info.value.reason == TOO_MANY_TERMS and time.perf_counter() - t0 < 5


def test_group_is_compiled_only_for_a_text_that_may_hold_one_of_its_terms():
    """A deny-list's group is compiled the first time a text holds one of its terms' letters and digits in a row
    (separators left out): a value without them cannot match, and most values hold none."""
    from deidpipe.header import text

    text._compile_terms.cache_clear()
    deny = DenyList.from_groups([{"Okafor^Ngozi", "MRN-77123"}, {"Clinic of St Brendan"}], ["Okafor", "Ngozi"])
    assert not deny.hits("CT ABDOMEN W CONTRAST") and deny.spans("follow-up 3 months") == []
    assert text._compile_terms.cache_info().currsize == 0
    assert deny.hits("seen by Dr. OKAFOR, ngozi") and deny.hits("mrn 77 123")
    assert text._compile_terms.cache_info().currsize == 1  # the first group only


def test_lazily_compiled_groups_find_what_their_patterns_find():
    """Screening through the skeleton check finds exactly what every group's compiled pattern finds, on texts
    made of the terms' pieces, separators, accents, case and digits around them (a seeded random sample)."""
    import random

    from deidpipe.header import text

    groups = [{"Okafor^Ngozi", "Ngozi Okafor", "MRN-77123", "19660417", "Søren Kierkegård"},
              {"AB-12345", "St Brendan's Clinic", "山田^太郎"}, {"Li^Wei", "X9"}]
    deny = DenyList.from_groups(groups, ["Okafor", "Ngozi", "Li", "Wei"])
    common = frozenset()
    patterns = [p for g in groups
                if (p := text._compile_terms(frozenset(t.strip() for t in g), common)) is not None]
    pieces = ["okafor", "OKAFOR", "ngozi", "Ngo", "zi", "mrn", "77123", "7712", "3", "1966", "04", "17", "søren",
              "Soren", "kierkegard", "Kierkegård", "ab", "12345", "st", "brendan's", "clinic", "山田", "太郎", "li",
              "wei", "x9", "X", "9", "the", "scan", "of", "and"]
    pieces += [t.replace("^", rng_sep) for g in groups for t in g for rng_sep in ("^", " ", "")]  # whole terms
    seps = ["", " ", "-", "_", "^", ".", ", ", "/", "  ", "---", "\t"]
    rng = random.Random(19)
    matched = 0
    for _ in range(3000):
        sample = "".join(rng.choice(pieces) + rng.choice(seps) for _ in range(rng.randint(1, 6)))
        folded, where = text._fold_with_map(sample)
        expected = sorted({(where[m.start()], where[m.end() - 1] + 1) for p in patterns
                           for m in p.finditer(folded) if m.end()})
        assert deny.spans(sample) == [deny.grow(sample, s, e) for s, e in expected], sample
        assert deny.hits(sample) == bool(expected), sample
        matched += bool(expected)
    assert 600 < matched < 2400  # both kinds of text are well represented


_MISLABELLED_HEAD = [(0x0008, 0x0005, b"CS", b"ISO_IR 192"), (0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7"),
                     (0x0008, 0x0018, b"UI", b"1.2.3.4"), (0x0008, 0x0060, b"CS", b"OT")]
_MISLABELLED_NAME = (0x0010, 0x0010, b"PN", "Müller^Hans".encode())


def test_name_in_bytes_its_character_set_cannot_decode_is_screened(key):
    """A kept value written in Latin-1 under a UTF-8 declaration (a common mislabelling): pydicom decodes it with a
    replacement character ("M?ller"), which no term matches. The screen reads such a value byte for byte as well
    and finds the patient's name, at the top level and in a sequence item (before, both went out as written)."""
    import struct

    item = b"".join(struct.pack("<HH2sH", 0x0008, e, vr, len(v)) + v for e, vr, v in (
        (0x0100, b"SH", b"T-28000"), (0x0102, b"SH", b"SRT "), (0x0104, b"LO", b"Lunge M\xfcller ")))
    data = raw_part10([*_MISLABELLED_HEAD, (0x0008, 0x1090, b"LO", b"Scanner M\xfcller"),
                      (0x0008, 0x2218, b"SQ", struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item),
                      _MISLABELLED_NAME])
    result = deidentify(read_dataset(data), Policy.basic(), key)
    out = io.BytesIO()
    write_dataset(result.dataset, out)
    assert b"M\xfcller" not in out.getvalue() and "Müller".encode() not in out.getvalue()
    assert result.actions[SCREENED_COUNT] == 2
    # a value that decodes cleanly is not read twice: an ordinary kept value stays as it was
    assert result.dataset.AnatomicRegionSequence[0].CodeValue == "T-28000"


def test_cleaned_value_in_bytes_its_character_set_cannot_decode_is_replaced(key):
    """Action C (Clean Descriptors) on a description whose Latin-1 bytes hide the name from the decoder: it is
    replaced by a dummy (the name cannot be masked in a text pydicom could not read). A description whose name is
    in proper UTF-8 beside one bad byte is cleaned as before: the name is masked, nothing is read as Latin-1."""
    policy = Policy.basic(options=("CleanDescriptors",))
    hidden = raw_part10([*_MISLABELLED_HEAD, (0x0008, 0x1030, b"LO", b"Follow-up Hans M\xfcller"), _MISLABELLED_NAME])
    result = deidentify(read_dataset(hidden), policy, key)
    out = io.BytesIO()
    write_dataset(result.dataset, out)
    assert b"M\xfcller" not in out.getvalue() and "Müller".encode() not in out.getvalue()
    assert result.dataset.StudyDescription.startswith("ANON") and result.actions["D"] >= 1
    proper = raw_part10([*_MISLABELLED_HEAD, (0x0008, 0x1030, b"LO", "Follow-up Müller ".encode() + b"\xff"),
                        _MISLABELLED_NAME])
    cleaned = deidentify(read_dataset(proper), policy, key).dataset.StudyDescription
    assert cleaned.startswith("Follow-up ***") and "ller" not in cleaned


def test_only_the_values_whose_bytes_hide_a_name_are_replaced(key):
    """Of a multi-valued kept value (a Code Meaning in a sequence item, where a hit replaces values rather than
    removing the element), one in proper UTF-8 stays as it was, a URI stays cleaned as a URI, and only the value
    whose Latin-1 bytes hold the name is replaced (review of the Latin-1 reading)."""
    import struct

    meaning = "Zürich".encode() + b"\\M\xfcller\\http://h/a?q=1"
    item = b"".join(struct.pack("<HH2sH", 0x0008, e, vr, len(v)) + v for e, vr, v in (
        (0x0100, b"SH", b"T-28000 "), (0x0102, b"SH", b"SRT "), (0x0104, b"LO", meaning + b" " * (len(meaning) % 2))))
    data = raw_part10([*_MISLABELLED_HEAD,
                      (0x0008, 0x2218, b"SQ", struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item),
                      _MISLABELLED_NAME])
    result = deidentify(read_dataset(data), Policy.basic(), key)
    values = list(result.dataset.AnatomicRegionSequence[0].CodeMeaning)
    assert values[0] == "Zürich" and values[1].startswith("ANON") and values[2] == "http://h/a"
    assert result.actions[SCREENED_COUNT] == 1


@pytest.mark.parametrize(("charset", "name"), [(b"ISO_IR 100", b"Scanner M\xfcller"),
                                               (b"ISO_IR 192", b"Scanner M\xfcller")])
def test_kept_attribute_written_as_un_in_latin1_is_screened(charset, name, key):
    """A kept attribute that a converter wrote with VR UN, its text in Latin-1 (the declared character set, or a
    mislabelled one): the screen reads it and removes it (an UN element may go) where it holds the name. Before,
    only UTF-8 counted as text in UN, and the name went out."""
    patient = "Müller^Hans".encode("latin-1" if charset == b"ISO_IR 100" else "utf-8")
    data = raw_part10([(0x0008, 0x0005, b"CS", charset), *_MISLABELLED_HEAD[1:], (0x0008, 0x1090, b"UN", name),
                      (0x0010, 0x0010, b"PN", patient)])
    result = deidentify(read_dataset(data), Policy.basic(), key)
    out = io.BytesIO()
    write_dataset(result.dataset, out)
    assert b"ller" not in out.getvalue() and result.actions[SCREENED_COUNT] == 1


@pytest.mark.parametrize("temporal", ["removed", "modified"])
def test_standard_attribute_written_as_un_is_judged_by_its_dictionary_vr(temporal, key):
    """A writer that did not know a standard attribute writes it with VR UN. Judged as UN, Study Update DateTime
    and Expiry Date (outside Table E.1-1) were kept unchanged, Secondary Reviewer Name was not replaced, and a
    Patient's Name written so never reached the deny-list, so the name went out in kept values (leak hunt). Each is
    now judged by its dictionary VR: dates removed or shifted, names replaced and screened for."""
    data = raw_part10([*_MISLABELLED_HEAD[1:], (0x0008, 0x0070, b"LO", b"Zyxwv Qorblat"),
                       (0x0008, 0x041F, b"UN", b"20040119133733"), (0x0010, 0x0010, b"UN", b"Qorblat^Zyxwv"),
                       (0x0014, 0x0104, b"UN", b"Drwhox^Bbbqx"), (0x0014, 0x1020, b"UN", b"20040119")])
    options = ("RetainLongModifiedDates",) if temporal == "modified" else ()
    result = deidentify(read_dataset(data), Policy.basic(options=options), key)
    out = io.BytesIO()
    write_dataset(result.dataset, out)
    for marker in (b"Qorblat", b"Zyxwv", b"Drwhox", b"20040119"):
        assert marker not in out.getvalue(), marker
    assert result.actions[SCREENED_COUNT] == 1  # the Manufacturer that held the name


def test_icc_profile_text_is_blanked_at_the_top_and_in_an_optical_path(key):
    """ICC Profile (0028,2000), kept (Table E.1-1 does not list it), carried its description and copyright as
    written (leak hunt): their text is blanked at the top level and in an Optical Path Sequence item, the colour
    data kept byte for byte."""
    from PIL import ImageCms

    from deidpipe.header.walk import ICC_COUNT

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    at = icc.index("sRGB".encode("utf-16-be"))
    icc[at:at + 16] = "Okonkwo ".encode("utf-16-be")
    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Okonkwo^Chidi"
    ds.ICCProfile = bytes(icc)
    item = Dataset()
    item.ICCProfile = bytes(icc)
    ds.OpticalPathSequence = [item]
    result = deidentify(ds, Policy.basic(), key)
    out = io.BytesIO()
    write_dataset(result.dataset, out)
    assert "Okonkwo".encode("utf-16-be") not in out.getvalue()
    assert result.actions[ICC_COUNT] == 2
    assert len(result.dataset.ICCProfile) == len(icc) and result.dataset.ICCProfile[-36:] == bytes(icc[-36:])  # chrm


def test_identity_is_found_in_the_forms_people_write_it():
    """Forms of the patient's name, ID and birth date the deny-list missed (leak hunt): the parts of a hyphenated
    name, spelled-out umlauts both ways, letters NFKD does not decompose, the number inside an ID, two-digit years
    day or year first, ordinals, two name words glued inside a longer word, a soft hyphen or zero-width space in a
    name, a word hyphenated at a line break. Ordinary text holds none of them."""
    from deidpipe.header.identity import identity_denylist

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Müller-Schmidt^Hans-Jürgen", "QX7734521", "19610312"
    ds.OtherPatientNames = ["Mueller^Hans", "Sørensen^Paweł"]
    deny = identity_denylist(ds)
    for text in ("CT THORAX MUELLER", "Schmidt follow-up", "Dr Juergen", "Jurgen", "Müller", "SORENSEN",
                 "Soerensen", "Pawel", "Ref 7734521", "12 MAR 61",
                 "1961MAR12", "1961-3-12", "12th March 1961", "March 12th 1961",
                 "PatientMullerSchmidt", "CTMUELLERHANS", "Sch\u00admidt", "Jür\u200bgen",  # glued, invisible
                 "Dr Schm-\nidt"):  # a word hyphenated at a line break, as a document's text has it
        assert deny.hits(text), text
    assert screen_text("Ref Schm-\nidt, low-\ndose", deny, use_model=False) == ("Ref ***, low-\ndose", 1)
    for text in ("CHEST PA ERECT", "serial 9610312", "Michelle", "Hansen scanner", "SAMUEL", "blacksmithing",
                 "120361", "610312", "V10.0.0.0", "urn:oid:2.16.840.1.113883.6.96", "Michal"):
        assert not deny.hits(text), text
    # the pieces of a research pseudonym are not terms, nor the arcs of an issuer's OID (review)
    pseudonym = Dataset()
    pseudonym.PatientName, pseudonym.PatientID = "LIDC-IDRI-0001", "QX10000"
    pseudonym.IssuerOfPatientID = "2.16.840.1.113883.3.72"
    deny = identity_denylist(pseudonym)
    for text in ("LIDC scanner", "IDRI", "10.0.0.0", "urn:oid:2.16.840.1.113883.6.96"):
        assert not deny.hits(text), text


@pytest.mark.parametrize(("options", "expected"), [((), "19000101"), (("RetainLongModifiedDates",), "shifted")])
def test_date_in_a_safe_private_slot_goes_as_a_standard_date(options, expected, key):
    """Retain Safe Private kept a date in a safe private slot as it was (leak hunt): it is now replaced by a dummy,
    or shifted as the standard dates are under Retain Longitudinal Temporal Information with Modified Dates."""
    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.StudyDate = "Okonkwo^Chidi", "20040119"
    block = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
    block.add_new(0x01, "DA", "20040119")
    block.add_new(0x12, "LO", "20040119")  # the private dictionary's LO, as Implicit VR reads it (review)
    block.add_new(0x11, "LO", "PET 3D")
    result = deidentify(ds, Policy.basic(options=("RetainSafePrivate", *options)), key).dataset
    block = result.private_block(0x0009, "GEMS_PETD_01")
    for element in (0x01, 0x12):
        value = block[element].value
        assert value != "20040119"
        if expected == "shifted":
            assert value == result.StudyDate  # shifted by the patient's own offset, as the study date
        else:
            assert value == expected
    assert block[0x11].value == "PET 3D"  # a value not shaped as a date is kept


def test_large_standard_sequence_written_as_un_does_not_fail_the_object(key):
    """Review: a standard sequence written as UN of 64 KiB or more, which pydicom leaves UN (a 16-bit length cannot
    hold it), is judged as UN as pydicom reads it; judged as a sequence it failed the whole object."""
    import struct

    item = struct.pack("<HHI", 0x0008, 0x0104, 9000) + b"x" * 9000
    items = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item for _ in range(8))
    data = raw_part10([*_MISLABELLED_HEAD[1:], (0x0010, 0x0010, b"PN", b"Okonkwo^Chidi"),
                       (0x0018, 0x9346, b"UN", items)])
    assert len(items) >= 0xFFFF
    deidentify(read_dataset(data), Policy.basic(), key)  # no DeidError


def test_denylist_repr_shows_no_identity():
    """A deny-list in a log line or a test failure prints no term and no name part."""
    deny = DenyList.from_groups([{"Okafor^Ngozi", "MRN77123"}], ["Okafor", "Ngozi"])
    text = repr(deny).lower()
    assert "okafor" not in text and "ngozi" not in text and "77123" not in text


@pytest.mark.parametrize(("charset", "value", "patient"), [
    (b"ISO_IR 144", b"Scanner M\xfcller", b"Muller^Hans"),  # Cyrillic: 0xFC is "ќ", Latin-1 "ü"
    (b"ISO_IR 126", b"Scanner M\xfcller", b"Muller^Hans"),  # Greek: 0xFC is "ό"
    (b"ISO_IR 148", b"Scanner \xddilmaz", b"Yilmaz^Ayse"),  # Latin-5: 0xDD is "İ", Latin-1 "Ý"
    # Shift JIS and GB18030 join a byte and the letter after it into one character ("J臠er", "M黮ler")
    (b"ISO 2022 IR 13\\ISO 2022 IR 87", b"Scanner J\xe4ger", b"Jager^Hans"),
    (b"ISO_IR 13", b"Scanner Ren\xe9e", b"Renee^Dupont"),
    (b"GB18030", b"Scanner M\xfcller", b"Muller^Hans"),
    (b"ISO_IR 144", b"Scanner M\xfcller\x00\\CT", b"Muller^Hans"),  # a NUL ends the first value (review)
])
def test_latin1_name_under_a_charset_that_decodes_every_byte_is_screened(charset, value, patient, key):
    """A kept value written in Latin-1 under a single-byte character set that defines every byte (Cyrillic,
    Greek, Latin-5): pydicom decodes it without a replacement character, into other letters ("Mќller" under
    ISO_IR 144), which no term matches. Its Latin-1 reading is screened as well and finds the patient's name
    (before, it went out as written). Text in the declared character set stays as it was."""
    codec = {b"ISO_IR 144": "iso8859_5", b"ISO_IR 126": "iso8859_7", b"ISO_IR 148": "iso8859_9",
             b"ISO_IR 13": "shift_jis", b"GB18030": "gb18030"}.get(charset, "shift_jis")
    local = {b"ISO_IR 144": "Сканер", b"ISO_IR 126": "Σαρωτής", b"ISO_IR 148": "Tarayıcı",
             b"GB18030": "扫描仪"}.get(charset, "ｽｷｬﾅ")  # half-width katakana: ISO_IR 13's own
    data = raw_part10([(0x0008, 0x0005, b"CS", charset), *_MISLABELLED_HEAD[1:],
                      (0x0008, 0x0070, b"LO", local.encode(codec)),  # Manufacturer, kept (K): local text
                      (0x0008, 0x1090, b"LO", value),  # Manufacturer's Model Name, kept (K)
                      (0x0010, 0x0010, b"PN", patient)])
    result = deidentify(read_dataset(data), Policy.basic(), key)
    out = io.BytesIO()
    write_dataset(result.dataset, out)
    assert value[8:].split(b"\x00")[0] not in out.getvalue() and result.actions[SCREENED_COUNT] == 1
    assert result.dataset.Manufacturer == local  # the declared character set's own text is not read as Latin-1


@pytest.mark.parametrize(("charset", "text", "patient"), [
    (b"ISO_IR 126", "Εξέταση άρα θώρακα", b"Una^Maria"),  # "άρα" read as Latin-1 is "Üñá": folds to "una"
    (b"ISO_IR 144", "Контроль для нее", b"Yoo^Jin"),  # "нее" read as Latin-1 is "ÝÕÕ": folds to "yoo"
])
def test_local_text_that_folds_to_a_name_when_read_as_latin1_is_kept(charset, text, patient, key):
    """Greek or Cyrillic text in its own declared character set is not taken for a Latin-1 name: a word of it read
    as Latin-1 may fold to a short name, but holds no ASCII letter, as a Latin-1 name under another declaration
    does (review). Kept as it is, and cleaned (action C) as it was before."""
    codec = {b"ISO_IR 126": "iso8859_7", b"ISO_IR 144": "iso8859_5"}[charset]
    data = raw_part10([(0x0008, 0x0005, b"CS", charset), *_MISLABELLED_HEAD[1:],
                       (0x0008, 0x0070, b"LO", text.encode(codec)), (0x0008, 0x1030, b"LO", text.encode(codec)),
                       (0x0010, 0x0010, b"PN", patient)])
    kept = deidentify(read_dataset(data), Policy.basic(), key)
    assert kept.dataset.Manufacturer == text and kept.actions[SCREENED_COUNT] == 0
    cleaned = deidentify(read_dataset(data), Policy.basic(options=("CleanDescriptors",)), key)
    assert cleaned.dataset.StudyDescription == text


def test_safe_private_value_with_a_latin1_name_is_screened(key):
    """Retain Safe Private keeps a safe private element decoded: its raw bytes are read as Latin-1 as well (review:
    "Dr M\xfcller" under ISO_IR 144 went out)."""
    data = raw_part10([(0x0008, 0x0005, b"CS", b"ISO_IR 144"), *_MISLABELLED_HEAD[1:],
                       (0x0009, 0x0010, b"LO", b"GEMS_IDEN_01"), (0x0009, 0x10E6, b"SH", b"Dr M\xfcller"),
                       (0x0010, 0x0010, b"PN", b"Muller^Hans")])
    result = deidentify(read_dataset(data), Policy.basic(options=("RetainSafePrivate",)), key)
    out = io.BytesIO()
    write_dataset(result.dataset, out)
    assert b"GEMS_IDEN_01" in out.getvalue()  # the block is kept: the element was judged safe
    assert b"M\xfcller" not in out.getvalue() and result.actions[SCREENED_COUNT] == 1


def test_cleaned_value_with_a_latin1_name_under_cyrillic_is_replaced(key):
    """Action C under ISO_IR 144: a description whose given name the decoder shows and whose surname it hides
    ("Hans Mќller") is replaced by a dummy (masking "Hans" would leave the Latin-1 bytes of "Müller"); one whose
    every hit the decoded text shows is cleaned as before, its Cyrillic text kept."""
    policy = Policy.basic(options=("CleanDescriptors",))
    head = [(0x0008, 0x0005, b"CS", b"ISO_IR 144"), *_MISLABELLED_HEAD[1:]]
    name = (0x0010, 0x0010, b"PN", b"Muller^Hans")
    hidden = raw_part10([*head, (0x0008, 0x1030, b"LO", b"Follow-up Hans M\xfcller"), name])
    result = deidentify(read_dataset(hidden), policy, key)
    out = io.BytesIO()
    write_dataset(result.dataset, out)
    assert b"M\xfcller" not in out.getvalue() and result.dataset.StudyDescription.startswith("ANON")
    shown = raw_part10([*head, (0x0008, 0x1030, b"LO", "Контроль Hans Muller".encode("iso8859_5")), name])
    cleaned = deidentify(read_dataset(shown), policy, key).dataset.StudyDescription
    assert cleaned.startswith("Контроль ***") and "Hans" not in cleaned and "Muller" not in cleaned
