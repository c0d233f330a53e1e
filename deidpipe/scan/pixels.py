"""Pixel rules: burned-in text found by the pixel stage's own detector, with its frame, box and a thumbnail.

The scan calls the detector the pixel stage calls (:func:`deidpipe.pixels.find.detect_text`, same selection and
thresholds, the pixel stage's default options) on the object it has just read, changes nothing, and reports what
it *found*: the text boxes (known device regions are left out: they say where text may be, not that there is
any). A solid fill and its edges are never text to that detector, so the boxes ``run`` blacked are not findings. With
``--known-identities`` every box is read by the OCR engine and matched against the steward's terms (one edit
allowed, as the pixel stage's ``phi`` mode does); a match is DP-P002. The thumbnail is the image as a viewer shows
it, before anything was blacked, with the boxes outlined in red; it goes only into the HTML report.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from deidpipe.scan.findings import Finding

THUMB_SIDE = 256
MAX_BOXES = 50


def thumbnail(frame8: np.ndarray, boxes: list[Any], side: int = THUMB_SIDE, reveal: bool = False) -> str:
    """A PNG ``data:`` URI of one 8-bit frame (grey or RGB) with ``boxes`` outlined in red; unless ``reveal``
    (``--show-values``) the boxes are filled, so that the text found is not in the report."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame8 if frame8.ndim == 2 else frame8[..., :3]).convert("RGB")
    draw = ImageDraw.Draw(img)
    for b in boxes:
        draw.rectangle([b.x0, b.y0, max(b.x0, b.x1 - 1), max(b.y0, b.y1 - 1)], outline=(230, 30, 30),
                       fill=None if reveal else (230, 30, 30))
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _read_boxes(frame8: np.ndarray, boxes: list[Any]) -> list[str]:
    """The text the OCR engine reads in each box (one string per box; '' when it reads nothing)."""
    from deidpipe.pixels.find import CROP_PAD, default_engine

    h, w = frame8.shape[:2]
    crops = []
    for b in boxes:
        pad = b.pad(CROP_PAD, (h, w))
        crops.append(np.ascontiguousarray(frame8[pad.y0:pad.y1, pad.x0:pad.x1]))
    if not crops:
        return []
    words = default_engine().read(crops)
    return [" ".join((wd.text or "") for wd in ws) for ws in words]


def pixel_findings(ds: Any, path: str, known: list[str], reveal: bool = False) -> list[Finding]:
    """DP-P001 per text box (DP-P002 where known identities are read in it); DP-P003 when the pixel data cannot
    be decoded (the pipeline quarantines such objects); [] for objects without pixel data."""
    from deidpipe.errors import DeidError
    from deidpipe.pixels.codecs import has_pixels
    from deidpipe.pixels.find import PixelOptions, detect_text

    if not has_pixels(ds):
        return []
    try:
        found = detect_text(ds, PixelOptions(selection="auto", mode="all-text"))
    except Exception as exc:  # noqa: BLE001 - DeidError or a decoder's own: the pixels were not checked
        why = "cannot be decoded" if isinstance(exc, DeidError) else f"could not be checked ({type(exc).__name__})"
        return [Finding(path, "DP-P003", "medium", "pixels", f"the pixel data {why}: burned-in text was not "
                                                             "looked for")]
    boxes = found.text[:MAX_BOXES]
    if not boxes or found.frames8 is None:
        return []
    first = found.frames8[0]
    thumb = thumbnail(first, boxes, reveal=reveal)
    out = [Finding(path, "DP-P001", "high", f"pixels:frame 0 box {b.x0},{b.y0},{b.width},{b.height}",
                   f"burned-in text in the pixel data ({found.result.frames} frame(s); the box is blacked in every "
                   "frame by the pixel stage)", thumb) for b in boxes]
    if known:
        from deidpipe.pixels.phi import any_terms

        terms = any_terms(known)
        try:
            texts = _read_boxes(first, boxes)
        except DeidError:
            texts = []
        for b, text in zip(boxes, texts, strict=False):
            words = [w for w in text.replace(",", " ").split() if w]
            grams = words + [" ".join(words[i:i + 2]) for i in range(len(words) - 1)]
            if any(terms.match(g) for g in grams):
                out.append(Finding(path, "DP-P002", "high", f"pixels:frame 0 box {b.x0},{b.y0},{b.width},"
                                                            f"{b.height}",
                                   "a known identity (name, ID or birth date) is written in the pixel data",
                                   thumb))
    return out
