"""Finding burned-in text in one object: the one detector that ``run`` (the ``pixel_text`` stage) and ``scan``
both call, with one set of thresholds.

    found = detect_text(ds, PixelOptions(), source=original)   # ds is not changed
    found.text      # text boxes (frame coordinates; each applies to every frame)
    found.regions   # known device regions (blacked without OCR; not evidence of text)

Known device regions come from the original header; the line finder (:mod:`deidpipe.pixels.lines`) or the cheap
screen (:mod:`deidpipe.pixels.candidates`) proposes text and the OCR engine confirms (and, in ``phi`` mode,
reads) what is in doubt. Every detector sees the frame with its solid fills taken out
(:func:`deidpipe.pixels.fills.without_fills`): a blacked box and its edges are never text. In a multi-frame
object a later frame sends to OCR only candidates that are not already covered by text whose pixels are verified
unchanged, and crops seen before (the same banner on every image of a series) are answered from a per-process
cache. A cine (8 frames or more) is searched on its temporal summary and in windows where its frames change
(:mod:`deidpipe.pixels.cine`), not frame by frame.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from pydicom.dataset import Dataset

from deidpipe.dicomio.completeness import number_of_frames
from deidpipe.pixels.candidates import (
    MIN_SIDE,
    Box,
    StrokeMaps,
    fit_strokes,
    merge_boxes,
    text_candidates,
    text_screen,
    to_uint8,
)
from deidpipe.pixels.cine import text_in_cine
from deidpipe.pixels.codecs import Decoded, PixelDecodeError, decode, has_pixels, native_view
from deidpipe.pixels.detect import EasyOcrEngine, OcrEngine
from deidpipe.pixels.fills import darkest, without_fills
from deidpipe.pixels.lines import text_lines
from deidpipe.pixels.phi import PhiTerms, phi_words, split_line
from deidpipe.pixels.regions import known_regions
from deidpipe.policy import PixelDetector as Detector
from deidpipe.policy import PixelRedaction as Mode
from deidpipe.policy import PixelSelection as Selection
from deidpipe.policy import Policy

#: Modalities whose images often carry burned-in text.
TEXT_MODALITIES = frozenset({"US", "IVUS", "SC", "OT", "XA", "RF", "ES", "XC", "GM", "SM", "DOC", "ECG", "OP"})
ANNOTATED_MODALITIES = frozenset({"DX", "CR", "MG", "PX", "IO"})
CROP_PAD = 4
_CACHE_SIZE = 2048


@dataclass(frozen=True)
class PixelOptions:
    """How the pixel stage behaves.

    Attributes:
        selection: ``auto`` (text-likely images plus any where the screen fires), ``all`` or ``off``.
        mode: ``all-text`` (every detected box) or ``phi`` (boxes that match the object's identifiers or
            presidio's findings; orientation markers, units and scale labels are kept).
        margin: added around every text box, as a fraction of the text's height (boxes are already fitted to
            the letters' pixels, anti-aliased edges included).
        use_presidio: in ``phi`` mode, also ask presidio-analyzer about each recognised line.
        use_deid_regions: black the regions of deid's CTP-derived filter list.
        detector: in ``all-text`` mode, how text is found. ``lines`` (default): lines of letters found by their
            strokes (:mod:`deidpipe.pixels.lines`) are taken as text without a network, and only short chains
            (two letters) go to the OCR engine: an order of magnitude faster on a CPU. ``ocr``: every candidate
            region of the cheap screen goes to the OCR engine (CRAFT). ``phi`` mode always reads with OCR.
        temporal: objects of :data:`deidpipe.pixels.cine.CINE_MIN_FRAMES` frames or more (cines) are searched on a
            temporal summary and in windows where frames change (:mod:`deidpipe.pixels.cine`); False: every frame
            on its own (the reference the benchmark compares with).
    """

    # The defaults are the policy's (a Policy's field defaults, stated there once).
    selection: Selection = Policy.pixels
    mode: Mode = Policy.pixel_redaction
    detector: Detector = Policy.pixel_detector
    margin: float = 0.06
    use_presidio: bool = True
    use_deid_regions: bool = True
    temporal: bool = True


@dataclass
class PixelResult:
    """What the pixel stage did to one object (counts only, never text)."""

    selected: bool
    reason: str
    frames: int = 0
    ocr_crops: int = 0
    cached_crops: int = 0
    verified_crops: int = 0
    region_boxes: int = 0
    line_boxes: int = 0
    text_boxes: int = 0
    changed: bool = False
    overlays_removed: int = 0
    icon_removed: bool = False
    boxes: list[Box] = field(default_factory=list)
    #: Detection passes over the frames: 1 when the first pass found nothing, else one more per re-check.
    passes: int = 0
    #: Passes that took the temporal path (a cine), the windows and whole frames they checked besides the summary.
    cine_passes: int = 0
    cine_windows: int = 0
    cine_whole: int = 0

    def actions(self) -> dict[str, int]:
        return {
            "pixel:selected": int(self.selected), "pixel:frames": self.frames, "pixel:ocr_crops": self.ocr_crops,
            "pixel:boxes": self.text_boxes + self.region_boxes, "pixel:changed": int(self.changed),
            "pixel:overlays": self.overlays_removed, "pixel:icon": int(self.icon_removed),
            "pixel:rechecks": max(self.passes - 1, 0),
        }


def _str_values(ds: Dataset, keyword: str) -> list[str]:
    v = ds.get(keyword)
    if v is None:
        return []
    return [str(x).upper() for x in (v if isinstance(v, list | tuple) or getattr(v, "VM", 1) > 1 else [v])]


@lru_cache(maxsize=256)
def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name.lower()


def text_likely(ds: Dataset) -> str | None:
    """Why ``ds``'s header makes burned-in text likely, or None."""
    modality = str(ds.get("Modality", "") or "").upper()
    burned = str(ds.get("BurnedInAnnotation", "") or "").upper()
    if burned == "YES":
        return "BurnedInAnnotation YES"
    if modality in TEXT_MODALITIES:
        return "modality"
    sop_name = _sop_class_name(str(ds.get("SOPClassUID", "") or ""))
    image_type = _str_values(ds, "ImageType")
    if "secondary capture" in sop_name or any(t in ("SECONDARY", "SCREEN SAVE", "SCREENSHOT") for t in image_type):
        return "secondary capture"
    frames = number_of_frames(ds)  # None (not a number): counted as several, the safer reading
    if "multi-frame" in sop_name or (frames is None or frames > 1) and modality not in ("CT", "MR", "PT"):
        return "multi-frame"
    if modality in ANNOTATED_MODALITIES and burned != "NO":
        return "annotated projection image"
    return None


_CROP_CACHE: OrderedDict[bytes, list] = OrderedDict()


def _crop_key(mode: str, crop: np.ndarray) -> bytes:
    h = hashlib.blake2b(crop.tobytes(), digest_size=16)
    h.update(repr((mode, crop.shape)).encode())
    return h.digest()


def _cache_put(key: bytes, value: list) -> None:
    _CROP_CACHE[key] = value
    _CROP_CACHE.move_to_end(key)
    while len(_CROP_CACHE) > _CACHE_SIZE:
        _CROP_CACHE.popitem(last=False)


_ENGINE: OcrEngine | None = None


def default_engine() -> OcrEngine:
    """The process-wide EasyOCR engine."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = EasyOcrEngine()
    return _ENGINE


@dataclass
class _Known:
    box: Box
    frame: int


class _Finder:
    """Finds text boxes frame by frame for one object."""

    def __init__(self, frames8: np.ndarray, options: PixelOptions, engine: OcrEngine, terms: PhiTerms | None,
                 result: PixelResult, letters: int | None = None) -> None:
        self.frames8, self.options, self.engine, self.terms, self.result = frames8, options, engine, terms, result
        #: The tallest letters the line finder chains (None: each image's own limit; see ``text_lines``).
        self.letters = letters
        self.known: list[_Known] = []

    def _verified(self, cand: Box, k: int) -> bool:
        hits = [kn for kn in self.known if kn.box.intersect(cand) > 0]
        covered = sum(kn.box.intersect(cand) for kn in hits)
        if not hits or covered < 0.8 * cand.area:
            return False
        f = self.frames8
        return all(np.array_equal(f[k, kn.box.y0:kn.box.y1, kn.box.x0:kn.box.x1],
                                  f[kn.frame, kn.box.y0:kn.box.y1, kn.box.x0:kn.box.x1]) for kn in hits)

    def frame(self, k: int, skip: list[Box]) -> list[Box]:
        img = self.frames8[k]
        shape = img.shape[:2]
        seen = without_fills(img)  # once per frame: the stroke maps and the candidates both look at it
        maps = StrokeMaps.of(img, seen)
        crops, todo, found = [], [], []
        lines: list[Box] = []
        detector = self.options.detector if self.options.mode == "all-text" else "ocr"
        if detector == "ocr":
            cands = _candidates(img, seen)
        else:  # lines of letters are text; OCR judges only the short chains
            findings = text_lines(maps, self.letters)
            lines = findings.text_boxes()
            self.result.line_boxes += len(lines)
            padded = [_half_letter(b, shape) for b in lines]
            unsure = [b for b in findings.unsure if sum(p.intersect(b) for p in padded) < 0.8 * b.area]
            cands = merge_boxes([_half_letter(b, shape) for b in unsure])
        for cand in cands:
            if any(s.intersect(cand) >= 0.95 * cand.area for s in skip):
                continue
            if k and self._verified(cand, k):
                self.result.verified_crops += 1
                continue
            pad = cand.pad(CROP_PAD, shape)
            crop = np.ascontiguousarray(img[pad.y0:pad.y1, pad.x0:pad.x1])
            key = _crop_key(self.options.mode, crop)
            if key in _CROP_CACHE:
                self.result.cached_crops += 1
                found += _place(_CROP_CACHE[key], pad, cand)
                continue
            crops.append(crop)
            todo.append((pad, key, cand))
        if crops:
            self.result.ocr_crops += len(crops)
            per_crop = self._boxes(crops)
            for (pad, key, cand), boxes in zip(todo, per_crop, strict=True):
                _cache_put(key, boxes)
                found += _place(boxes, pad, cand)
        fitted = [_kept_letters(_fit(b, _along(b, shape), maps, shape), b) for b in lines]
        fitted += [t for t in (_fit(b, c, maps, shape) for b, c in found) if t is not None]
        # the detector sees fills with their borders mirrored in: a box wholly inside a fill is no text
        fill = darkest(img)
        fitted = [b for b in fitted if not fill[b.y0:b.y1, b.x0:b.x1].all()]
        for b in fitted:
            self.known.append(_Known(b, k))
        return fitted

    def _boxes(self, crops: list[np.ndarray]) -> list[list[Box]]:
        if self.options.mode == "all-text":
            return self.engine.detect(crops)
        out = []
        for words in self.engine.read(crops):
            boxes = []
            for w in words:
                text = " ".join((w.text or "").split())
                if not text:
                    continue
                flags = phi_words(text, self.terms or PhiTerms(frozenset()), use_model=self.options.use_presidio)
                for (x0, x1, _), flag in zip(split_line(w.box.x0, w.box.x1, text), flags, strict=True):
                    if flag:
                        boxes.append(Box(x0, w.box.y0, x1, w.box.y1))
            out.append(boxes)
        return out


def displayed_frames(ds: Dataset, dec: Decoded) -> np.ndarray:
    """The frames as 8-bit images the way a viewer shows them: palette indices through their colour LUT (an
    index image can hide high-contrast text), grey stretched to its range, RGB as it is."""
    if dec.photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = np.asarray(apply_color_lut(dec.frames, ds))
        except Exception as exc:  # noqa: BLE001
            raise PixelDecodeError(f"palette colour lookup failed ({type(exc).__name__})") from None
        return (rgb >> 8).astype(np.uint8) if rgb.dtype != np.uint8 else rgb
    if dec.frames.dtype != np.uint8:
        return np.stack([to_uint8(f) for f in dec.frames])
    return dec.frames


def _uniform(frame: np.ndarray) -> bool:
    return bool(frame.size == 0 or (frame == frame.flat[0]).all())


def _candidates(img: np.ndarray, seen: np.ndarray | None = None) -> list[Box]:
    """Where to look for text: the screen's candidates, or a whole small image unless it is uniform (too
    small for the screen's kernels, it is handed to the OCR engine, which upscales it)."""
    h, w = img.shape[:2]
    if min(h, w) >= MIN_SIDE:
        return text_candidates(img, seen=seen)
    return [] if _uniform(img) else [Box(0, 0, w, h)]


def _place(boxes: list[Box], pad: Box, cand: Box) -> list[tuple[Box, Box]]:
    """Crop boxes in frame coordinates, each with the candidate it was found in (the fit's limit)."""
    return [(Box(b.x0 + pad.x0, b.y0 + pad.y0, b.x1 + pad.x0, b.y1 + pad.y0), cand) for b in boxes]


def _fit(b: Box, limit: Box, maps: StrokeMaps, shape: tuple[int, int]) -> Box | None:
    """A detected box fitted to its letters' pixels, within ``limit`` (plus two pixels)."""
    return fit_strokes(b, maps, limit.pad(2, shape), reach=max(2, min(b.height, b.width) // 3))


def _half_letter(b: Box, shape: tuple[int, int]) -> Box:
    """``b`` with half its letter height around it (at least two pixels)."""
    return b.pad(max(2, min(b.width, b.height) // 2), shape)


def _kept_letters(fitted: Box | None, line: Box) -> Box:
    """A line's fitted box never loses the letters the line was found by: compression can leave a row of a
    letter, or the first letters of a word, fainter than the fit's threshold. Across the line the fit grows by
    up to one row where the letters reach further (more would take the rows of a neighbouring line or of the
    gaps' ghost line too); along it, where the fit lost more than 3% of the line, the line's extent returns."""
    if fitted is None:
        return line
    turned = line.height > line.width
    if turned:
        line, fitted = line.transposed(), fitted.transposed()
    x0, x1 = (min(fitted.x0, line.x0), max(fitted.x1, line.x1)) if fitted.width < 0.97 * line.width else (
        fitted.x0, fitted.x1)
    out = Box(x0, max(min(fitted.y0, line.y0), fitted.y0 - 1), x1, min(max(fitted.y1, line.y1), fitted.y1 + 1))
    return out.transposed() if turned else out


def _along(b: Box, shape: tuple[int, int]) -> Box:
    """How far the fit may take a line found by its letters: half a letter across the line, three letters
    along it (its ends may be fainter, on a brighter or darker ground, than the letters that made the chain)."""
    h, w = shape
    size = min(b.width, b.height)
    across, along = max(2, size // 2), 3 * size
    if b.height > b.width:  # a rotated line
        return Box(max(b.x0 - across, 0), max(b.y0 - along, 0), min(b.x1 + across, w), min(b.y1 + along, h))
    return Box(max(b.x0 - along, 0), max(b.y0 - across, 0), min(b.x1 + along, w), min(b.y1 + across, h))


def _grow(b: Box, margin: float, shape: tuple[int, int]) -> Box:
    """``b`` with a margin proportional to its text height (the short side)."""
    return b.pad(int(margin * min(b.height, b.width)), shape)



def find_text(frames8: np.ndarray, options: PixelOptions, engine: OcrEngine, terms: PhiTerms | None,
              result: PixelResult, skip: list[Box]) -> list[Box]:
    """Text boxes in 8-bit displayed frames (``(frames, rows, cols[, 3])``), each grown by the margin and merged
    where they overlap; candidates inside ``skip`` (known regions) are not sent to OCR. Counts go to ``result``.
    A cine (``options.temporal``, enough frames) is searched on its temporal summary and in windows where its
    frames change (:mod:`deidpipe.pixels.cine`), unless that module finds it must be searched frame by frame."""

    def look(images: np.ndarray, skip: list[Box], letters: int | None = None) -> list[Box]:
        finder = _Finder(images, options, engine, terms, result, letters)
        return [b for k in range(images.shape[0]) for b in finder.frame(k, skip)]

    cine = text_in_cine(frames8, skip, look) if options.temporal else None
    if cine is None:
        text = look(frames8, skip)
    else:
        text, plan = cine
        result.cine_passes += 1
        result.cine_windows += len(plan.windows)
        result.cine_whole += len(plan.whole)
    shape = frames8.shape[1:3]
    return merge_boxes([_grow(b, options.margin, shape) for b in text], gap=0)


@dataclass
class Detection:
    """What :func:`detect_text` found in one object.

    Attributes:
        result: the counts (``result.selected`` False: the object was not looked at, and the rest is empty).
        decoded: the decoded pixels (None when not selected).
        frames8: the frames as a viewer shows them (:func:`displayed_frames`).
        regions: known device regions for the device that made the object (blacked without OCR).
        text: text boxes found in the pixels (the evidence of burned-in text).
        terms: the object's identifiers (``phi`` mode only).
    """

    result: PixelResult
    decoded: Decoded | None = None
    frames8: np.ndarray | None = None
    regions: list[Box] = field(default_factory=list)
    text: list[Box] = field(default_factory=list)
    terms: PhiTerms | None = None


def detect_text(ds: Dataset, options: PixelOptions | None = None, *, source: Dataset | None = None,
                engine: OcrEngine | None = None) -> Detection:
    """Whether ``ds``'s pixels are looked at, and the text boxes found in them; ``ds`` is not changed.

    ``source`` is the header as read (selection by BurnedInAnnotation, modality and SOP class; known regions;
    identifiers in ``phi`` mode); it defaults to ``ds``. Selection: ``selection='all'`` takes every image; ``auto``
    takes those :func:`text_likely` names and any other where the cheap screen fires. Raises a typed
    :class:`~deidpipe.errors.DeidError` when the pixels cannot be decoded or OCR fails.
    """
    options = options or PixelOptions()
    source = source if source is not None else ds
    if options.selection == "off":
        return Detection(PixelResult(False, "pixels: off"))
    if not has_pixels(ds):
        return Detection(PixelResult(False, "no pixel data"))
    rows, cols = int(ds.Rows), int(ds.Columns)
    why = "pixels: all" if options.selection == "all" else text_likely(source)
    dec: Decoded | None = None
    if why is None:
        view = native_view(ds)
        if view is None:
            dec = decode(ds)
            view = dec.frames[:: max(1, dec.n_frames // 4)]
        if min(rows, cols) >= MIN_SIDE and not any(text_screen(f) for f in view):
            return Detection(PixelResult(False, "no text likely, screen negative"))
        if min(rows, cols) < MIN_SIDE and all(_uniform(f) for f in view):
            return Detection(PixelResult(False, "no text likely, uniform"))
        why = "screen"
    result = PixelResult(True, why)
    dec = dec or decode(ds)
    result.frames = dec.n_frames
    regions = known_regions(source, rows, cols, use_deid=options.use_deid_regions)
    result.region_boxes = len(regions)
    frames8 = displayed_frames(ds, dec)
    terms = PhiTerms.from_dataset(source) if options.mode == "phi" else None
    text = find_text(frames8, options, engine or default_engine(), terms, result, regions)
    result.passes = 1
    result.text_boxes = len(text)
    result.boxes = regions + text
    return Detection(result, dec, frames8, regions, text, terms)
