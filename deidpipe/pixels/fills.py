"""Solid fills are never text: the frame as the text detectors see it, with every fill rectangle's border band
replaced by the mirror image of what lies beyond its edges.

The pixel stage blacks text with boxes of the frame's darkest value. Seen by a top-hat, a box thinner than the
kernel is one dark stroke, a strip of anatomy left between two boxes is a light one, and a row of small boxes a
letter apart looks like a row of letters: without this, the detector that put the boxes there would find "text"
at their edges (and ``scan`` would report it). Mirroring keeps what lies beside a box as it is, so text that a
box cut (the lower half of a line) still stands out from its own ground.
"""

from __future__ import annotations

import cv2
import numpy as np

#: A fill rectangle is at least this wide along the edge where it is mirrored (pixels).
FILL_EDGE = 9
#: ... and what lies beyond it at least this deep: a letter's stroke on a black ground is thinner.
FILL_CONTENT = 3
#: How far into a fill its neighbour is mirrored: more than the widest top-hat kernel (15).
FILL_REACH = 16


def darkest(img8: np.ndarray) -> np.ndarray:
    """Pixels at the frame's darkest value: what a fill is drawn in (the image minimum, black for colour, the
    darkest palette entry as displayed)."""
    v = img8 if img8.ndim == 2 else img8.max(axis=2)
    return v == v.min()


def darkest_mask(img8: np.ndarray) -> np.ndarray:
    """:func:`darkest` pixels in solid patches of at least 3 x 3 (isolated dark pixels of noise or speckle are
    not fills)."""
    m = darkest(img8).astype(np.uint8)
    return cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)


def _depths(fill: np.ndarray) -> np.ndarray:
    """For every pixel, how many fill pixels lie at and above it in its column without a gap (0 off the fill)."""
    up = np.zeros(fill.shape, np.int32)
    up[0] = fill[0]
    for y in range(1, fill.shape[0]):
        up[y] = (up[y - 1] + 1) * fill[y]
    return up


def _rectangle_edges(depth: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Edge pixels (``depth`` >= 0: the fill's depth above an edge pixel, -1 elsewhere) where the fill is a
    rectangle: at least :data:`FILL_EDGE` pixels along a row with one depth (its far side is straight and parallel)
    and, at one end at least, a straight side: the column beyond that end is not fill over most of the depth
    nearest the edge, or is off the frame (so a dark ground over the equal tops of a line of letters is not a
    rectangle)."""
    h, w = depth.shape
    flat = np.concatenate([depth, np.full((h, 1), -1, depth.dtype)], axis=1).ravel()
    starts = np.ones(flat.shape, bool)
    starts[1:] = flat[1:] != flat[:-1]
    label = np.cumsum(starts) - 1
    sizes = np.bincount(label)
    first = np.nonzero(starts)[0]
    keep = np.zeros(len(sizes), bool)
    for lab in np.nonzero(sizes >= FILL_EDGE)[0]:
        pos = int(first[lab])
        d = int(flat[pos])
        if d < 0:
            continue
        y, x0 = divmod(pos, w + 1)
        x1 = x0 + int(sizes[lab])
        rows = slice(max(y - min(d, FILL_REACH) + 1, 0), y + 1)
        for x in (x0 - 1, x1):  # the frame's border is a side too (a box across the whole frame)
            if not 0 <= x < w or np.count_nonzero(~fill[rows, x]) >= 0.8 * (rows.stop - rows.start):
                keep[lab] = True
                break
    return keep[label].reshape(h, w + 1)[:, :w]


def _mirror_down(img: np.ndarray, fill: np.ndarray, out: np.ndarray, dist: np.ndarray) -> None:
    """Where a fill rectangle lies above a straight horizontal edge, mirror what lies below the edge up into it.

    A rectangle, not any dark ground: along at least :data:`FILL_EDGE` pixels of the edge the fill is equally
    deep (its far side is straight and parallel too: a blacked box, or a black bar), and what lies below is at
    least :data:`FILL_CONTENT` pixels deep. ``out`` and ``dist`` (each written pixel's distance from its edge) are
    updated in place; a pixel nearer another edge keeps that edge's mirror."""
    h = fill.shape[0]
    if h < 2:
        return
    edge = fill[:-1] & ~fill[1:]  # row y is fill, row y + 1 is not
    if np.count_nonzero(edge) < FILL_EDGE:
        return
    depth = np.where(edge, _depths(fill)[:-1], -1)
    ys, xs = np.nonzero(_rectangle_edges(depth, fill[:-1]))
    if not len(ys):
        return
    content = np.zeros(len(ys), np.int32)  # how deep what lies below the edge goes before the next fill pixel
    alive = np.ones(len(ys), bool)
    for j in range(1, FILL_REACH + 1):
        yy = ys + j
        ok = alive & (yy < h)
        ok[ok] = ~fill[yy[ok], xs[ok]]
        content += ok
        alive &= ok
    reach = np.where(content >= FILL_CONTENT, np.minimum(content, np.minimum(depth[ys, xs], FILL_REACH)), 0)
    for j in range(int(reach.max(initial=0))):
        sel = reach > j
        ty, tx, sy = ys[sel] - j, xs[sel], ys[sel] + 1 + j
        nearer = dist[ty, tx] > j
        ty, tx, sy = ty[nearer], tx[nearer], sy[nearer]
        out[ty, tx] = img[sy, tx]
        dist[ty, tx] = j


def without_fills(img8: np.ndarray) -> np.ndarray:
    """The frame with every solid fill's border band replaced by the mirror image of what lies beyond its
    straight edges, so that a fill (a box blacked by the pixel stage, a black bar) and its edges never look like
    strokes: a thin fill no longer stands out as a dark stroke, nor a strip of anatomy between two fills as a
    light one, while text cut by a fill (a descender below the box) still stands out from its own ground.

    A fill is a solid patch of the frame's darkest value; an edge counts where the fill is a rectangle along at
    least :data:`FILL_EDGE` pixels of it (equally deep: a dark ground of irregular shape, around letters or an
    ultrasound sector, is not mirrored) and what lies beyond is at least :data:`FILL_CONTENT` pixels deep (the
    thin strokes of letters on a black ground are not mirrored). Returns ``img8`` itself when the frame
    has no such edge."""
    fill = darkest_mask(img8)
    if not fill.any() or fill.all():
        return img8
    out = img8.copy()
    dist = np.full(fill.shape, FILL_REACH + 1, np.int32)
    views = [(lambda a: a), (lambda a: a[::-1]), (lambda a: a.swapaxes(0, 1)), (lambda a: a.swapaxes(0, 1)[::-1])]
    for view in views:  # edges below, above, right of and left of a fill: each as "below" in its own view
        _mirror_down(view(img8), view(fill), view(out), view(dist))
    seams = _seams(fill & (dist > FILL_REACH), dist <= FILL_REACH)
    if seams.any():  # where two mirrors did not quite meet (their reach was cut short): no dark line between them
        out = cv2.inpaint(out, seams.astype(np.uint8), 2, cv2.INPAINT_TELEA)
    return out


def _seams(left: np.ndarray, mirrored: np.ndarray, reach: int = 8) -> np.ndarray:
    """Pixels of ``left`` with ``mirrored`` pixels within ``reach`` on both sides along a row or a column."""
    out = np.zeros_like(left)
    for axis in (0, 1):
        before = np.zeros_like(left)
        after = np.zeros_like(left)
        n = left.shape[axis]
        for s in range(1, min(reach, n - 1) + 1):
            if axis == 0:
                before[s:] |= mirrored[:-s]
                after[:-s] |= mirrored[s:]
            else:
                before[:, s:] |= mirrored[:, :-s]
                after[:, :-s] |= mirrored[:, s:]
        out |= left & before & after
    return out
