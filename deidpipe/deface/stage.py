"""The ``deface`` stage as the pipeline sees it: one whole series in (already header-scrubbed), the same
objects out, with the face removed where there is one.

Order of work for a series the plan gave this stage (:mod:`deidpipe.deface.select` decided which):
1. a series too small to hold a face passes unchanged (every image under :data:`MIN_FIELD_MM` across):
   ``deface_field_too_small``. A series that is no volume passes unchanged, whatever its hint, unless the face
   detector sees a face on one of its images (each at 1 mm a pixel, as the QC renders are; then refused, fail
   closed): fewer than :data:`~deidpipe.deface.series.MIN_SLICES` slices or frames in all
   (``deface_too_few_slices``), or a scout (``deface_scout``: no orientation shared by
   :data:`~deidpipe.deface.series.MIN_SLICES` slices, or Image Type LOCALIZER in several orientations). A face
   needs a stack of slices to be rendered; one or two images, or a few planes, are what a head series holds
   of its localizers and key images;
2. the slices become one volume of stored values (:func:`~deidpipe.deface.series.series_to_volume`); a series
   that is no clean volume (a gap, uneven spacing, mixed orientations, several stacks, missing geometry) raises
   :class:`~deidpipe.deface.series.SeriesError` and the pipeline quarantines the whole series with its reason;
3. :func:`~deidpipe.deface.core.deface_volume` with QC (a refused fit or a face still seen after defacing
   raises :class:`~deidpipe.deface.errors.DefaceError`: quarantined, nothing written); a volume with no tissue
   above its background (blank, constant) passes unchanged (``deface_no_tissue``) unless the face detector sees
   a face on its render;

Steps 2 and 3 quarantine for a series known to be a head (its hint, from the objects as read) or under policy
``all``. A series that says nothing of its region (``auto``, hint unknown) is taken on suspicion, so a failure
there does not prove a face: it passes unchanged when it is no clean volume (``deface_not_a_volume``), and when
the registration finds no head (``deface_no_head_found``) unless the face detector sees a face on a render of
the volume as it is, which refuses it (fail closed). Without this, every CT or MR series without Body Part
Examined whose slices are not one clean stack (several phases, repeated positions) would be quarantined.
4. face not in view: the objects pass unchanged (``deface_no_face_in_view``); otherwise the defaced voxels go
   back into each slice with its own geometry, under the UIDs the header stage already pseudonymised, marked
   with code 113102 and Recognizable Visual Features NO (``defaced``).

Stored values are defaced, never rescaled values: a removed voxel gets the stored background (0 for MR, the
stored value of air for CT, see :func:`~deidpipe.deface.volume.background_value`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from deidpipe.pipeline.contract import SCOPE_SERIES, SeriesFacts, Stage, StageOutput

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.keys import ProjectKey
    from deidpipe.policy import Policy

#: In-plane field of view (mm) under which an image cannot hold a face: an adult face is about 120 mm wide
#: and 180 mm high, and a child's about 90 mm; a field of view narrower than 60 mm on both axes shows a small
#: patch of skin at most.
MIN_FIELD_MM = 60.0


def _field_mm(ds: Dataset) -> float | None:
    """The larger in-plane extent of one image in mm (Rows/Columns x Pixel Spacing), or None without geometry."""
    try:
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        return max(int(ds.Rows) * row_mm, int(ds.Columns) * col_mm)
    except (AttributeError, TypeError, ValueError):
        return None


def _unchanged(datasets: list[Dataset], action: str) -> list[StageOutput]:
    return [StageOutput(ds, {action: 1}) for ds in datasets]


def _known_head(policy: Policy, sources: list[Dataset | None] | None) -> bool:
    """Whether a failure must quarantine: policy ``all``, or the series as read says it is a head."""
    from deidpipe.deface.select import HEAD, dataset_head_hint, series_hint

    if policy.deface == "all":
        return True
    hints = [dataset_head_hint(src) for src in sources or [] if src is not None]
    # no source at all (a caller without them): treat as a head, fail closed
    return not hints or series_hint(hints) == HEAD


def _face_seen(image: Any) -> bool:
    """Whether the QC face detector sees a face on a front or oblique render of ``image`` as it is."""
    from deidpipe.deface.face_finding import detect_faces, render_views

    return any(detect_faces(view) for view in render_views(image).values())


#: Refusal of a series that is no volume but shows a face on one of its images.
FACE_ON_IMAGE = "no volume to deface, but the face detector sees a face on one of its images: refused"
_LOCALIZER = "LOCALIZER"


def _frame_count(datasets: list[Dataset]) -> int:
    """Slices in the series: its single-frame objects and the frames of its multi-frame ones."""
    total = 0
    for ds in datasets:
        try:
            total += max(int(ds.get("NumberOfFrames", 1) or 1), 1)
        except (TypeError, ValueError):
            total += 1
    return total


def _is_scout(datasets: list[Dataset]) -> bool:
    """A localizer series: no stack of :data:`~deidpipe.deface.series.MIN_SLICES` parallel slices (by Image
    Orientation (Patient), rounded to 1e-3), or Image Type (0008,0008) LOCALIZER on every object across several
    orientations (a three-plane scout). A slice without orientation counts as a stack of its own kind: unknown."""
    from collections import Counter

    from deidpipe.deface.series import MIN_SLICES

    orientations: Counter[tuple[float, ...]] = Counter()
    for ds in datasets:
        try:
            orientations[tuple(round(float(v), 3) for v in ds.ImageOrientationPatient)] += 1
        except (AttributeError, TypeError, ValueError):
            return False  # multi-frame objects keep theirs per frame; no orientation: not known to be a scout
    if max(orientations.values(), default=0) < MIN_SLICES:
        return True
    localizer = all(_LOCALIZER in [str(v).upper() for v in (ds.get("ImageType") or [])] for ds in datasets)
    return localizer and len(orientations) > 1


def _slice_view(frame: Any, ds: Dataset) -> Any:
    """One image as the face detector sees the QC renders: grey, windowed on its 1st-99th percentile,
    histogram-equalised, resampled to 1 mm a pixel (Pixel Spacing; as it is without one)."""
    import cv2
    import numpy as np

    img = np.asarray(frame, dtype=np.float32)
    if img.ndim == 3:
        img = img.mean(axis=2)  # colour: its luminance is enough for a face
    lo, hi = np.percentile(img, [1, 99])
    grey = np.clip((img - lo) / max(float(hi - lo), 1e-6) * 255.0, 0, 255).astype(np.uint8)
    try:
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        size = (max(int(round(grey.shape[1] * col_mm)), 1), max(int(round(grey.shape[0] * row_mm)), 1))
        if 0 < size[0] <= 4096 and 0 < size[1] <= 4096:
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if col_mm < 1 else cv2.INTER_LINEAR)
    except (AttributeError, TypeError, ValueError):
        pass
    return cv2.equalizeHist(grey)


def _short_native(ds: Dataset) -> Any:
    """The frames of native grey pixel data shorter than its header declares (written only under the policy's
    ``allow_incomplete_pixels``), the missing bytes as zeros: what a viewer shows of it. None for any other."""
    import numpy as np

    from deidpipe.dicomio.completeness import PIXELS_SHORT, declared_native_size, pixel_data_problem

    try:
        if pixel_data_problem(ds) != PIXELS_SHORT or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            return None
        bits, declared = int(ds.BitsAllocated), declared_native_size(ds)
        if bits not in (8, 16) or declared is None or declared > 1 << 28 or ds.file_meta.TransferSyntaxUID not in (
                "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
            return None
        data = bytes(ds.PixelData).ljust(declared, b"\0")[:declared]
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
        return np.frombuffer(data, f"<u{bits // 8}").reshape(frames, int(ds.Rows), int(ds.Columns))
    except (AttributeError, TypeError, ValueError):
        return None


def _face_on_images(datasets: list[Dataset]) -> bool:
    """Whether the QC face detector sees a face on any image (any frame) of the series, as stored. An image that
    cannot be decoded within the pixel stage's bounds is treated as showing one (fail closed), but short native
    pixel data, which is looked at as a viewer shows it."""
    from deidpipe.deface.face_finding import detect_faces
    from deidpipe.deface.series import SeriesError, stored_pixels

    for ds in datasets:
        try:
            pixels = stored_pixels(ds)
            frames = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else [pixels]
        except SeriesError:
            frames = _short_native(ds)
            if frames is None:
                return True
        if any(detect_faces(_slice_view(frame, ds)) for frame in frames):
            return True
    return False


def _no_volume(datasets: list[Dataset], action: str) -> list[StageOutput]:
    """A series that is no volume: unchanged with ``action``, unless a face is seen on one of its images."""
    from deidpipe.deface.errors import DefaceError

    if _face_on_images(datasets):
        raise DefaceError(FACE_ON_IMAGE)
    return _unchanged(datasets, action)


def deface_series_stage(datasets: list[Dataset], policy: Policy, key: ProjectKey | None = None,
                        sources: list[Dataset | None] | None = None) -> list[StageOutput]:
    """Deface one series (its objects in any order); returns (object, audit counts) in the same order.
    ``sources``: the same objects as read (their Body Part Examined and descriptions, which the header stage may
    have removed, say whether the series is known to be a head). Raises a
    :class:`~deidpipe.deface.errors.DefaceError` (the series is quarantined) where it cannot be done safely. The
    plan made the selection; of ``policy``, ``deface`` and ``deface_ears`` are read here."""
    import numpy as np

    from deidpipe.deface.core import deface_volume
    from deidpipe.deface.errors import NoTissueError, RegistrationError
    from deidpipe.deface.series import MIN_SLICES, SeriesError, series_to_volume, volume_to_series

    fields = [_field_mm(ds) for ds in datasets]
    if fields and all(f is not None and f < MIN_FIELD_MM for f in fields):
        return _unchanged(datasets, "deface_field_too_small")
    if _frame_count(datasets) < MIN_SLICES:
        return _no_volume(datasets, "deface_too_few_slices")
    if _is_scout(datasets):
        return _no_volume(datasets, "deface_scout")
    strict = _known_head(policy, sources)
    try:
        series = series_to_volume(datasets)
    except SeriesError:
        if strict:
            raise
        return _unchanged(datasets, "deface_not_a_volume")
    try:
        result = deface_volume(series.image(), ears=policy.deface_ears)
    except NoTissueError:
        if _face_seen(series.image()):
            raise
        return _unchanged(datasets, "deface_no_tissue")
    except RegistrationError:
        if strict or _face_seen(series.image()):
            raise
        return _unchanged(datasets, "deface_no_head_found")
    if not result.face_in_view:
        return _unchanged(datasets, "deface_no_face_in_view")
    if not result.changed:
        return _unchanged(datasets, "deface_no_tissue_to_remove")
    written = volume_to_series(np.asarray(result.image.dataobj), series)
    if series.multiframe:
        return [StageOutput(written[0], {"defaced": 1})]
    out: list[StageOutput | None] = [None] * len(datasets)
    for k, ds in enumerate(written):
        out[series.order[k]] = StageOutput(ds, {"defaced": 1})
    if any(entry is None for entry in out):  # cannot happen: every input slice has its place in the volume
        raise SeriesError("a slice was lost between the series and its volume")
    return [entry for entry in out if entry is not None]


def deface_needed(facts: SeriesFacts, policy: Policy) -> bool:
    """MR and CT image series the policy's ``deface`` selection takes (:mod:`deidpipe.deface.select`)."""
    from deidpipe.deface.select import series_needs_deface

    return series_needs_deface(policy.deface, facts.modalities, facts.head_hints, facts.rows, facts.columns)


DEFACE = Stage("deface", SCOPE_SERIES, needs_source=True, needed=deface_needed, run=deface_series_stage)
