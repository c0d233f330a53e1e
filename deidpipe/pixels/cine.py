"""Text in cines (ultrasound loops, XA runs, endoscopy): found on a temporal summary, not frame by frame.

Why: the per-frame finder (``_Finder`` in :mod:`deidpipe.pixels.find`) costs 40-50 ms of CPU per frame for the stroke
maps and lines alone, and it runs on every frame of every pass (the first, and each re-check after blacking: up to
five). In a cine the anatomy moves, so every frame also offers new candidates in the anatomy that no crop cache or
"verified unchanged" rule can answer: pydicom's 30-frame ``examples_ybr_color.dcm`` took 19-22 CPU-s against
0.13 s for its first frame alone, two thirds of it CRAFT on anatomy crops, the rest 150 frame passes.

What a device burns into a cine stays put while the anatomy moves. So:

1. **Summary.** Per pixel over the frames: the range (max - min, the largest of the colour channels) and the mean.
   A pixel is *static* when its range is below :data:`MOVING_LEVEL` (lossy compression noise on a static overlay
   stays below it; a stroke stands :data:`~deidpipe.pixels.candidates.MIN_CONTRAST` or more from its ground). The
   mean image shows every static overlay at its own value, on a ground that is the anatomy's average: light and
   dark text both keep their contrast, and the speckle (which the line finder would chain into false "lines" in
   every frame) is smoothed away. The full detector runs on the mean image, once per pass.
2. **Changes.** Moving pixels, joined (dilated by :data:`JOIN`), form regions. A region taller and wider than a
   line of text is anatomy (the sector of an ultrasound loop, the field of an XA run); a region with a short side
   no more than a line of text is a *change region*: where a clock, a frame counter or a label that comes and goes
   is drawn. For each change region the frames are grouped by content: a frame whose pixels there are all within
   ``MIN_CONTRAST`` of a frame already checked shows the same thing (no stroke appeared or vanished), otherwise it
   is checked, with the full detector, in a window around the region (context for the kernels, and enough of the
   line on each side for the letters that did not change to chain with those that did). A frame whose windows
   would cover more than :data:`WHOLE_SHARE` of it is checked whole. Frame 0 is always checked in every change
   region (the mean shows a blend there, not a frame).
3. **Fail closed.** Where the assumptions do not hold the frames are checked one by one by the per-frame finder:
   fewer than :data:`CINE_MIN_FRAMES` frames (short multi-frame objects keep the per-frame path and their output),
   frames smaller than the screen's kernels, or anatomy over more than :data:`MAX_ANATOMY_SHARE` of the frame (a
   volume's slices, a moving camera, grey frames whose display stretch changes: no static ground on which a
   change could be told from anatomy).

Boxes apply to every frame, as on the per-frame path. Re-checks after blacking run this same procedure on the
blacked frames (a summary and a few windows, not every frame again), and ``scan`` calls it too, so ``scan`` after
``run`` sees what ``run``'s last pass saw.

What it does not see: text that changes while it lies on moving anatomy, or within :data:`JOIN` pixels of it (it
joins the anatomy's region). Static text there is in the mean image; a label that appears over the anatomy in a few
frames only is found when it stands out in the mean of the frames, not otherwise. Devices draw clocks and counters
in the margins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from deidpipe.pixels.candidates import MIN_CONTRAST, MIN_SIDE, Box, merge_boxes
from deidpipe.pixels.lines import letter_limit

#: Objects with at least this many frames take the temporal path (the synth XA of 4 frames does not).
CINE_MIN_FRAMES = 8
#: A pixel moves when its range over the frames reaches this many display levels (0-255).
MOVING_LEVEL = 16
#: Moving pixels this close (a square kernel, pixels) join one region: a letter's pieces, a word's letters, the
#: fringe of the anatomy where the speckle dips below :data:`MOVING_LEVEL`.
JOIN = 9
#: Context around a change region in its window, across the line (more than the widest top-hat kernel, 15).
CONTEXT = 16
#: ... and along the line, in multiples of the region's height (the letters around the ones that changed).
ALONG = 4
#: A frame whose windows would cover more than this share of it is checked whole.
WHOLE_SHARE = 1 / 3
#: When moving regions that are not text-sized (anatomy) cover more than this share of the frame, every frame is
#: checked on its own.
MAX_ANATOMY_SHARE = 0.75
#: A frame's crop of a change region is compared with the crops of the last this many frames checked there (not
#: all of them: a counter that changes every frame would make that quadratic in the frames, 2,000 frames 2
#: million comparisons). A frame that shows again what an older checked frame showed is only checked once more.
RECENT = 8


@dataclass
class CinePlan:
    """What to look at in one pass over a cine.

    Attributes:
        summary: the mean image (8-bit, as the frames).
        regions: change regions (joined moving pixels no larger than a line of text), frame coordinates.
        windows: (frame, window) pairs to check with the full detector.
        whole: frames to check whole.
        anatomy_share: share of the frame covered by moving regions larger than a line of text.
    """

    summary: np.ndarray
    regions: list[Box] = field(default_factory=list)
    windows: list[tuple[int, Box]] = field(default_factory=list)
    whole: list[int] = field(default_factory=list)
    anatomy_share: float = 0.0


def summary_image(frames8: np.ndarray) -> np.ndarray:
    """The per-pixel mean of the frames, rounded, as an 8-bit image (grey or RGB)."""
    n = frames8.shape[0]
    total = frames8.sum(axis=0, dtype=np.uint32)
    return ((total + n // 2) // n).astype(np.uint8)


def moving_mask(frames8: np.ndarray) -> np.ndarray:
    """Pixels whose range over the frames reaches :data:`MOVING_LEVEL` (in any colour channel)."""
    rng = frames8.max(axis=0) - frames8.min(axis=0)  # uint8: max >= min
    if rng.ndim == 3:
        rng = rng.max(axis=2)
    return rng >= MOVING_LEVEL


def _window(region: Box, shape: tuple[int, int]) -> Box:
    """A change region with its context: :data:`CONTEXT` across the line, :data:`ALONG` times its height along it
    (a column of rotated text runs along y), at least :data:`~deidpipe.pixels.candidates.MIN_SIDE` on each side."""
    h, w = shape
    size = min(region.width, region.height)
    along = CONTEXT + ALONG * size
    if region.height > 2 * region.width:
        win = Box(region.x0 - CONTEXT, region.y0 - along, region.x1 + CONTEXT, region.y1 + along)
    else:
        win = Box(region.x0 - along, region.y0 - CONTEXT, region.x1 + along, region.y1 + CONTEXT)
    x0, y0, x1, y1 = max(win.x0, 0), max(win.y0, 0), min(win.x1, w), min(win.y1, h)
    if x1 - x0 < MIN_SIDE:
        x0, x1 = max(min(x0, w - MIN_SIDE), 0), min(max(x1, MIN_SIDE), w)
    if y1 - y0 < MIN_SIDE:
        y0, y1 = max(min(y0, h - MIN_SIDE), 0), min(max(y1, MIN_SIDE), h)
    return Box(x0, y0, x1, y1)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two crops show the same thing: no pixel differs by a stroke's contrast (no stroke appeared or
    vanished; lossy compression noise is smaller)."""
    d = cv2.absdiff(a, b)
    return int(d.max(initial=0)) < MIN_CONTRAST


def plan_cine(frames8: np.ndarray) -> CinePlan | None:
    """The summary, change regions and frames to check of one cine, or None where every frame must be checked on
    its own (see the module's notes)."""
    n, h, w = frames8.shape[:3]
    if n < CINE_MIN_FRAMES or min(h, w) < MIN_SIDE:
        return None
    plan = CinePlan(summary_image(frames8))
    moving = moving_mask(frames8)
    if not moving.any():
        return plan
    joined = cv2.dilate(moving.astype(np.uint8), np.ones((JOIN, JOIN), np.uint8))
    _, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    limit = letter_limit((h, w)) + JOIN - 1
    anatomy = 0
    for x, y, bw, bh, area in stats[1:]:
        if min(bw, bh) > limit:
            anatomy += int(area)
        else:
            plan.regions.append(Box(int(x), int(y), int(x + bw), int(y + bh)))
    plan.anatomy_share = anatomy / float(h * w)
    if plan.anatomy_share > MAX_ANATOMY_SHARE:
        return None
    per_frame: dict[int, list[Box]] = {}
    for region in plan.regions:
        crops = frames8[:, region.y0:region.y1, region.x0:region.x1]
        checked: list[int] = []
        for k in range(n):
            if any(_same(crops[k], crops[j]) for j in checked[-RECENT:]):
                continue  # shows what a recently checked frame showed here
            checked.append(k)
            per_frame.setdefault(k, []).append(_window(region, (h, w)))
    for k in sorted(per_frame):
        wins = merge_boxes(per_frame[k], gap=0)
        if sum(b.area for b in wins) > WHOLE_SHARE * h * w:
            plan.whole.append(k)
        else:
            plan.windows += [(k, b) for b in wins]
    return plan


def _shifted(b: Box, dx: int, dy: int) -> Box:
    return Box(b.x0 + dx, b.y0 + dy, b.x1 + dx, b.y1 + dy)


#: The full detector over a stack of images of one size: the text boxes found in any of them (image coordinates),
#: candidates inside the known regions given not sent to OCR.
#: The detector: (images, known regions, the tallest letters to chain or None for each image's own limit) -> boxes.
Look = Callable[[np.ndarray, list[Box], "int | None"], list[Box]]


def text_in_cine(frames8: np.ndarray, skip: list[Box], look: Look) -> tuple[list[Box], CinePlan] | None:
    """The text boxes of a cine (frame coordinates, each for every frame, not yet grown by the margin) and the plan
    they were found by, or None when the cine is to be checked frame by frame (:func:`plan_cine`). ``look`` is
    the detector (:func:`deidpipe.pixels.find.find_text` passes the per-frame finder); ``skip`` are the known
    regions."""
    plan = plan_cine(frames8)
    if plan is None:
        return None
    images = np.concatenate([plan.summary[None], frames8[plan.whole]]) if plan.whole else plan.summary[None]
    text = look(images, skip, None)
    letters = letter_limit(frames8.shape[1:3])  # a window's letters are as tall as the frame's may be
    for k, win in plan.windows:
        crop = np.ascontiguousarray(frames8[k, win.y0:win.y1, win.x0:win.x1])
        local = [_shifted(s, -win.x0, -win.y0) for s in skip]
        text += [_shifted(b, win.x0, win.y0) for b in look(crop[None], local, letters)]
    return text, plan
