"""Cines: text found on the temporal summary and in windows where frames change (``deidpipe.pixels.cine``).

Synth ultrasound cines (moving speckle, static banner, a clock that changes every 8 frames) are redacted in every
frame; text that shows in one middle frame only is found there; on pydicom's 30-frame ``examples_ybr_color.dcm``
the summary's boxes cover every line the per-frame finder sees on static ground in any frame; objects the
summary cannot stand for (short, everything moving) keep the per-frame path.
"""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from deidpipe.pixels import PixelOptions, cine, decode, detect_text, displayed_frames, redact_dataset
from deidpipe.pixels.candidates import StrokeMaps
from deidpipe.pixels.cine import CINE_MIN_FRAMES, RECENT, moving_mask, plan_cine
from deidpipe.pixels.fills import without_fills
from deidpipe.pixels.lines import text_lines
from deidpipe.synth.burned import BurnedKey
from deidpipe.synth.burned_cine import CINE_VARIANTS, generate_cine_set


@pytest.fixture(scope="module")
def cines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BurnedKey]:
    root = tmp_path_factory.mktemp("cines")
    return root, generate_cine_set(root, seed=5)


def _blacked_per_frame(after: np.ndarray, box: list[int], frames: list[int]) -> float:
    """The least share, over ``frames``, of ``box``'s pixels at the fill value (0 for colour, else the minimum)."""
    x0, y0, x1, y1 = box
    reg = after[frames, y0:y1, x0:x1]
    hit = (reg == 0).all(axis=-1) if after.ndim == 4 else reg == after.min()
    return float(hit.mean(axis=(1, 2)).min())


def _redact(ds: pydicom.Dataset):
    result = redact_dataset(ds, PixelOptions(), source=copy.deepcopy(ds))
    return result, decode(ds).frames


def test_synth_cines_every_word_blacked_in_every_frame(cines, ocr):
    root, key = cines
    assert {f.variant for f in key.files} == set(CINE_VARIANTS)
    for f in key.files:
        assert f.frames >= CINE_MIN_FRAMES
        clock = [w for w in f.words if len(w.frames) < f.frames]
        assert len(clock) >= 4 and all(w.kind == "phi" for w in clock)  # a time that changes every few frames
        result, after = _redact(pydicom.dcmread(root / f.path))
        assert result.cine_passes == result.passes >= 2  # every pass (the first and the re-checks) on the summary
        assert result.cine_whole == 0 and 0 < result.cine_windows <= 2 * len(clock) * result.passes
        missed = [(w.kind, w.frames[0]) for w in f.words if _blacked_per_frame(after, w.box, w.frames) < 0.95]
        assert not missed, (f.variant, missed)


def test_text_in_one_middle_frame_is_found_there(cines, ocr):
    root, key = cines
    f = next(f for f in key.files if f.variant == "us_cine")
    ds = pydicom.dcmread(root / f.path)
    frames = decode(ds).frames.copy()
    before = frames[15].copy()
    cv2.putText(frames[15], "SMITH", (236, 100), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_8)
    ys, xs = np.nonzero(frames[15] != before)
    word = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    ds.set_pixel_data(frames, "MONOCHROME2", 8, generate_instance_uid=False)
    plan = plan_cine(displayed_frames(ds, decode(ds)))
    assert plan is not None
    # frame 15 differs there from every other frame: it is looked at on its own
    assert any(k == 15 for k, _ in plan.windows) or 15 in plan.whole
    result, after = _redact(ds)
    assert _blacked_per_frame(after, word, [15]) >= 0.95
    assert all(_blacked_per_frame(after, w.box, w.frames) >= 0.95 for w in f.words)


def test_a_window_chains_letters_as_tall_as_its_frame_allows(cines, ocr):
    """A changing clock in letters taller than 12 pixels: cut into a window (about 60 pixels), the line finder
    with the window's own limit (a fifth of its short side, at least 12) chains none of it; with the frame's
    limit, as the cine path passes it, it finds the line. And the whole cine is redacted in every frame."""
    from deidpipe.pixels.lines import letter_limit

    root, key = cines
    f = next(f for f in key.files if f.variant == "us_cine")
    ds = pydicom.dcmread(root / f.path)
    frames = decode(ds).frames.copy()
    boxes = []
    for k in range(frames.shape[0]):
        before = frames[k].copy()
        cv2.putText(frames[k], f"12:0{k // 4}", (200, 228), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 255, 2, cv2.LINE_8)
        ys, xs = np.nonzero(frames[k] != before)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    assert min(b[3] - b[1] for b in boxes) > 12
    x0, y0, x1, y1 = boxes[0]
    window = np.ascontiguousarray(frames[0, y0 - 8:y1 + 8, x0 - 4:x0 + 60])
    maps = StrokeMaps.of(window, without_fills(window))
    assert letter_limit(window.shape) == 12 and not text_lines(maps).text_boxes()
    assert text_lines(maps, letter_limit(frames.shape[1:3])).text_boxes()
    ds.set_pixel_data(frames, "MONOCHROME2", 8, generate_instance_uid=False)
    result, after = _redact(ds)
    assert result.cine_passes == result.passes
    assert min(_blacked_per_frame(after, b, [k]) for k, b in enumerate(boxes)) >= 0.95


def test_ybr_cine_summary_covers_the_per_frame_lines():
    """Every line the per-frame line finder sees on static ground (no moving pixel in its box), in any of the 30
    frames, lies in a box the temporal path finds. Lines on the moving anatomy, or across its edge, are speckle,
    not text, and are left; so are 1-pixel columns (the depth scale's dots, chained in 2 frames of 30 where the
    JPEG noise lets them through)."""
    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    frames = displayed_frames(ds, decode(ds))
    moving = moving_mask(frames)
    found = detect_text(ds, PixelOptions())
    assert found.result.cine_passes == 1 and found.result.cine_whole == 0 and found.result.ocr_crops == 0
    covered = np.zeros(moving.shape, bool)
    for b in found.text:
        covered[b.y0:b.y1, b.x0:b.x1] = True
    static_lines = 0
    for k in range(frames.shape[0]):
        for b in text_lines(StrokeMaps.of(frames[k], without_fills(frames[k]))).text_boxes():
            if not moving[b.y0:b.y1, b.x0:b.x1].any() and min(b.width, b.height) > 1:
                static_lines += 1
                assert covered[b.y0:b.y1, b.x0:b.x1].mean() >= 0.95, (k, b)
    assert static_lines >= 30 * 8  # the banner, the side column and the toolbar, in every frame


def test_short_and_all_moving_objects_keep_the_per_frame_path(cines):
    root, key = cines
    f = next(f for f in key.files if f.variant == "us_cine")
    ds = pydicom.dcmread(root / f.path)
    short = copy.deepcopy(ds)  # 4 frames of the banner: frame by frame, as before (the synth XA keeps its bytes)
    short.set_pixel_data(np.ascontiguousarray(decode(ds).frames[:4, :40]), "MONOCHROME2", 8,
                         generate_instance_uid=False)
    found = detect_text(short, PixelOptions())
    assert found.result.cine_passes == 0 and found.text
    # every pixel changes from frame to frame (a volume's slices, a moving camera): no static ground to stand for
    # the frames, so each is checked on its own; the static text is found all the same
    yy, xx = np.mgrid[0:64, 0:96]
    moving = np.stack([60 + 40 * np.sin(xx / 9 + yy / 13 + k) for k in range(CINE_MIN_FRAMES)]).astype(np.uint8)
    for img in moving:
        cv2.putText(img, "DOE 1961", (6, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1, cv2.LINE_8)
    assert plan_cine(moving) is None
    everything = copy.deepcopy(ds)
    everything.set_pixel_data(moving, "MONOCHROME2", 8, generate_instance_uid=False)
    result, after = _redact(everything)
    letters = moving[0] == 255
    assert result.cine_passes == 0 and (after[:, letters] == after.min()).mean() >= 0.95


def test_a_counter_that_changes_every_frame_costs_a_bounded_number_of_comparisons(monkeypatch):
    """A frame counter burned into a long cine changes in every frame: each frame is checked in the counter's
    window (none shows what another showed), and the plan compares each frame with at most :data:`RECENT` checked
    ones, not with every frame before it."""
    n = 400
    frames = np.zeros((n, 96, 160), np.uint8)
    frames[:, 60:90, 20:140] = 90  # static ground under the text
    for k in range(n):
        cv2.putText(frames[k], "DOE 1961", (24, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1, cv2.LINE_8)
        cv2.putText(frames[k], f"{k:04d}", (40, 82), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1, cv2.LINE_8)
    calls = []
    real = cine._same
    monkeypatch.setattr(cine, "_same", lambda a, b: calls.append(1) or real(a, b))
    plan = plan_cine(frames)
    assert plan is not None and len(plan.regions) >= 1
    checked = {k for k, _ in plan.windows} | set(plan.whole)
    assert checked == set(range(n))  # every frame shows a new count: every frame is looked at
    assert len(calls) <= n * RECENT * len(plan.regions)
