"""A DICOM series as one volume and back: the DICOM side of the defacing series stage (issue 10).

``series_to_volume(datasets) -> SeriesVolume`` assembles single-frame MR/CT slices into a 3-D array of **stored
values** with a RAS+ affine (nibabel's convention) and the slice order; ``volume_to_series(array, series)`` writes
an array of that shape back into copies of the slices, each keeping its own geometry. Not yet wired into
``deidpipe run`` (see docs/deface.md, 'DICOM series').

Geometry (DICOM PS3.3 C.7.6.2, Image Plane module; millimetres, patient LPS+ axes):
- ImageOrientationPatient (0020,0037): direction cosines of the first row (direction of increasing column index)
  and of the first column (increasing row index); the slice normal is their cross product.
- ImagePositionPatient (0020,0032): centre of the first transmitted pixel; its projection on the normal orders
  the slices.
- PixelSpacing (0028,0030): row spacing (between rows, i.e. along a column) then column spacing.
Array axes are (column i, row j, slice k), as a NIfTI converted from DICOM stores them; the affine is turned from
LPS+ to RAS+ by negating the first two world axes.

Stored values, never rescaled: RescaleSlope/RescaleIntercept (0028,1053/1052) are not applied, so a defaced voxel
goes back as stored value 0. For MR stored 0 is background; for CT with the usual intercept of -1024 it reads as
-1024 HU (air); for CT stored signed in HU (intercept 0) it reads as 0 HU (water): the face is still gone, but a
later air fill value in stored units may be preferred (docs/deface.md).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from deidpipe.deface.errors import VolumeError

MIN_SLICES = 3
ORIENTATION_TOLERANCE = 1e-4  # direction cosines that differ by more than this are another orientation
SPACING_TOLERANCE_MM = 0.01  # absolute floor of the spacing tolerance; the relative part is 1% of the spacing
SPACING_TOLERANCE_REL = 0.01
CLEAN_VISUAL_CODE = ("113102", "DCM", "Clean Recognizable Visual Features")
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Fixed reasons: a refusal never quotes a value read from the file.
MISSING_GEOMETRY = ("a slice lacks its geometry (ImageOrientationPatient, ImagePositionPatient, PixelSpacing, Rows,"
                    " Columns or PixelData)")
TOO_FEW = f"fewer than {MIN_SLICES} slices: not a volume"
MULTI_FRAME = "a multi-frame object without per-frame functional groups, or not alone in its series"
PIXEL_FORMAT = "unsupported pixel format (only one grey-scale MONOCHROME2 sample of 8, 16 or 32 bits)"
BAD_ORIENTATION = "invalid ImageOrientationPatient (not two orthogonal unit vectors)"
MIXED_ORIENTATION = "mixed orientations in one series"
DIFFERING_FORMAT = "slices differ in Rows, Columns, PixelSpacing or pixel format"
DIFFERING_RESCALE = "slices differ in RescaleSlope or RescaleIntercept"
DIFFERING_FRAME = "slices differ in FrameOfReferenceUID"
DUPLICATE_POSITION = "duplicate slice positions (repeated or overlapping acquisitions)"
SEVERAL_STACKS = "slice positions do not lie on one line along the slice normal (several stacks or gantry tilt)"
UNEVEN_SPACING = "uneven slice spacing or a gap between slices"
UNDECODABLE = "the pixel data cannot be decoded"
SHAPE_MISMATCH = "the volume's shape is not the series' shape"
NOT_INTEGRAL = "the volume holds values that are not whole numbers"
OUT_OF_RANGE = "the volume holds values outside the stored bit range (BitsStored, PixelRepresentation)"
SHEARED = "the volume's slice axis is not perpendicular to its slices (DICOM slices cannot store a shear)"


class SeriesError(VolumeError):
    """A DICOM series that cannot be made into one volume (or back) safely; ``reason`` is one of the fixed texts
    above, never a value from the file."""


@dataclass
class SeriesVolume:
    """A series as a volume. ``array`` holds stored values indexed (column, row, slice); ``affine`` maps those
    indices to RAS+ mm. Single-frame slices: ``datasets[k]`` is the slice at index k and ``order[k]`` its index
    in the input list. An enhanced multi-frame object (``multiframe``): ``datasets`` holds it alone and
    ``order[k]`` is the (0-based) frame at slice index k."""

    array: np.ndarray
    affine: np.ndarray
    datasets: list[Dataset]
    order: list[int]
    multiframe: bool = False

    def image(self) -> Any:
        """A nibabel Nifti1Image of the stored values (no scaling), qform and sform set to the affine."""
        import nibabel as nib

        img = nib.Nifti1Image(self.array, self.affine)
        img.header.set_xyzt_units("mm")
        img.header.set_qform(self.affine, code=1)
        img.header.set_sform(self.affine, code=1)
        return img


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        raise SeriesError(MISSING_GEOMETRY) from None
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise SeriesError(MISSING_GEOMETRY)
    return out


def _pixel_format(ds: Dataset) -> tuple[int, int, int]:
    """(BitsAllocated, BitsStored, PixelRepresentation) of a slice, or refuse."""
    try:
        bits, rep = int(ds.BitsAllocated), int(ds.PixelRepresentation)
        stored = int(ds.get("BitsStored", bits))
        samples, photometric = int(ds.get("SamplesPerPixel", 1)), str(ds.get("PhotometricInterpretation", ""))
    except (AttributeError, TypeError, ValueError):
        raise SeriesError(PIXEL_FORMAT) from None
    if bits not in (8, 16, 32) or not 0 < stored <= bits or rep not in (0, 1) or samples != 1 or \
            photometric != "MONOCHROME2":
        raise SeriesError(PIXEL_FORMAT)
    return bits, stored, rep


def _dtype(bits: int, rep: int) -> np.dtype:
    return np.dtype(f"<{'i' if rep else 'u'}{bits // 8}")


def _geometry(iops: np.ndarray, ipps: np.ndarray, spacings: np.ndarray) -> tuple[list[int], np.ndarray]:
    """(slice order, RAS+ affine) from per-slice orientation (n x 6), position (n x 3) and spacing (n x 2), or
    refuse: see ``series_to_volume``."""
    row, col = iops[0, :3], iops[0, 3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise SeriesError(BAD_ORIENTATION)
    if np.abs(iops - iops[0]).max() > ORIENTATION_TOLERANCE:
        raise SeriesError(MIXED_ORIENTATION)
    if np.abs(spacings - spacings[0]).max() > 1e-6 or spacings[0].min() <= 0:
        raise SeriesError(DIFFERING_FORMAT)
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    order = [int(n) for n in np.argsort(ipps @ normal, kind="stable")]
    pos = ipps[order]
    along = pos @ normal
    steps = np.diff(along)
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_REL * float(np.median(steps)))
    if steps.min() <= tolerance:
        raise SeriesError(DUPLICATE_POSITION)
    in_plane = (pos - pos[0]) - np.outer(along - along[0], normal)
    if np.abs(in_plane).max() > tolerance:
        raise SeriesError(SEVERAL_STACKS)
    step = float(np.median(steps))
    if np.abs(steps - step).max() > tolerance:
        raise SeriesError(UNEVEN_SPACING)
    lps = np.eye(4)
    lps[:3, 0] = row * spacings[0][1]  # along a row: column spacing
    lps[:3, 1] = col * spacings[0][0]  # along a column: row spacing
    lps[:3, 2] = normal * step
    lps[:3, 3] = pos[0]
    return order, _LPS_RAS @ lps


def stored_pixels(ds: Dataset) -> np.ndarray:
    """The stored values, after the pixel stage's own bounds (declared size against the bytes, a size cap):
    a hostile header must not make a decoder allocate gigabytes."""
    from deidpipe.pixels.codecs import PixelDecodeError, check_decodable

    try:
        check_decodable(ds)
        return np.asarray(ds.pixel_array)
    except (PixelDecodeError, Exception):  # noqa: BLE001 - a decoder's message may quote file content
        raise SeriesError(UNDECODABLE) from None


def _group(ds: Dataset, frame: int, group: str, keyword: str, count: int) -> np.ndarray:
    """``keyword`` of functional group ``group`` for ``frame``: the per-frame item first, then the shared one."""
    for groups in (ds.PerFrameFunctionalGroupsSequence[frame], (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if groups is not None and len(groups.get(group) or []):
            return _floats(groups.get(group)[0], keyword, count)
    raise SeriesError(MISSING_GEOMETRY)


def _enhanced_to_volume(ds: Dataset) -> SeriesVolume:
    """An enhanced MR/CT object (one file, NumberOfFrames frames): geometry from the functional groups
    PlanePositionSequence (ImagePositionPatient), PlaneOrientationSequence (ImageOrientationPatient) and
    PixelMeasuresSequence (PixelSpacing), per frame or shared; PixelValueTransformationSequence must be the same
    for every frame. The same checks as for single-frame slices."""
    frames = len(ds.PerFrameFunctionalGroupsSequence)
    if frames != int(ds.get("NumberOfFrames", 0) or 0) or "Rows" not in ds or "Columns" not in ds:
        raise SeriesError(MISSING_GEOMETRY)
    if frames < MIN_SLICES:
        raise SeriesError(TOO_FEW)
    _pixel_format(ds)
    iops = np.array([_group(ds, n, "PlaneOrientationSequence", "ImageOrientationPatient", 6) for n in range(frames)])
    ipps = np.array([_group(ds, n, "PlanePositionSequence", "ImagePositionPatient", 3) for n in range(frames)])
    spacings = np.array([_group(ds, n, "PixelMeasuresSequence", "PixelSpacing", 2) for n in range(frames)])
    rescale = set()
    for n in range(frames):
        shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        items = ds.PerFrameFunctionalGroupsSequence[n].get("PixelValueTransformationSequence") or \
            shared.get("PixelValueTransformationSequence") or [Dataset()]
        rescale.add((str(items[0].get("RescaleSlope", "")), str(items[0].get("RescaleIntercept", ""))))
    if len(rescale) != 1:
        raise SeriesError(DIFFERING_RESCALE)
    order, affine = _geometry(iops, ipps, spacings)
    pixels = stored_pixels(ds)
    if pixels.shape != (frames, int(ds.Rows), int(ds.Columns)):
        raise SeriesError(UNDECODABLE)
    return SeriesVolume(np.stack([pixels[n].T for n in order], axis=2), affine, [ds], order, multiframe=True)


def series_to_volume(datasets: list[Dataset]) -> SeriesVolume:
    """Assemble single-frame slices, or one enhanced multi-frame MR/CT object, into a volume sorted along the
    slice normal, or raise :class:`SeriesError`.

    Refused (with the fixed reasons above): fewer than 3 slices; a multi-frame object without
    PerFrameFunctionalGroupsSequence or not alone; missing geometry; a pixel format other than one
    MONOCHROME2 sample; orientations differing by more than 1e-4 in any direction cosine; Rows, Columns,
    PixelSpacing, pixel format, rescale or FrameOfReferenceUID differing between slices; two slices at the same
    position; positions off the line along the normal (several stacks side by side, or a tilted gantry: the
    volume would be sheared); a step between neighbours differing from the median by more than 1% of it or
    0.01 mm, whichever is larger (a gap or uneven spacing: the voxel grid would be wrong)."""
    if len(datasets) == 1 and "PerFrameFunctionalGroupsSequence" in datasets[0]:
        return _enhanced_to_volume(datasets[0])
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds for ds in datasets):
        raise SeriesError(MULTI_FRAME)
    if len(datasets) < MIN_SLICES:
        raise SeriesError(TOO_FEW)
    for ds in datasets:
        if any(k not in ds for k in ("Rows", "Columns", "PixelData")):
            raise SeriesError(MISSING_GEOMETRY)
    iops = np.array([_floats(ds, "ImageOrientationPatient", 6) for ds in datasets])
    ipps = np.array([_floats(ds, "ImagePositionPatient", 3) for ds in datasets])
    spacings = np.array([_floats(ds, "PixelSpacing", 2) for ds in datasets])
    if len({(int(ds.Rows), int(ds.Columns), _pixel_format(ds)) for ds in datasets}) != 1:
        raise SeriesError(DIFFERING_FORMAT)
    if len({(str(ds.get("RescaleSlope", "")), str(ds.get("RescaleIntercept", ""))) for ds in datasets}) != 1:
        raise SeriesError(DIFFERING_RESCALE)
    if len({str(ds.get("FrameOfReferenceUID", "")) for ds in datasets}) != 1:
        raise SeriesError(DIFFERING_FRAME)
    order, affine = _geometry(iops, ipps, spacings)
    slices = []
    for n in order:
        pixels = stored_pixels(datasets[n])
        if pixels.shape != (int(datasets[n].Rows), int(datasets[n].Columns)):
            raise SeriesError(UNDECODABLE)
        slices.append(pixels.T)
    return SeriesVolume(np.stack(slices, axis=2), affine, [datasets[n] for n in order], order)


def _mark_clean(ds: Dataset) -> None:
    """RecognizableVisualFeatures (0028,0302) = NO; code 113102 appended once to an existing
    DeidentificationMethodCodeSequence (0012,0064): the record that the face was removed."""
    ds.RecognizableVisualFeatures = "NO"
    seq = ds.get("DeidentificationMethodCodeSequence")
    if seq is None:
        return
    value, scheme, meaning = CLEAN_VISUAL_CODE
    if any(str(it.get("CodeValue", "")) == value and str(it.get("CodingSchemeDesignator", "")) == scheme
           for it in seq):
        return
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    seq.append(item)


def _write_pixels(source: Dataset, planes: np.ndarray) -> Dataset:
    """A copy of ``source`` whose PixelData holds ``planes`` (rows x columns, or frames x rows x columns)."""
    bits, stored, rep = _pixel_format(source)
    low, high = (-(2 ** (stored - 1)), 2 ** (stored - 1) - 1) if rep else (0, 2**stored - 1)
    if planes.size and (planes.min() < low or planes.max() > high):
        raise SeriesError(OUT_OF_RANGE)
    ds = copy.deepcopy(source)
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and (syntax.is_compressed or not syntax.is_little_endian):
        if not syntax.is_little_endian:  # OW/OF/... values other than the pixels hold big-endian bytes
            from deidpipe.pixels.codecs import to_little_endian

            to_little_endian(ds)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    data = np.ascontiguousarray(planes.astype(_dtype(bits, rep))).tobytes()
    ds.PixelData = data + b"\0" if len(data) % 2 else data
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    for keyword, value in (("SmallestImagePixelValue", planes.min()), ("LargestImagePixelValue", planes.max())):
        if keyword in ds:
            ds[keyword].value = int(value)
    _mark_clean(ds)
    return ds


def volume_to_series(volume_array: np.ndarray, series: SeriesVolume) -> list[Dataset]:
    """Copies of ``series.datasets`` (slice order) with PixelData replaced by ``volume_array[:, :, k]`` (for an
    enhanced object: one copy, each slice back in its own frame).

    Geometry and every other attribute stay as they were. Values are written as stored values in the slices'
    own format (BitsAllocated, PixelRepresentation; native little endian) and must be whole numbers within the
    BitsStored range, or :class:`SeriesError` is raised. A compressed (or big endian) input is written as
    Explicit VR Little Endian with file_meta.TransferSyntaxUID updated (pydicom decoded it on reading;
    LossyImageCompression, if any, keeps its history). SmallestImagePixelValue / LargestImagePixelValue
    (0028,0106/0107), when present, are updated. Each object is marked clean (``_mark_clean``)."""
    array = np.asarray(volume_array)
    if array.shape != series.array.shape:
        raise SeriesError(SHAPE_MISMATCH)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.rint(array)):
            raise SeriesError(NOT_INTEGRAL)
    if series.multiframe:
        frames = np.empty((array.shape[2], array.shape[1], array.shape[0]), dtype=array.dtype)
        for k, frame in enumerate(series.order):
            frames[frame] = array[:, :, k].T
        return [_write_pixels(series.datasets[0], frames)]
    return [_write_pixels(source, array[:, :, k].T) for k, source in enumerate(series.datasets)]


def _ds(value: float) -> str:
    """The most precise decimal string of at most 16 characters (the DS limit)."""
    for digits in range(16, 1, -1):
        text = f"{float(value) + 0.0:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{float(value) + 0.0:.1g}"  # e.g. '-1e-300': always fits


def volume_to_new_series(image: Any, template: Dataset) -> list[Dataset]:
    """A new single-frame series holding a nibabel image (integer voxels), one slice per index along its third
    axis, built on copies of ``template`` (an MR or CT slice whose other attributes are kept): used to write
    synthetic heads as DICOM. Sets ImageOrientationPatient, ImagePositionPatient, PixelSpacing, SliceThickness
    (= the slice spacing, mm), SliceLocation (position along the normal), Rows, Columns, the 16-bit pixel module,
    InstanceNumber and new SOP Instance UIDs. The image axes must be orthogonal (else SHEARED)."""
    affine = _LPS_RAS @ np.asarray(image.affine, dtype=float)  # RAS -> LPS (the same flip both ways)
    data = np.asarray(image.dataobj)
    if not np.issubdtype(data.dtype, np.integer) or data.ndim != 3:
        raise SeriesError(NOT_INTEGRAL)
    lin = affine[:3, :3]
    size = np.linalg.norm(lin, axis=0)
    axes = lin / size
    if abs(axes[:, 0] @ axes[:, 1]) > 1e-6 or np.abs(axes[:, :2].T @ axes[:, 2]).max() > 1e-6:
        raise SeriesError(SHEARED)
    signed = bool(data.min() < 0)
    normal = np.cross(axes[:, 0], axes[:, 1])
    # Seeded by the volume's own bytes: the same volume gives the same series, as every synth output does.
    seed = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    series_uid = generate_uid(entropy_srcs=[seed, "series"])
    out = []
    for k in range(data.shape[2]):
        ds = copy.deepcopy(template)
        position = affine[:3, :3] @ np.array([0.0, 0.0, k]) + affine[:3, 3]
        ds.ImageOrientationPatient = [_ds(v) for v in (*axes[:, 0], *axes[:, 1])]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.PixelSpacing = [_ds(size[1]), _ds(size[0])]
        ds.SliceThickness = _ds(size[2])
        ds.SliceLocation = _ds(position @ normal)
        ds.Rows, ds.Columns = int(data.shape[1]), int(data.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T.astype("<i2" if signed else "<u2")).tobytes()
        ds["PixelData"].VR = "OW"
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, str(k)])
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "NumberOfFrames"):
            if keyword in ds:
                del ds[keyword]
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.append(ds)
    return out


__all__ = ["SeriesError", "SeriesVolume", "series_to_volume", "volume_to_new_series", "volume_to_series"]
