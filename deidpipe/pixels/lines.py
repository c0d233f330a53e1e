"""Classical text lines: letters found by their strokes, chained into lines by size, alignment and colour.

A device draws its annotations in one colour. A line of such text shows, in a stroke map (top-hat response, see
:class:`~deidpipe.pixels.candidates.StrokeMaps`), as a row of blobs of about one height, on one band, a letter
gap apart, whose brightest (light text) or darkest (dark text) pixels all share one value: the colour the text
was drawn in. Anatomy, noise and edges rarely show all of that at once. Lines found this way are blacked without
a neural network, in milliseconds where the CRAFT detector costs about half a second per frame on a CPU; what
the chains leave in doubt (two letters) is left to OCR (see :mod:`deidpipe.pixels.redact`).

Rotated text (a column of letters turned by 90 degrees) is found by chaining along columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from deidpipe.pixels.candidates import MIN_CONTRAST, Box, StrokeMaps, without_lines

#: Letters shorter than this many pixels are not counted towards a line (dots, dashes, noise).
MIN_LETTER = 4
#: A line needs at least this many letters.
MIN_LETTERS = 3
#: Largest gap between neighbouring letters, in letter heights (a word space is about one).
MAX_GAP = 1.3
#: Letters of one line differ in their extreme value by at most this (0-255 scale) or this share of their
#: contrast, whichever is larger: compression and anti-aliasing blur the drawn colour a little.
PEAK_TOLERANCE = 12
PEAK_SHARE = 0.12
#: A line's letters stand out by at least this much (median stroke response): text is drawn to be read, while
#: chance alignments of noise and texture are faint.
LINE_CONTRAST = 2 * MIN_CONTRAST


@dataclass(frozen=True)
class TextLine:
    """A chain of letter blobs.

    Attributes:
        box: the line's box in frame coordinates.
        letters: how many letters it holds (estimated where letters run together).
        vertical: rotated text (letters chained along a column).
        light: light text on a darker ground (else dark on light).
        source: which of :attr:`StrokeMaps.sources` the line was found in (luminance light or dark, chroma):
            its ``colour`` is on that source's scale.
        colour: the letters' drawn value (their median extreme grey value, 0-255 display scale).
        size: the letters' median height in pixels (across the column for rotated text).
        contrast: the letters' median stroke response.
    """

    box: Box
    letters: int
    vertical: bool
    light: bool = True
    source: int = 0
    colour: int = 0
    size: int = 0
    contrast: int = 0


@dataclass(frozen=True)
class Findings:
    """What :func:`text_lines` found in one frame.

    Attributes:
        lines: lines of letters (taken as text).
        matched: lone letters drawn in the colour and size of a line's letters (taken as text: the ``L`` or
            ``R`` beside a banner).
        unsure: short chains (two letters) that may be text: for an OCR engine to judge.
    """

    lines: list[TextLine]
    matched: list[Box]
    unsure: list[Box]

    def text_boxes(self) -> list[Box]:
        """The lines and matched letters, with pieces of one line joined: neighbours on one band less than two
        letters apart (a line broken where letters ran into each other)."""
        horizontal = [ln.box for ln in self.lines if not ln.vertical] + self.matched
        vertical = [ln.box.transposed() for ln in self.lines if ln.vertical]  # joined as if horizontal
        return _join(horizontal) + [b.transposed() for b in _join(vertical)]


def _join(boxes: list[Box]) -> list[Box]:
    merged: list[Box] = []
    for b in sorted(boxes, key=lambda b: b.x0):
        for i, m in enumerate(merged):
            overlap = min(m.y1, b.y1) - max(m.y0, b.y0)
            if overlap >= 0.5 * min(m.height, b.height) and b.x0 - m.x1 <= 2 * max(m.height, b.height):
                merged[i] = m.union(b)
                break
        else:
            merged.append(b)
    return merged


def _components(mask: np.ndarray, grey: np.ndarray, response: np.ndarray,
                light: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mask's 8-connected blobs: bounding boxes and pixel counts (x0, y0, x1, y1, area), each blob's extreme
    grey value (its drawn colour) and its strongest stroke response (its contrast)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros((0, 4), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32)
    stats = stats[1:]
    boxes = np.stack([stats[:, 0], stats[:, 1], stats[:, 0] + stats[:, 2], stats[:, 1] + stats[:, 3],
                      stats[:, 4]], axis=1)
    index = np.arange(1, n)
    extreme = ndimage.maximum if light else ndimage.minimum
    peaks = np.asarray(extreme(grey, labels, index), dtype=np.int32)
    contrast = np.asarray(ndimage.maximum(response, labels, index), dtype=np.int32)
    return boxes.astype(np.int32), peaks, contrast


def _chains(boxes: np.ndarray, peaks: np.ndarray, contrast: np.ndarray, max_height: int,
            min_letters: int = MIN_LETTERS, min_contrast: int = LINE_CONTRAST) -> list[tuple[list[int], int]]:
    """Groups of blob indices that form horizontal lines (``boxes`` as x0, y0, x1, y1, area), each with its
    estimated number of letters.

    A blob is a letter when it is at most three times as wide as it is high, or several letters run together
    (small text, compression, a bold font) when it is wider but only partly filled, as a word is.
    """
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    fill = boxes[:, 4] / np.maximum(w * h, 1)
    word = (w > 3 * h) & (w <= 24 * h) & (fill >= 0.2) & (fill <= 0.8)
    letter = (h >= MIN_LETTER) & (h <= max_height) & (w >= 1) & ((w <= 3 * h) | word)
    letters = np.where(word, np.maximum(np.round(w / (0.75 * h)), 1), 1).astype(np.int32)
    idx = np.nonzero(letter)[0]
    if len(idx) < 2:
        return []
    idx = idx[np.argsort(boxes[idx, 0], kind="stable")]
    parent = {int(i): int(i) for i in idx}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    x0s = boxes[idx, 0]
    for a, i in enumerate(idx):
        hi = int(h[i])
        reach = boxes[i, 2] + MAX_GAP * hi
        stop = int(np.searchsorted(x0s, reach, side="right"))
        for j in idx[a + 1:stop]:
            hj = int(h[j])
            if max(hi, hj) > 2 * min(hi, hj):
                continue
            overlap = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            if overlap < 0.5 * min(hi, hj):
                continue
            if boxes[j, 0] < boxes[i, 2] - 0.5 * min(w[i], w[j]):
                continue  # overlapping blobs side by side are not consecutive letters
            tol = max(PEAK_TOLERANCE, PEAK_SHARE * float(min(contrast[i], contrast[j])))
            if abs(int(peaks[i]) - int(peaks[j])) > tol:
                continue
            parent[find(int(i))] = find(int(j))
    groups: dict[int, list[int]] = {}
    for i in parent:
        groups.setdefault(find(i), []).append(i)
    return [(g, int(letters[g].sum())) for g in groups.values()
            if len(g) >= 2 and letters[g].sum() >= min_letters
            and _is_line(boxes[g], peaks[g], contrast[g], min_contrast)]


def _is_line(boxes: np.ndarray, peaks: np.ndarray, contrast: np.ndarray, min_contrast: int) -> bool:
    """Whether chained blobs look like one line of text: they sit in one band (not a diagonal or a stack),
    and share one drawn colour."""
    h = boxes[:, 3] - boxes[:, 1]
    band = int(boxes[:, 3].max() - boxes[:, 1].min())
    if band > 1.5 * int(h.max()) or h.max() > 2 * np.median(h):
        return False
    if np.median(contrast) < min_contrast:
        return False
    tol = max(PEAK_TOLERANCE, PEAK_SHARE * float(np.median(contrast)))
    return int(peaks.max() - peaks.min()) <= tol


def letter_limit(shape: tuple[int, int]) -> int:
    """The tallest letters chained in an image of ``shape``: a fifth of its short side, between 12 and 64."""
    return int(max(12, min(64, 0.2 * min(shape))))


def text_lines(maps: StrokeMaps, max_height: int | None = None) -> Findings:
    """Lines of letters in one frame's stroke maps (horizontal and rotated, light and dark), lone letters that
    match them, and the short chains that may be text (see :class:`Findings`). ``max_height``: the tallest
    letters chained (default :func:`letter_limit` of the image; a window cut from a larger frame passes the
    frame's, or its letters would be too tall for the window's own limit)."""
    width = maps.grey.shape[1]
    max_height = max_height if max_height is not None else letter_limit(maps.grey.shape)
    lines: list[TextLine] = []
    rest: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    for source, (response, grey, light) in enumerate(maps.sources):
        mask = without_lines((response >= MIN_CONTRAST).astype(np.uint8))
        if not mask.any():
            continue
        boxes, peaks, contrast = _components(mask, grey, response, light)
        if not len(boxes):
            continue
        used = np.zeros(len(boxes), bool)
        for vertical in (False, True):
            b = boxes[:, [1, 0, 3, 2, 4]] if vertical else boxes
            for group, letters in _chains(b, peaks, contrast, max_height):
                g = boxes[group]
                box = _extent(g)
                if vertical and (letters <= MIN_LETTERS or box.x0 == 0 or box.x1 == width
                                 or sum(ln.box.intersect(box) for ln in lines) >= 0.5 * box.area):
                    continue  # rotated text is rarer: more letters, off the frame's edge, not across lines
                sizes = (g[:, 2] - g[:, 0]) if vertical else (g[:, 3] - g[:, 1])
                lines.append(TextLine(box, letters, vertical, light, source, int(np.median(peaks[group])),
                                      int(np.median(sizes)), int(np.median(contrast[group]))))
                used[group] = True
        rest.append((source, boxes[~used], peaks[~used], contrast[~used]))
    matched: list[Box] = []
    unsure: list[Box] = []
    for source, boxes, peaks, contrast in rest:
        keep = np.array([not any(ln.box.intersect(_box(b)) for ln in lines) for b in boxes], bool)
        boxes, peaks, contrast = boxes[keep], peaks[keep], contrast[keep]  # not pieces of a line's letters
        matched += _matching_letters(boxes, peaks, contrast,
                                     [ln for ln in lines if ln.source == source and not ln.vertical], max_height)
        for group, _ in _chains(boxes, peaks, contrast, max_height, min_letters=2):
            box = _extent(boxes[group])
            if not any(m.intersect(box) == box.area for m in matched):
                unsure.append(box)
    return Findings(lines, matched, unsure)


def _box(row: np.ndarray) -> Box:
    return Box(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def _extent(rows: np.ndarray) -> Box:
    """The box around blobs given as rows of (x0, y0, x1, y1, ...)."""
    return Box(int(rows[:, 0].min()), int(rows[:, 1].min()), int(rows[:, 2].max()), int(rows[:, 3].max()))


def _matching_letters(boxes: np.ndarray, peaks: np.ndarray, contrast: np.ndarray, lines: list[TextLine],
                      max_height: int) -> list[Box]:
    """Letter-shaped blobs drawn in the colour and size of one of the ``lines``' letters (horizontal lines of the
    blobs' own source)."""
    out: list[Box] = []
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    keep = (h >= MIN_LETTER) & (h <= max_height) & (w >= 1) & (w <= 3 * h) & (contrast >= LINE_CONTRAST)
    for row, peak, c, size in zip(boxes[keep], peaks[keep], contrast[keep], h[keep], strict=True):
        if any(ln.size * 0.6 <= size <= ln.size * 1.6
               and abs(ln.colour - int(peak)) <= max(PEAK_TOLERANCE, PEAK_SHARE * min(ln.contrast, int(c)))
               for ln in lines):
            out.append(_box(row))
    return out
