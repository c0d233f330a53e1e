"""The ``deface`` stage as the pipeline sees it: one whole series in (already header-scrubbed), the same
objects out, with the face removed where there is one.

Order of work for a series the plan gave this stage (:mod:`deidpipe.deface.select` decided which):
1. a series too small to hold a face passes unchanged (every image under :data:`MIN_FIELD_MM` across, or fewer
   than :data:`~deidpipe.deface.series.MIN_SLICES` slices): the audit counts ``deface_field_too_small`` or
   ``deface_too_few_slices``;
2. the slices become one volume of stored values (:func:`~deidpipe.deface.series.series_to_volume`); a series
   that is no clean volume (a gap, uneven spacing, mixed orientations, several stacks, missing geometry) raises
   :class:`~deidpipe.deface.series.SeriesError` and the pipeline quarantines the whole series with its reason;
3. :func:`~deidpipe.deface.core.deface_volume` with QC (a refused fit or a face still seen after defacing
   raises :class:`~deidpipe.deface.errors.DefaceError`: quarantined, nothing written);
4. face not in view: the objects pass unchanged (``deface_no_face_in_view``); otherwise the defaced voxels go
   back into each slice with its own geometry, under the UIDs the header stage already pseudonymised, marked
   with code 113102 and Recognizable Visual Features NO (``defaced``).

Stored values are defaced, never rescaled values: a removed voxel gets the stored background (0 for MR, the
stored value of air for CT, see :func:`~deidpipe.deface.volume.background_value`).
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

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


def _unchanged(datasets: list[Dataset], action: str) -> list[tuple[Dataset, dict[str, int]]]:
    return [(ds, {action: 1}) for ds in datasets]


def deface_series_stage(datasets: list[Dataset], policy: Any = None) -> list[tuple[Dataset, dict[str, int]]]:
    """Deface one series (its objects in any order); returns (object, audit counts) in the same order.
    Raises a :class:`~deidpipe.deface.errors.DefaceError` (the series is quarantined) where it cannot be done
    safely. The plan made the selection; of ``policy`` only ``deface_ears`` is read here (ears removed too)."""
    import numpy as np

    from deidpipe.deface.core import deface_volume
    from deidpipe.deface.series import MIN_SLICES, series_to_volume, volume_to_series

    fields = [_field_mm(ds) for ds in datasets]
    if fields and all(f is not None and f < MIN_FIELD_MM for f in fields):
        return _unchanged(datasets, "deface_field_too_small")
    single_frame = all(int(ds.get("NumberOfFrames", 1) or 1) == 1 for ds in datasets)
    if single_frame and len(datasets) < MIN_SLICES:
        return _unchanged(datasets, "deface_too_few_slices")
    series = series_to_volume(datasets)
    result = deface_volume(series.image(), ears=getattr(policy, "deface_ears", True))
    if not result.face_in_view:
        return _unchanged(datasets, "deface_no_face_in_view")
    if not result.changed:
        return _unchanged(datasets, "deface_no_tissue_to_remove")
    written = volume_to_series(np.asarray(result.image.dataobj), series)
    if series.multiframe:
        return [(written[0], {"defaced": 1})]
    out: list[tuple[Dataset, dict[str, int]] | None] = [None] * len(datasets)
    for k, ds in enumerate(written):
        out[series.order[k]] = (ds, {"defaced": 1})
    if any(entry is None for entry in out):  # cannot happen: every input slice has its place in the volume
        from deidpipe.deface.series import SeriesError

        raise SeriesError("a slice was lost between the series and its volume")
    return [entry for entry in out if entry is not None]
