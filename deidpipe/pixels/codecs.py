"""Decoding pixel data of any transfer syntax pydicom can decode, and writing it back losslessly.

Decoding goes through pydicom's pixel backends with the pylibjpeg (libjpeg, openjpeg, rle) and gdcm plugins
installed: JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE, deflate and big endian. YBR colour is
converted to RGB on decoding (the output then says ``RGB``); palette colour stays indices. Baseline JPEG is decoded
by Pillow first (see :func:`_pixel_array`).

Writing is lossless and never keeps the original compressed bytes once a pixel changed:
  * native (uncompressed) inputs are written uncompressed, little endian (big endian becomes Explicit VR
    Little Endian; Implicit VR Little Endian and deflate stay as they were);
  * encapsulated (compressed) inputs are re-encoded as RLE Lossless.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from deidpipe.dicomio.completeness import declared_native_size, pixel_data_problem
from deidpipe.errors import DeidError

_NATIVE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
#: The most bytes a decoded image may take (all frames): a large tomosynthesis or cine is well below; a header
#: that declares more is refused before decoding (whole-slide images are out of this stage's scope anyway).
MAX_DECODED_BYTES = 4 << 30


class PixelDecodeError(DeidError):
    """The pixel data of an object cannot be decoded (the object is quarantined)."""


class PixelEncodeError(DeidError):
    """The redacted pixel data cannot be written back losslessly (the object is quarantined)."""


@dataclass
class Decoded:
    """Pixels of one object as ``(frames, rows, columns[, samples])`` and how to write them back.

    Attributes:
        frames: the decoded array, always 3-D (grey or palette) or 4-D (colour), frames first.
        photometric: the photometric interpretation of ``frames`` (YBR inputs are decoded to ``RGB``).
        transfer_syntax: the input's transfer syntax.
        compressed: True when the input was encapsulated (compressed).
    """

    frames: np.ndarray
    photometric: str
    transfer_syntax: UID
    compressed: bool

    @property
    def is_colour(self) -> bool:
        return self.frames.ndim == 4

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def transfer_syntax_of(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None:
        return ImplicitVRLittleEndian if getattr(ds, "is_implicit_VR", True) else ExplicitVRLittleEndian
    return UID(ts)


#: Pixel Data (7FE0,0010), Rows (0028,0010), Columns (0028,0011).
_IMAGE_TAGS = (0x7FE00010, 0x00280010, 0x00280011)


def has_pixels(ds: Dataset) -> bool:
    """Whether ``ds`` has Pixel Data, Rows and Columns (looked up by tag number: asked for every object)."""
    return all(tag in ds._dict for tag in _IMAGE_TAGS)


def check_decodable(ds: Dataset) -> None:
    """Refuse, before any decoder allocates its output, pixel data whose header declares more than the bytes
    hold (native data shorter than declared, fragments cut or fewer than the frames; see
    :mod:`deidpipe.dicomio.completeness`) or a decoded size over :data:`MAX_DECODED_BYTES`. A header declaring gigabytes
    over a few bytes of data then fails at once instead of after allocating them."""
    problem = pixel_data_problem(ds)
    if problem is not None:
        raise PixelDecodeError(problem)
    declared = declared_native_size(ds)
    if declared is not None and declared > MAX_DECODED_BYTES:
        raise PixelDecodeError("declared image size is beyond the size limit")


def decode(ds: Dataset) -> Decoded:
    """Decode every frame of ``ds``; raise :class:`PixelDecodeError` (no value in the message) if impossible."""
    check_decodable(ds)
    ts = transfer_syntax_of(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        arr = _pixel_array(ds, ts)
    except Exception as exc:  # noqa: BLE001 - any decoder failure quarantines the object
        raise PixelDecodeError(f"pixel data cannot be decoded ({type(exc).__name__})") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if samples == 1 and arr.ndim == 2:
        arr = arr[None]
    elif samples > 1 and arr.ndim == 3:
        arr = arr[None]
    if arr.shape[0] != n_frames and n_frames > 1:
        raise PixelDecodeError("pixel data has fewer frames than NumberOfFrames")
    if photometric.startswith("YBR"):
        photometric = "RGB"  # pixel_array(raw=False) converted the colour space
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB"):
        raise PixelDecodeError("unsupported photometric interpretation")
    return Decoded(arr, photometric, ts, ts.is_compressed or ts not in _NATIVE)


def _pixel_array(ds: Dataset, ts: UID) -> np.ndarray:
    """Every frame, colour converted. Baseline JPEG goes to Pillow first: its libjpeg-turbo decodes 2-5x faster
    than GDCM (pydicom's first choice; 0.31 against 0.06 CPU-s for the 30 frames of pydicom's
    ``examples_ybr_color.dcm``, the largest share of a cine's cost) and gives the same pixels, since libjpeg-turbo
    is bit-exact with IJG libjpeg 6b's default DCT, upsampling and colour conversion, which GDCM bundles
    (``tests/pixels/test_codecs.py`` checks every baseline JPEG file pydicom ships). Where Pillow cannot decode
    a stream, pydicom's own order of plugins decides, as for every other syntax."""
    from pydicom.pixels import pixel_array

    if ts == JPEGBaseline8Bit:
        try:
            return np.asarray(pixel_array(ds, raw=False, decoding_plugin="pillow"))
        except Exception:  # noqa: BLE001 - not installed, or a stream Pillow refuses: the default order below
            pass
    return np.asarray(pixel_array(ds, raw=False))


def native_view(ds: Dataset, max_frames: int = 4) -> np.ndarray | None:
    """Up to ``max_frames`` evenly spaced frames of uncompressed little-endian grey pixel data as a zero-copy
    view of the bytes (for the screen, which then costs no decoding), or None when the data needs a decoder
    (compressed, big endian, colour, packed bits, signed values narrower than their container)."""
    if transfer_syntax_of(ds) not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        allocated, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or allocated not in (8, 16) or (signed and stored != allocated):
            return None
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
        data = ds.PixelData
        if not isinstance(data, bytes | bytearray) or len(data) < n_frames * rows * cols * dtype.itemsize:
            return None
        arr = np.frombuffer(data, dtype, count=n_frames * rows * cols).reshape(n_frames, rows, cols)
    except (AttributeError, TypeError, ValueError):
        return None
    arr = arr[:: max(1, n_frames // max_frames)]
    if not signed and stored < allocated:
        arr = arr & np.array((1 << stored) - 1, dtype)
    return arr


def fill_value(dec: Decoded) -> int | float:
    """What boxes are filled with: the image minimum (black for RGB)."""
    if dec.is_colour:
        return 0
    return dec.frames.min().item()


def encode(ds: Dataset, dec: Decoded, frames: np.ndarray) -> None:
    """Write ``frames`` into ``ds`` losslessly and fix the Image Pixel attributes and transfer syntax."""
    out = frames if frames.shape[0] > 1 else frames[0]
    bits_stored = int(ds.get("BitsStored", frames.dtype.itemsize * 8))
    ts = dec.transfer_syntax
    try:
        if ts == ExplicitVRBigEndian:  # pydicom sets pixel data in little endian only: the whole object goes over
            to_little_endian(ds)
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        n_frames = "NumberOfFrames" in ds
        # Frames decoded from big-endian data are big-endian arrays: pydicom writes an array's bytes as they are.
        out = np.ascontiguousarray(out, dtype=out.dtype.newbyteorder("="))
        ds.set_pixel_data(out, dec.photometric, bits_stored, generate_instance_uid=False)
        if not n_frames and frames.shape[0] == 1 and "NumberOfFrames" in ds:
            del ds.NumberOfFrames
        if dec.photometric == "PALETTE COLOR":
            ds.PhotometricInterpretation = "PALETTE COLOR"
        if dec.compressed:
            plugin = _rle_plugin()
            ds.compress(RLELossless, encoding_plugin=plugin, generate_instance_uid=False)
        elif ts in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = ts
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    except DeidError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PixelEncodeError(f"redacted pixel data cannot be written ({type(exc).__name__})") from None
    if dec.compressed and ds.file_meta.TransferSyntaxUID != RLELossless:
        raise PixelEncodeError("redacted pixel data was not re-encoded losslessly")


#: Byte-swap unit of the VRs whose values pydicom keeps as bytes whatever the byte order.
_SWAP_UNITS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
#: Pixel Data, Float and Double Float Pixel Data: replaced by the encoder, not worth swapping.
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def to_little_endian(ds: Dataset) -> None:
    """Make every element of a big-endian data set (read as Explicit VR Big Endian) hold little-endian values,
    at every level, so that pydicom writes it as Explicit VR Little Endian.

    pydicom decodes numbers (US, SS, UL, FL, AT, ...) by the byte order they were read in and writes them in the
    file's; but it keeps OW, OF, OL, OD and OV values as the bytes read, which would go out unswapped: those are
    byte-swapped here (their words, by their VR's size). Pixel data is left for the encoder to replace. Each
    data set is then marked as read in little endian: it holds no raw big-endian element any more."""
    for elem in ds:  # decodes raw elements in the byte order they were read in
        value = elem.value
        if elem.VR == "SQ":
            for item in value:
                to_little_endian(item)
            continue
        unit = _SWAP_UNITS.get(str(elem.VR))
        if unit and int(elem.tag) not in _PIXEL_TAGS and isinstance(value, bytes) and len(value) % unit == 0:
            elem.value = np.frombuffer(value, f">u{unit}").astype(f"<u{unit}").tobytes()
    ds.set_original_encoding(False, True, ds.original_character_set)


def _rle_plugin() -> str:
    try:
        import rle  # noqa: F401 - pylibjpeg-rle, much faster than pydicom's own encoder

        return "pylibjpeg"
    except ImportError:
        return "pydicom"
