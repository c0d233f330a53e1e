"""Cheap, classical text screening: where in a frame could text be?

Burned-in text is made of thin strokes of (nearly) uniform intensity that stand out from what is around them,
light on dark or dark on light. A white and a black top-hat with a kernel a little wider than a stroke pick
those strokes out; closing along rows (and, for rotated text, along columns) joins letters into words and
lines; connected components of plausible size and fill become candidate boxes. This costs milliseconds and
serves two purposes: the screen that decides whether an image needs OCR at all, and the list of regions the
OCR engine looks at (instead of the whole frame, which costs seconds on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from deidpipe.pixels.fills import without_fills

#: Top-hat response (0-255 scale) above which a pixel may belong to a stroke.
MIN_CONTRAST = 28
#: Images smaller than this on a side are too small for the screen's kernels (the finder hands them to OCR whole).
MIN_SIDE = 24


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates, ``x1``/``y1`` exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    def pad(self, margin: int, shape: tuple[int, int]) -> Box:
        h, w = shape
        return Box(max(self.x0 - margin, 0), max(self.y0 - margin, 0), min(self.x1 + margin, w),
                   min(self.y1 + margin, h))

    def intersect(self, other: Box) -> int:
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return max(w, 0) * max(h, 0)

    def union(self, other: Box) -> Box:
        return Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1))

    def transposed(self) -> Box:
        """The box with x and y swapped: a rotated (vertical) line handled as a horizontal one."""
        return Box(self.y0, self.x0, self.y1, self.x1)


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """A display-range 8-bit version of one frame (grey: min..max stretch; colour: kept as 8-bit RGB)."""
    if frame.dtype == np.uint8:
        return frame
    f = frame.astype(np.float32)
    lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        return np.zeros(frame.shape, np.uint8)
    return ((f - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def stroke_maps(img8: np.ndarray) -> list[np.ndarray]:
    """Grey images in which strokes are bright: luminance, and for colour images the chroma (colour text)."""
    if img8.ndim == 3:
        grey = cv2.cvtColor(img8, cv2.COLOR_RGB2GRAY)
        chroma = (img8.max(axis=2).astype(np.int16) - img8.min(axis=2)).astype(np.uint8)
        return [grey, chroma]
    return [img8]


def text_candidates(img8: np.ndarray, *, max_boxes: int = 64, seen: np.ndarray | None = None) -> list[Box]:
    """Candidate text boxes in one 8-bit frame (grey or RGB), largest first. ``seen``: the frame as the
    detector sees it (:func:`without_fills` of it), when the caller has it already."""
    h, w = img8.shape[:2]
    boxes: list[Box] = []
    for grey in stroke_maps(without_fills(img8) if seen is None else seen):
        for kernel in (7, 15):
            if kernel * 2 > min(h, w):
                continue
            k = cv2.getStructuringElement(cv2.MORPH_RECT, (kernel, kernel))
            light = (cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, k) >= MIN_CONTRAST).astype(np.uint8)
            dark = (cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, k) >= MIN_CONTRAST).astype(np.uint8)
            for mask in (light, dark):  # per polarity: the gaps between light letters are dark strokes
                mask = without_lines(mask)
                if mask.any():
                    boxes += _group(mask, kernel, (h, w))
    merged = merge_boxes(boxes)
    merged.sort(key=lambda b: -b.area)
    return merged[:max_boxes]


@dataclass(frozen=True)
class StrokeMaps:
    """Per pixel of one frame: how much it stands out as a light stroke (``light``: white top-hats of the
    luminance and the chroma) and as a dark stroke (``dark``: black top-hat of the luminance), and the
    luminance itself. Each polarity alone is clean: the gaps between light letters respond only as dark
    strokes, so a box is fitted with the polarity of its text."""

    light: np.ndarray
    dark: np.ndarray
    grey: np.ndarray
    #: Each source apart, as (response, image, light polarity): luminance light and dark, and for colour images
    #: the chroma's light strokes. Apart, because white text on a coloured ground is dark in the chroma: its
    #: gaps respond there, and together with the letters in the luminance they fill the whole line.
    sources: tuple[tuple[np.ndarray, np.ndarray, bool], ...] = ()

    @classmethod
    def of(cls, img8: np.ndarray, seen: np.ndarray | None = None) -> StrokeMaps:
        """The maps of one 8-bit frame, with its fills' edges taken out (see :func:`without_fills`; ``seen``:
        that frame, when the caller has it already: the fill step is the costly part)."""
        img8 = without_fills(img8) if seen is None else seen
        maps = stroke_maps(img8)
        kernels = [k for k in (7, 15) if k * 2 <= min(img8.shape[:2])] or [3]
        light: list[list[np.ndarray]] = [[] for _ in maps]
        dark = []
        for k in kernels:
            se = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
            for i, g in enumerate(maps):
                light[i].append(cv2.morphologyEx(g, cv2.MORPH_TOPHAT, se))
            dark.append(cv2.morphologyEx(maps[0], cv2.MORPH_BLACKHAT, se))
        per_map = [np.maximum.reduce(x) for x in light]
        dark_map = np.maximum.reduce(dark)
        sources = [(per_map[0], maps[0], True), (dark_map, maps[0], False)]
        sources += [(per_map[1], maps[1], True)] if len(maps) > 1 else []
        return cls(np.maximum.reduce(per_map), dark_map, maps[0], tuple(sources))


def tighten(box: Box, maps: StrokeMaps) -> Box | None:
    """Shrink ``box`` to the text strokes inside it (see :func:`fit_strokes`, with no reach)."""
    return fit_strokes(box, maps, box)


def fit_strokes(box: Box, maps: StrokeMaps, limit: Box, reach: int = 0) -> Box | None:
    """The bounding box of the letters' pixels in ``box`` grown by ``reach`` pixels along the text (clipped
    to ``limit``), or None when nothing there responds like a stroke.

    The polarity comes from the box itself: text is the minority of its pixels, so light text sits in a box
    whose median is below the middle of its range. Stroke pixels are found with hysteresis: pixels at least a
    third as strong as the strongest stroke (and above :data:`MIN_CONTRAST`), plus pixels touching them at two
    thirds of that: the anti-aliased or compressed edges of the same letters (fainter halos are not text). The box
    is tight on every side the letters have; it grows (``reach``) only where a detector may have cut a word
    short.
    """
    x0, x1 = max(box.x0 - reach, limit.x0), min(box.x1 + reach, limit.x1)
    y0, y1 = max(box.y0, limit.y0), min(box.y1, limit.y1)
    if box.height > 2 * box.width:  # vertical (rotated) text: the reach runs along the column
        x0, x1 = max(box.x0, limit.x0), min(box.x1, limit.x1)
        y0, y1 = max(box.y0 - reach, limit.y0), min(box.y1 + reach, limit.y1)
    if x1 <= x0 or y1 <= y0:
        return None
    grey = maps.grey[y0:y1, x0:x1]
    lo, hi, med = int(grey.min()), int(grey.max()), float(np.median(grey))
    full = maps.light if med <= (lo + hi) / 2 or int(maps.dark[y0:y1, x0:x1].max()) < MIN_CONTRAST else maps.dark
    if int(full[y0:y1, x0:x1].max()) < MIN_CONTRAST:
        full = np.maximum(maps.light, maps.dark)  # colour text: its luminance may not stand out at all
    peak = int(full[y0:y1, x0:x1].max())
    if peak < MIN_CONTRAST:
        return None
    fitted = _stroke_box(full, Box(x0, y0, x1, y1), max(MIN_CONTRAST, peak // 3))
    return _extend(fitted, full, max(MIN_CONTRAST * 2 // 3, peak // 5), box.height > 2 * box.width) if reach else fitted


def _stroke_box(full: np.ndarray, box: Box, threshold: int) -> Box:
    sub = full[box.y0:box.y1, box.x0:box.x1]
    strong = (sub >= threshold).astype(np.uint8)
    weak = sub >= max(MIN_CONTRAST * 2 // 3, (threshold * 2) // 3)
    near = cv2.dilate(strong, np.ones((3, 3), np.uint8)).astype(bool)
    ys, xs = np.nonzero(strong.astype(bool) | (weak & near))
    return Box(box.x0 + int(xs.min()), box.y0 + int(ys.min()), box.x0 + int(xs.max()) + 1, box.y0 + int(ys.max()) + 1)


def _extend(box: Box, full: np.ndarray, threshold: int, vertical: bool) -> Box:
    """Grow a fitted word along its line while more strokes follow within half a letter height (a detector
    may have cut the word short: low-contrast ends of text over anatomy), at most three letter heights each
    way; a column continues the word when at least three of its pixels respond; then fit again."""
    arr = full.T if vertical else full
    b = Box(box.y0, box.x0, box.y1, box.x1) if vertical else box
    size = b.height
    gap, limit = max(2, size // 2), 3 * size
    cols = (arr[b.y0:b.y1, max(b.x0 - limit, 0):b.x1 + limit] >= threshold).sum(axis=0) >= 3
    offset = max(b.x0 - limit, 0)
    lo, hi = b.x0 - offset, b.x1 - 1 - offset
    while True:
        left = np.nonzero(cols[max(lo - gap - 1, 0):lo])[0]
        if not left.size:
            break
        lo = max(lo - gap - 1, 0) + int(left[0])
    while True:
        right = np.nonzero(cols[hi + 1:hi + gap + 2])[0]
        if not right.size:
            break
        hi = hi + 1 + int(right[-1])
    grown = Box(lo + offset, b.y0, hi + offset + 1, b.y1)
    if grown == b:
        return box
    fitted = _stroke_box(arr, grown, threshold)
    fitted = Box(fitted.x0, min(fitted.y0, b.y0), fitted.x1, max(fitted.y1, b.y1))
    return Box(fitted.y0, fitted.x0, fitted.y1, fitted.x1) if vertical else fitted


def without_lines(mask: np.ndarray) -> np.ndarray:
    """The stroke mask less long straight lines (image frames, rulers, calipers): letters joined to them by
    the closing would otherwise become part of one large component that is not text-shaped, and be lost."""
    length = max(40, min(mask.shape) // 12)
    lines = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (length, 1)))
    lines |= cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, length)))
    if not lines.any():
        return mask
    return mask & ~cv2.dilate(lines, np.ones((3, 3), np.uint8))


def _group(mask: np.ndarray, kernel: int, shape: tuple[int, int]) -> list[Box]:
    h, w = shape
    out: list[Box] = []
    for direction in ((kernel, 1), (1, kernel)):
        closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, direction))
        n, _, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
        for i in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[i])
            short, long_ = min(bw, bh), max(bw, bh)
            if short < 3 or long_ < 4 or short > max(0.25 * min(h, w), 48):
                continue
            fill = area / float(bw * bh)
            if fill < 0.12 or (fill > 0.92 and short > 6):
                continue  # specks, or solid blobs (anatomy, bars) rather than letters
            out.append(Box(x, y, x + bw, y + bh))
    return out


def merge_boxes(boxes: list[Box], gap: int = 2) -> list[Box]:
    """Merge boxes that overlap or touch (within ``gap`` pixels) until none do."""
    items = list(boxes)
    changed = True
    while changed:
        changed = False
        out: list[Box] = []
        for b in items:
            grown = Box(b.x0 - gap, b.y0 - gap, b.x1 + gap, b.y1 + gap)
            for i, o in enumerate(out):
                if grown.intersect(o) > 0:
                    out[i] = o.union(b)
                    changed = True
                    break
            else:
                out.append(b)
        items = out
    return items


def text_screen(frame: np.ndarray) -> bool:
    """The cheap screen for images not already likely to carry text: does anything look like lettering?

    It looks for small clusters of pixels at the frame's extreme values (where devices burn text) that form
    letter-sized blobs; it runs on raw pixels in a few milliseconds.
    """
    f = frame if frame.ndim == 2 else frame.max(axis=-1)
    step = 2 if min(f.shape) >= 256 else 1
    sub = np.ascontiguousarray(f[::step, ::step])  # one copy: reductions on a strided view cost 3x
    lo, hi = sub.min(), sub.max()
    if hi == lo:
        return False
    for mask in (sub == hi, sub == lo):
        n = int(np.count_nonzero(mask))
        if n < 6 or n > 0.03 * sub.size:
            continue
        m8 = mask.astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(m8, connectivity=8)
        small = [s for s in stats[1:] if 2 <= s[3] <= 40 and 1 <= s[2] <= 40 and s[4] >= 3]
        if len(small) >= 3:
            return True
    return False

