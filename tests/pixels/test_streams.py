"""Metadata inside compressed pixel data (issue 17, section 1): COM/APPn segments of JPEG and JPEG-LS frames, COM
segments of JPEG 2000 codestreams (main and tile-part headers) and the boxes of JP2 files are removed; the
entropy-coded data is kept byte for byte (decoded pixels identical), the encapsulation (fragments, Basic and
Extended Offset Tables) is rebuilt, and dciodvfy reports no new error. Every object is built here, with planted
values that must not survive."""

from __future__ import annotations

import copy
import io
import json
import shutil
import struct

import numpy as np
import polars as pl
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_fragments, generate_frames
from pydicom.uid import (
    JPEG2000,
    MPEG4HP41,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.errors import DeidError
from deidpipe.header.engine import deidentify
from deidpipe.pixels.jpeg_stream import StreamError
from deidpipe.pixels.streams import (
    ACTION,
    StreamUnsupportedError,
    clean_encapsulated,
    strip_j2k_metadata,
    strip_jpeg_metadata,
)
from deidpipe.policy import Policy
from tests.helpers import dciodvfy_errors

NAME = b"Plantedsurname"
MRN = b"MRN4711938"
NAMES = (NAME, MRN, b"Hiddengiven", b"Xmpcreator", b"Exifartist", b"Afterthe", b"Adobetail", b"Thumbtext")


# -- building streams ----------------------------------------------------------------------------------------------
def _seg(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _after_soi(stream: bytes, *segments: bytes) -> bytes:
    assert stream[:2] == b"\xff\xd8"
    return stream[:2] + b"".join(segments) + stream[2:]


def _image(rows: int = 32, cols: int = 48, colour: bool = False, shift: int = 0) -> np.ndarray:
    """A smooth gradient (no text for the pixel stage to find)."""
    y, x = np.mgrid[0:rows, 0:cols]
    grey = ((x * 4 + y * 2 + shift) % 256).astype(np.uint8)
    return np.stack([grey, 255 - grey, grey // 2], axis=-1) if colour else grey


def _pillow_jpeg(arr: np.ndarray) -> bytes:
    """JPEG baseline by Pillow with a COM and an EXIF Artist (APP1) holding planted values."""
    exif = Image.Exif()
    exif[0x013B] = "Exifartist " + NAME.decode()  # Artist
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, comment=b"Patient " + NAME, exif=exif.tobytes())
    return buf.getvalue()


def _hostile_jpeg(arr: np.ndarray) -> bytes:
    """Pillow's JPEG (COM, EXIF) with its JFIF segment given a thumbnail, plus XMP (APP1), Photoshop (APP13), a
    JFXX thumbnail extension, an Adobe segment with a tail, and text after EOI: 8 segments to drop or cut."""
    jpeg = _pillow_jpeg(arr)
    assert jpeg[2:4] == b"\xff\xe0"  # Pillow's JFIF APP0, replaced by one with a 3x1 thumbnail
    app0_end = 4 + struct.unpack(">H", jpeg[4:6])[0]
    jfif = _seg(0xE0, b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x03\x01Thumbtext")
    xmp = _seg(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><dc:creator>Xmpcreator " + MRN + b"</dc:creator>")
    ps = _seg(0xED, b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x10Hiddengiven " + NAME)
    jfxx = _seg(0xE0, b"JFXX\x00\x13Thumbtext")
    adobe = _seg(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01Adobetail " + NAME)
    return b"\xff\xd8" + jfif + xmp + ps + jfxx + adobe + jpeg[app0_end:] + b"Afterthe EOI " + NAME


PER_FRAME = 8


def _sc(pixel_data: bytes, ts: str, rows: int, cols: int, *, frames: int = 1, colour: bool = False) -> Dataset:
    """A secondary capture object of identity NAME / MRN around encapsulated ``pixel_data``."""
    ds = Dataset()
    sop = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.file_meta.TransferSyntaxUID = ts
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = NAME.decode() + "^Hiddengiven", MRN.decode()
    ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "19700101", "F", "20200101", "120000"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "ACC1", "", "1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.ConversionType = "OT", 1, 1, "WSD"
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "YBR_FULL_422" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.set_original_encoding(False, True)
    return ds


def _file_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    write_dataset(ds, buf)
    return buf.getvalue()


def _roundtrip(ds: Dataset) -> Dataset:
    return read_dataset(_file_bytes(ds))


def _assert_clean(data: bytes) -> None:
    lowered = data.lower()
    for value in NAMES:
        assert value.lower() not in lowered, value


def _assert_same_pixels(before: Dataset, after: Dataset) -> None:
    a, b = before.pixel_array, _roundtrip(after).pixel_array
    assert a.shape == b.shape and np.array_equal(a, b)


def _assert_offsets(ds: Dataset) -> None:
    """One fragment per frame, even item lengths; the Basic (or Extended) Offset Table points at each frame."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    items = list(generate_fragments(ds.PixelData))
    bot, fragments = items[0], items[1:]
    assert len(fragments) == n and all(len(f) % 2 == 0 for f in fragments)
    if bot:
        assert list(struct.unpack(f"<{n}I", bot)) == _item_offsets(fragments)
    if "ExtendedOffsetTable" in ds:
        assert not bot
        assert list(struct.unpack(f"<{n}Q", ds.ExtendedOffsetTable)) == _item_offsets(fragments)
        assert list(struct.unpack(f"<{n}Q", ds.ExtendedOffsetTableLengths)) == [len(f) for f in fragments]


def _item_offsets(fragments: list[bytes]) -> list[int]:
    out, pos = [], 0
    for f in fragments:
        out.append(pos)
        pos += 8 + len(f)
    return out


# -- JPEG -------------------------------------------------------------------------------------------------------------
def test_jpeg_segments_are_removed_and_decoding_kept():
    arr = _image(colour=True)
    stream = _hostile_jpeg(arr)
    out = strip_jpeg_metadata(stream)
    _assert_clean(out.data)
    assert out.removed == PER_FRAME  # COM, EXIF, XMP, Photoshop, JFXX, text after EOI; JFIF and Adobe cut
    assert out.data[2:2 + 18] == _seg(0xE0, b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x00\x00")
    assert out.data.endswith(b"\xff\xd9")
    before = np.asarray(Image.open(io.BytesIO(stream)))
    after = np.asarray(Image.open(io.BytesIO(out.data)))
    assert np.array_equal(before, after)
    again = strip_jpeg_metadata(out.data)
    assert again.removed == 0 and again.data is out.data


def test_decoding_segments_are_kept():
    """ICC profile kept with its text blanked (its colour tags byte for byte), Adobe cut to its 12 bytes, mrfx to
    its 5; nothing to remove leaves the bytes."""
    from PIL import ImageCms

    from deidpipe.pixels.icc import blank_icc_text

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    Image.fromarray(_image(colour=True)).save(buf, "JPEG", quality=90)
    plain = buf.getvalue()
    assert strip_jpeg_metadata(plain).data is plain  # the fast path: the very same object
    buf = io.BytesIO()
    Image.fromarray(_image(colour=True)).save(buf, "JPEG", quality=90, icc_profile=icc)
    adobe = _seg(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01Adobetail " + NAME)
    mrfx = _seg(0xE8, b"mrfx\x01" + NAME)
    out = strip_jpeg_metadata(_after_soi(buf.getvalue(), adobe, mrfx))
    assert out.removed == 3  # Adobe and mrfx cut, the profile's description and copyright blanked
    assert _seg(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01") in out.data and _seg(0xE8, b"mrfx\x01") in out.data
    assert blank_icc_text(icc) in out.data and b"s\x00R\x00G\x00B" not in out.data
    _assert_clean(out.data)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(out.data))), np.asarray(Image.open(buf)))


def test_icc_profile_split_over_several_segments_is_dropped():
    """A profile in two APP2 chunks is dropped, not joined (the header's ICC Profile is the one DICOM reads)."""
    chunk = b"ICC_PROFILE\x00\x01\x02" + b"desc" + NAME
    out = strip_jpeg_metadata(_after_soi(_pillow_jpeg(_image()), _seg(0xE2, chunk)))
    _assert_clean(out.data)


@pytest.mark.parametrize("bad", [
    b"\x00\x01\x02",                                   # no SOI
    b"\xff\xd8\xff\xfe\x00\x40short",                  # a COM running past the end
    b"\xff\xd8\xff\xdb\x00\x04\x00\x00",               # no EOI
    b"\xff\xd8\xff\xc8\x00\x04\x00\x00\xff\xd9",       # JPG (reserved) marker
    b"\xff\xd8\x12\x34\xff\xd9",                       # no marker where one is expected
])
def test_malformed_jpeg_fails_closed(bad):
    with pytest.raises(StreamError):
        strip_jpeg_metadata(bad)


@pytest.fixture(scope="module")
def jpeg_multiframe() -> Dataset:
    """Three frames of JPEG baseline, each with planted COM/APPn, the second split over two fragments."""
    frames = [_hostile_jpeg(_image(shift=10 * k)) for k in range(3)]
    items = [frames[0], frames[1][:100], frames[1][100:], frames[2]]
    # encapsulate() itemises frames; here fragments are itemised one by one, the BOT pointing at frame starts
    body, offsets, pos = b"", [], 0
    for k, frag in enumerate(items):
        if k != 2:
            offsets.append(pos)
        frag = frag + b"\x00" * (len(frag) & 1)
        item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(frag)) + frag
        body += item
        pos += len(item)
    value = b"\xfe\xff\x00\xe0" + struct.pack("<I", 12) + struct.pack("<3I", *offsets) + body
    return _sc(value, JPEGBaseline8Bit, 32, 48, frames=3)


def test_jpeg_multiframe_object(jpeg_multiframe, tmp_path):
    ds = copy.deepcopy(jpeg_multiframe)
    removed = clean_encapsulated(ds)
    assert removed == 3 * PER_FRAME
    _assert_clean(ds.PixelData)
    _assert_offsets(ds)
    _assert_same_pixels(jpeg_multiframe, ds)
    src, out = tmp_path / "in.dcm", tmp_path / "out.dcm"
    write_dataset(jpeg_multiframe, src)
    write_dataset(ds, out)
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(out) - dciodvfy_errors(src) == set()


def test_extended_offset_table_is_rewritten():
    frames = [_hostile_jpeg(_image(shift=7 * k)) for k in range(2)]
    value, eot, lengths = encapsulate_extended(frames)
    ds = _sc(value, JPEGBaseline8Bit, 32, 48, frames=2)
    ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = eot, lengths
    ds["ExtendedOffsetTable"].VR = ds["ExtendedOffsetTableLengths"].VR = "OV"
    before = copy.deepcopy(ds)
    assert clean_encapsulated(ds) == 2 * PER_FRAME
    assert ds.ExtendedOffsetTable != eot
    _assert_offsets(ds)
    _assert_same_pixels(before, ds)
    _assert_clean(ds.PixelData)


@pytest.mark.parametrize("case", ["fragment outside every frame", "text after the frame's end"])
def test_extended_offset_table_that_leaves_bytes_out_is_not_trusted(case):
    """An Extended Offset Table that names only part of the fragments' bytes (leak hunt): a second fragment that
    no frame covers, or a frame length that stops at EOI before trailing text. Its frames alone held nothing to
    remove, so the Pixel Data went out as it came. The frames are now split as if the table were absent."""
    clean = _pillow_jpeg(_image())
    clean = clean[:clean.index(b"\xff\xfe")] + clean[clean.index(b"\xff\xdb"):]  # Pillow's COM out: nothing but
    clean = b"\xff\xd8" + clean[clean.index(b"\xff\xdb"):]  # pixels and tables left in the first frame
    if case == "fragment outside every frame":
        value = encapsulate([clean, _hostile_jpeg(_image(shift=3))], has_bot=False)
    else:
        value = encapsulate([clean + b"Afterthe EOI " + NAME + b" "], has_bot=False)
    ds = _sc(value, JPEGBaseline8Bit, 32, 48)
    ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = struct.pack("<Q", 0), struct.pack("<Q", len(clean))
    ds["ExtendedOffsetTable"].VR = ds["ExtendedOffsetTableLengths"].VR = "OV"
    assert clean_encapsulated(ds) > 0
    _assert_clean(ds.PixelData)
    assert ds.pixel_array.shape == (32, 48)


def _spliced(name: str, *segments: bytes) -> tuple[Dataset, Dataset]:
    """A bundled pydicom object (as read, and with ``segments`` after each frame's SOI)."""
    ds = pydicom.dcmread(get_testdata_file(name))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    frames = [_after_soi(f, *segments) for f in generate_frames(ds.PixelData, number_of_frames=n)]
    planted = copy.deepcopy(ds)
    planted.PixelData = encapsulate(frames)
    return ds, planted


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_08.dcm",
                                  "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jls_lossy_line.dcm"])
def test_bundled_jpeg_family_objects(name):
    """JPEG-LS (lossless and near-lossless), JPEG lossless (process 14 SV1), baseline: planted COM and APP1 gone,
    pixels identical to the unplanted original."""
    original, planted = _spliced(name, _seg(0xFE, b"Patient " + NAME), _seg(0xE1, b"Exif\x00\x00Exifartist " + MRN))
    assert NAME in planted.PixelData
    assert clean_encapsulated(planted) >= 2
    _assert_clean(planted.PixelData)
    _assert_offsets(planted)
    _assert_same_pixels(original, planted)


# -- JPEG 2000 ------------------------------------------------------------------------------------------------------
def _j2k_with_comments(stream: bytes) -> bytes:
    """``stream`` with a COM (text) in the main header and one in every tile-part header, Psot fixed."""
    com = _seg(0x64, b"\x00\x01Patient " + NAME)
    sot = stream.index(b"\xff\x90\x00\x0a")
    out = stream[:sot] + com
    pos = sot
    while stream[pos:pos + 2] == b"\xff\x90":
        psot = struct.unpack(">I", stream[pos + 6:pos + 10])[0]
        end = pos + psot if psot else len(stream) - 2
        sod = stream.index(b"\xff\x93", pos + 12)
        tcom = _seg(0x64, b"\x00\x01" + MRN)
        new_psot = psot + len(tcom) if psot else 0
        out += stream[pos:pos + 6] + struct.pack(">I", new_psot) + stream[pos + 10:sod] + tcom + stream[sod:end]
        pos = end
    return out + stream[pos:]


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "JPEG2000.dcm", "SC_rgb_gdcm_KY.dcm"])
def test_j2k_comments_main_and_tile_part(name):
    original = pydicom.dcmread(get_testdata_file(name))
    n = int(original.get("NumberOfFrames", 1) or 1)
    frames = [_j2k_with_comments(f.rstrip(b"\x00") if f.endswith(b"\xd9\x00") else f)
              for f in generate_frames(original.PixelData, number_of_frames=n)]
    planted = copy.deepcopy(original)
    planted.PixelData = encapsulate(frames)
    assert MRN in planted.PixelData
    _assert_same_pixels(original, planted)  # the planted stream itself decodes
    assert clean_encapsulated(planted) >= 2 * n
    _assert_clean(planted.PixelData)
    assert b"\xff\x64" not in b"".join(f[:f.index(b"\xff\x93")] for f in
                                       generate_frames(planted.PixelData, number_of_frames=n))
    _assert_offsets(planted)
    _assert_same_pixels(original, planted)


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body) + 8) + kind + body


def test_jp2_boxes_are_dropped():
    """A JP2-wrapped frame with xml and uuid boxes (and one inside jp2h): only what decodes is left."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    code = next(generate_frames(ds.PixelData, number_of_frames=1))
    rows, cols = int(ds.Rows), int(ds.Columns)
    ihdr = _box(b"ihdr", struct.pack(">IIHBBBB", rows, cols, 1, 15, 7, 0, 0))
    colr = _box(b"colr", b"\x01\x00\x00" + struct.pack(">I", 17))
    jp2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + _box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ")
           + _box(b"jp2h", ihdr + colr + _box(b"lbl ", b"Hiddengiven"))
           + _box(b"xml ", b"<name>" + NAME + b"</name>") + _box(b"uuid", b"\x11" * 16 + MRN)
           + _box(b"jp2c", _j2k_with_comments(code)) + _box(b"uinf", _box(b"url ", b"\x00" * 4 + b"Xmpcreator")))
    out = strip_j2k_metadata(jp2)
    _assert_clean(out.data)
    own = strip_j2k_metadata(code).removed  # the encoder's own COM ("Created by ...")
    assert out.removed == 3 + 1 + 2 + own  # xml, uuid, uinf; lbl in jp2h; the two COM segments planted
    assert out.data.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n")
    planted = copy.deepcopy(ds)
    planted.PixelData = encapsulate([jp2])
    cleaned = copy.deepcopy(planted)
    assert clean_encapsulated(cleaned) == out.removed
    _assert_same_pixels(ds, cleaned)


def test_jp2_file_type_and_colour_profile_are_cleaned():
    """A JP2 file whose file type box carries text in its minor version and compatibility list, and whose colour
    box holds an ICC profile with a name in its description (leak hunt: both went out byte for byte): brands
    other than JPEG 2000's become ``jp2 ``, the minor version 0, the profile's text blank; pixels unchanged."""
    from PIL import ImageCms

    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    code = next(generate_frames(ds.PixelData, number_of_frames=1))
    own = strip_j2k_metadata(code).removed
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    at = icc.index("sRGB".encode("utf-16-be"))
    icc[at:at + 2 * len(NAME[:8])] = NAME[:8].decode().encode("utf-16-be")  # "Plantedsurname" cut to 8 letters
    ihdr = _box(b"ihdr", struct.pack(">IIHBBBB", int(ds.Rows), int(ds.Columns), 1, 15, 7, 0, 0))
    jp2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + _box(b"ftyp", b"jp2 Plan" + b"jp2 " + NAME[:8])
           + _box(b"jp2h", ihdr + _box(b"colr", b"\x02\x00\x00" + bytes(icc))) + _box(b"jp2c", code))
    out = strip_j2k_metadata(jp2)
    assert out.removed == 2 + own
    assert b"Plan" not in out.data and NAME[:8].decode().encode("utf-16-be") not in out.data
    assert _box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 jp2 jp2 ") in out.data
    planted = copy.deepcopy(ds)
    planted.PixelData = encapsulate([jp2])
    assert clean_encapsulated(planted) == out.removed
    _assert_same_pixels(ds, planted)


@pytest.mark.parametrize("bad", [
    b"\xff\x4f\xff\x51\x00\x40",                                      # SIZ running past the end
    b"\xff\x4f\xff\x51\x00\x04\x00\x00\xff\x30\x00\x04\x00\x00",      # unknown marker in the main header
    b"\xff\x4f\xff\x51\x00\x04\x00\x00\xff\x90\x00\x0a\x00\x00\x00\x00\x40\x00\x00\x01\xff\x93",  # Psot too long
])
def test_malformed_j2k_fails_closed(bad):
    with pytest.raises(StreamError):
        strip_j2k_metadata(bad)


# -- transfer syntaxes, the fast path, the header engine and the pipeline -------------------------------------------
def test_no_text_syntaxes_and_unknown_ones():
    rle = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    value = rle.PixelData
    assert clean_encapsulated(rle) == 0 and rle.PixelData is value
    native = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert clean_encapsulated(native) == 0
    video = _sc(encapsulate([b"\x00\x00\x01\xb3" + NAME]), MPEG4HP41, 32, 48)
    with pytest.raises(StreamUnsupportedError):
        clean_encapsulated(video)


def test_clean_stream_is_left_untouched():
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    elem = ds["PixelData"]
    assert clean_encapsulated(ds) == 0
    assert ds["PixelData"] is elem


def test_header_engine_cleans_and_counts(jpeg_multiframe, key):
    source = copy.deepcopy(jpeg_multiframe)
    result = deidentify(source, Policy.basic(), key)
    assert result.actions[ACTION] == 3 * PER_FRAME
    assert source.PixelData == jpeg_multiframe.PixelData  # the input data set is not changed
    data = _file_bytes(result.dataset)
    _assert_clean(data)
    _assert_same_pixels(jpeg_multiframe, result.dataset)
    bad = copy.deepcopy(jpeg_multiframe)
    bad.PixelData = encapsulate([b"\xff\xd8\xff\xfe\x00\x40" + NAME] * 3)
    with pytest.raises(DeidError) as err:
        deidentify(bad, Policy.basic(), key)
    assert NAME.decode() not in str(err.value)


@pytest.mark.parametrize("pixels", ["off", "auto"])
def test_run_writes_jpeg_objects_clean(pixels, key, tmp_path, jpeg_multiframe):
    """End to end: a JPEG object with a name in COM, EXIF, XMP and after EOI comes out clean whether or not the
    pixel stage runs (it finds no text in a gradient), with the count in the audit; a broken stream is
    quarantined."""
    import deidpipe

    src = tmp_path / "src"
    src.mkdir()
    single = _sc(encapsulate([_hostile_jpeg(_image(colour=True))]), JPEGBaseline8Bit, 32, 48, colour=True)
    write_dataset(single, src / "single.dcm")
    write_dataset(jpeg_multiframe, src / "multi.dcm")
    broken = copy.deepcopy(jpeg_multiframe)
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    broken.PixelData = encapsulate([b"\xff\xd8\xff\xe1\x00\x40" + NAME] * 3)
    write_dataset(broken, src / "broken.dcm")
    dst = tmp_path / "out"
    report = deidpipe.run(src, dst, Policy.basic(pixels=pixels), key=key, workers=1)
    assert report.written == 2 and report.quarantined == 1
    outs = [p for p in dst.rglob("*.dcm") if "quarantine" not in p.parts]
    assert len(outs) == 2
    for p in dst.rglob("*"):
        if p.is_file() and "quarantine" not in p.parts:
            _assert_clean(p.read_bytes())
    audit = pl.read_parquet(dst / "_deidpipe" / "audit.parquet")
    written = audit.filter(pl.col("status") == "written")
    assert sorted(json.loads(a)[ACTION] for a in written["actions"]) == [PER_FRAME, 3 * PER_FRAME]
    if pixels == "auto":  # the pixel stage ran on both (modality OT), found no text, kept the cleaned streams
        assert all(json.loads(a).get("pixel:selected") == 1 for a in written["actions"])
    [reason] = audit.filter(pl.col("status") == "quarantined")["reason"]
    assert reason.startswith("JPEG ") and NAME.decode() not in reason
    for p in outs:
        out = pydicom.dcmread(p)
        ref = jpeg_multiframe if int(out.get("NumberOfFrames", 1) or 1) == 3 else single
        assert np.array_equal(out.pixel_array, _roundtrip(ref).pixel_array)
        if shutil.which("dciodvfy"):
            inp = tmp_path / "ref.dcm"
            write_dataset(ref, inp)
            assert dciodvfy_errors(p) - dciodvfy_errors(inp) == set()


def test_incomplete_object_written_under_policy_is_cleaned(jpeg_multiframe, key):
    """Under ``allow_incomplete_pixels`` an object with fewer fragments than frames is still cleaned."""
    ds = copy.deepcopy(jpeg_multiframe)
    ds.PixelData = encapsulate([_hostile_jpeg(_image())], has_bot=False)
    result = deidentify(ds, Policy.basic(allow_incomplete_pixels=True), key)
    assert result.actions[ACTION] == PER_FRAME
    _assert_clean(_file_bytes(result.dataset))


def test_j2k_object_through_the_engine(key, tmp_path):
    original = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    planted = copy.deepcopy(original)
    planted.PixelData = encapsulate([_j2k_with_comments(next(generate_frames(original.PixelData,
                                                                              number_of_frames=1)))])
    planted.file_meta.TransferSyntaxUID = JPEG2000
    result = deidentify(planted, Policy.basic(), key)
    assert result.actions[ACTION] >= 2
    _assert_clean(result.dataset.PixelData)
    _assert_same_pixels(original, result.dataset)
    src, out = tmp_path / "in.dcm", tmp_path / "out.dcm"
    write_dataset(original, src)
    write_dataset(result.dataset, out)
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(out) - dciodvfy_errors(src) == set()


def _with_tlm(stream: bytes) -> bytes:
    """``stream`` with a TLM segment (tile-part lengths: 8-bit tile index, 32-bit length) before its first SOT."""
    sot = stream.index(b"\xff\x90\x00\x0a")
    entries, pos = b"", sot
    while stream[pos:pos + 2] == b"\xff\x90":
        psot = struct.unpack(">I", stream[pos + 6:pos + 10])[0]
        assert psot, "the test needs explicit tile-part lengths"
        entries += struct.pack(">BI", stream[pos + 5], psot)
        pos += psot
    return stream[:sot] + _seg(0x55, b"\x00\x50" + entries) + stream[sot:]


def test_j2k_tile_part_lengths_stay_consistent():
    """Psot of a tile-part that lost a COM is fixed; a TLM index of the old lengths is dropped (optional)."""
    original = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    code = next(generate_frames(original.PixelData, number_of_frames=1))
    planted_code = _with_tlm(_j2k_with_comments(code))
    planted = copy.deepcopy(original)
    planted.PixelData = encapsulate([planted_code])
    _assert_same_pixels(original, planted)
    out = strip_j2k_metadata(planted_code)
    assert b"\xff\x55" not in out.data[:out.data.index(b"\xff\x90")]
    sot = out.data.index(b"\xff\x90\x00\x0a")
    psot = struct.unpack(">I", out.data[sot + 6:sot + 10])[0]
    assert out.data[sot + psot:sot + psot + 2] == b"\xff\xd9"
    assert clean_encapsulated(planted) == out.removed
    _assert_same_pixels(original, planted)


def test_htj2k_capabilities_segment_is_kept():
    """HTJ2K (15444-15) main headers carry CAP (FF50) and CPF (FF59): kept; a COM beside them is dropped."""
    code = next(generate_frames(pydicom.dcmread(get_testdata_file("JPEG2000.dcm")).PixelData, number_of_frames=1))
    siz_end = 4 + struct.unpack(">H", code[4:6])[0]
    cap, cpf = _seg(0x50, b"\x00\x02\x00\x00\x00\x20"), _seg(0x59, b"\x00\x00")
    ht = code[:siz_end] + cap + cpf + _seg(0x64, b"\x00\x01" + NAME) + code[siz_end:]
    out = strip_j2k_metadata(ht)
    assert cap + cpf in out.data and NAME not in out.data


def test_compressed_stream_not_encapsulated_fails_closed():
    ds = _sc(_hostile_jpeg(_image()), JPEGBaseline8Bit, 32, 48)
    ds["PixelData"].is_undefined_length = False
    with pytest.raises(StreamError):
        clean_encapsulated(ds)
