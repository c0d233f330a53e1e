"""Redacting burned-in text in one object: find, black out, check again, write back.

    result = redact_dataset(ds, PixelOptions(), source=original)   # ds is changed in place

Text is found by :func:`deidpipe.pixels.find.detect_text`, the one detector ``scan`` uses too. Known device
regions and the text boxes are blacked in every frame; the blacked frames are then looked at again by the same
detector (a fit can leave the edge of a large or hand-written letter outside its box, and blacking can change how
the rest of a grey frame is displayed), and what it finds is blacked too, up to :data:`MAX_REDACTIONS` times: an
object in which text is still found after that is refused (fail closed). Overlay planes and icon images are
removed, BurnedInAnnotation is set to NO and code 113101 (Clean Pixel Data) is added to the de-identification
method codes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pydicom.dataset import Dataset

from deidpipe.errors import DeidError
from deidpipe.pixels.candidates import Box
from deidpipe.pixels.codecs import Decoded, encode, fill_value, has_pixels
from deidpipe.pixels.detect import OcrEngine
from deidpipe.pixels.find import (
    Detection,
    PixelOptions,
    PixelResult,
    default_engine,
    detect_text,
    displayed_frames,
    find_text,
)

__all__ = ["CLEAN_PIXEL_CODE", "MAX_REDACTIONS", "TextRemainsError", "mark_cleaned", "redact_dataset",
           "remove_overlays_and_icons"]

CLEAN_PIXEL_CODE = ("113101", "DCM", "Clean Pixel Data Option")
#: How many times one object's frames are blacked (the first time and after each re-check that found text).
MAX_REDACTIONS = 5


class TextRemainsError(DeidError):
    """The detector still finds text after :data:`MAX_REDACTIONS` rounds of blacking (the object is
    quarantined)."""


def remove_overlays_and_icons(ds: Dataset, result: PixelResult) -> None:
    """Delete overlay planes (60xx) that hold data, and the icon image sequence."""
    groups = {tag.group for tag in ds.keys() if 0x6000 <= tag.group <= 0x601E and tag.group % 2 == 0}
    for g in sorted(groups):
        for tag in [t for t in ds.keys() if t.group == g]:
            del ds[tag]
        result.overlays_removed += 1
    if "IconImageSequence" in ds:
        del ds.IconImageSequence
        result.icon_removed = True


def mark_cleaned(ds: Dataset) -> None:
    """BurnedInAnnotation NO; code 113101 appended to the de-identification method codes."""
    ds.BurnedInAnnotation = "NO"
    code, scheme, meaning = CLEAN_PIXEL_CODE
    seq = ds.get("DeidentificationMethodCodeSequence")
    items = list(seq) if seq is not None else []
    if not any(str(i.get("CodeValue", "")) == code for i in items):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, scheme, meaning
        items.append(item)
        ds.DeidentificationMethodCodeSequence = items
    methods = ds.get("DeidentificationMethod")
    if methods is not None:
        values = [str(methods)] if isinstance(methods, str) else [str(m) for m in methods]
        if meaning not in values:
            ds.DeidentificationMethod = [*values, meaning]


def _palette_black(ds: Dataset, dec: Decoded) -> int:
    """The palette index shown darkest (what boxes are filled with in a palette image)."""
    from pydicom.pixels import apply_color_lut

    top = int(dec.frames.max())
    colours = np.asarray(apply_color_lut(np.arange(top + 1, dtype=dec.frames.dtype), ds), dtype=np.float64)
    return int(np.argmin(colours @ np.array([0.299, 0.587, 0.114])))


def _black(frames: np.ndarray, boxes: list[Box], value: int | float) -> bool:
    """Black ``boxes`` in every frame (in place); whether any pixel changed."""
    changed = False
    for b in boxes:
        region = frames[:, b.y0:b.y1, b.x0:b.x1]
        if not (region == value).all():
            region[...] = value
            changed = True
    return changed


def redact_dataset(ds: Dataset, options: PixelOptions | None = None, *, source: Dataset | None = None,
                   engine: OcrEngine | None = None) -> PixelResult:
    """Find and black out burned-in text in every frame of ``ds`` (changed in place), until the detector finds
    none in the blacked frames.

    ``source`` is the original header (known regions and identifiers in ``phi`` mode); it defaults to ``ds``.
    Raises a typed :class:`~deidpipe.errors.DeidError` when the pixels cannot be decoded, OCR fails, text is still
    found after :data:`MAX_REDACTIONS` rounds (:class:`TextRemainsError`) or the result cannot be written: the
    object must then be quarantined.
    """
    options = options or PixelOptions()
    engine = engine or default_engine()
    found: Detection = detect_text(ds, options, source=source, engine=engine)
    result = found.result
    if not has_pixels(ds):  # no image: overlays and an icon may still carry text
        remove_overlays_and_icons(ds, result)
    if not result.selected:
        return result
    remove_overlays_and_icons(ds, result)
    dec: Decoded = found.decoded  # type: ignore[assignment]
    todo = found.regions + found.text
    boxes = list(todo)
    frames = dec.frames
    if todo:
        frames = dec.frames.copy()
        value = _palette_black(ds, dec) if dec.photometric == "PALETTE COLOR" else fill_value(dec)
        rounds = 0
        while todo:
            if rounds == MAX_REDACTIONS:
                raise TextRemainsError(f"burned-in text still found after {MAX_REDACTIONS} rounds of blacking")
            rounds += 1
            if not _black(frames, todo, value) and rounds > 1:  # found again where all is black: no progress
                raise TextRemainsError("burned-in text found where the pixels are already blacked")
            shown = displayed_frames(ds, dataclasses.replace(dec, frames=frames))
            todo = find_text(shown, options, engine, found.terms, result, found.regions)
            result.passes += 1
            boxes += todo
    result.text_boxes = len(boxes) - len(found.regions)
    result.boxes = boxes
    if not np.array_equal(frames, dec.frames):
        encode(ds, dec, frames)
        result.changed = True
    mark_cleaned(ds)
    return result
