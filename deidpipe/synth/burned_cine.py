"""Synthetic ultrasound cines with burned-in text: moving speckle anatomy in a sector, static text (the patient's
name, ID, dates, institution, labels, a dark word over the anatomy) and a clock that changes every few frames.

The clock is PHI-like (a time of day), drawn in the margin beside the sector, and each of its values is its own
ground-truth word with the frames it shows in, so recall can be measured frame by frame. Variants (generated only
where asked: :data:`deidpipe.synth.burned.VARIANTS`, which archives and default sets cycle through, does not name
them, so no existing synth output changes; :func:`generate_cine_set` makes them):

* ``us_cine``: 32 grey 8-bit frames, uncompressed;
* ``us_cine_jpeg``: the same drawn in colour (a tinted sector, yellow text) and written as JPEG baseline YBR, one
  fragment per frame, as echo cines often are (lossy noise on the static text too).

    generate_cine_set(out, count=2)   # one of each, and their burned_key.json
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from deidpipe.synth.burned import (
    FONTS,
    US_MULTIFRAME,
    BurnedFile,
    BurnedKey,
    BurnedPerson,
    BurnedWord,
    _burn,
    _Canvas,
    _header,
    generate_burned_set,
)

CINE_VARIANTS = ("us_cine", "us_cine_jpeg")
CINE_FRAMES = 32
#: The clock's seconds advance every this many frames.
CLOCK_PERIOD = 8
_SIZE = (240, 320)


def echo_frames(gen: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """``n`` frames of a beating "heart" in an ultrasound sector: bright walls that move on a cycle of 16 frames,
    multiplied by speckle (grains wider than tall) that is half persistent (it moves with the tissue) and half new
    in every frame; black
    outside the sector. Values stay below 232, so text drawn at 255 is the brightest thing on screen."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ax, ay = w / 2, 10.0
    r = np.hypot(xx - ax, yy - ay)
    theta = np.arctan2(xx - ax, yy - ay)
    sector = (r > 14) & (r < h - 44) & (np.abs(theta) < np.radians(30))
    blobs = [(gen.uniform(0.35, 0.65) * w, gen.uniform(0.3, 0.7) * h, gen.uniform(0.06, 0.14) * min(h, w),
              gen.uniform(3, 8), gen.uniform(0, 2 * np.pi), gen.uniform(0.4, 0.9)) for _ in range(5)]
    persistent = gen.rayleigh(0.8, (h + 16, w + 16)).astype(np.float32)
    out = np.zeros((n, h, w), np.uint8)
    for k in range(n):
        phase = 2 * np.pi * k / 16
        tissue = np.zeros((h, w), np.float32)
        for cx, cy, s, amp, phi, weight in blobs:
            dx, dy = amp * np.cos(phase + phi), amp * np.sin(phase + phi)
            tissue += weight * np.exp(-((xx - cx - dx) ** 2 + (yy - cy - dy) ** 2) / (2 * s * s))
        tissue = 0.1 + 0.9 * np.clip(tissue, 0, 1)
        shift = int(round(4 * np.sin(phase)))
        speckle = (0.6 * persistent[8 + shift:8 + shift + h, 8:8 + w]
                   + 0.4 * gen.rayleigh(0.8, (h, w)).astype(np.float32))
        speckle = cv2.GaussianBlur(speckle, (7, 3), sigmaX=1.6, sigmaY=0.7) * 1.6  # grains wider than tall
        img = np.clip(tissue * speckle * 95, 0, 231)
        img[~sector] = 0
        out[k] = img.astype(np.uint8)
    return out


def _clock(canvas_shape: tuple[int, int], taken: list[tuple[int, int, int, int]], rng: random.Random,
           n: int) -> tuple[list[np.ndarray], list[BurnedWord]]:
    """The clock's masks (one per value) and words: a time of day in the right margin, the seconds advancing every
    :data:`CLOCK_PERIOD` frames."""
    h, w = canvas_shape
    font = rng.choice((FONTS[0], FONTS[2]))
    hour, minute, second = rng.randint(7, 18), rng.randint(0, 59), rng.randint(0, 50)
    masks, words = [], []
    for v in range((n + CLOCK_PERIOD - 1) // CLOCK_PERIOD):
        mask = np.zeros((h, w), np.uint8)
        canvas = _Canvas(mask, rng)
        canvas.taken = list(taken)
        text = f"{hour:02d}:{minute:02d}:{second + v:02d}"
        if canvas.word(text, "phi", w - 70, h // 2 + 24, font=font, scale=0.45, value=255) < 0:
            raise RuntimeError("the clock does not fit")  # the layout is fixed: never happens
        frames = list(range(v * CLOCK_PERIOD, min((v + 1) * CLOCK_PERIOD, n)))
        word = canvas.words[0]
        word.frames = frames
        masks.append(mask)
        words.append(word)
    return masks, words


def make_cine(variant: str, person: BurnedPerson, rng: random.Random, uid_seed: str,
              n_frames: int = CINE_FRAMES) -> tuple[Dataset, BurnedFile]:
    """One ultrasound cine of ``variant`` (``us_cine`` or ``us_cine_jpeg``) with ``person``'s values in its
    header and pixels."""
    if variant not in CINE_VARIANTS:
        raise ValueError(f"unknown cine variant {variant}")
    gen = np.random.default_rng(rng.getrandbits(32))
    h, w = _SIZE
    frames = echo_frames(gen, n_frames, h, w)
    mask = np.zeros((h, w), np.uint8)
    # the dark word goes where the anatomy is bright in every frame (it moves under the text)
    words = _burn(mask, person, rng, colour=False, value_hi=255, value_lo=1, ground=frames.min(axis=0))
    for wd in words:
        wd.frames = list(range(n_frames))
    taken = [tuple(wd.box) for wd in words]
    clock_masks, clock_words = _clock((h, w), taken, rng, n_frames)  # type: ignore[arg-type]
    for k in range(n_frames):
        frames[k][mask > 0] = mask[mask > 0]
    for cm, word in zip(clock_masks, clock_words, strict=True):
        for k in word.frames:
            frames[k][cm > 0] = cm[cm > 0]
    words += clock_words
    ds = _header(person, US_MULTIFRAME, "US", uid_seed, "Synth US Cine 1")
    ds.CineRate, ds.FrameTime = 30, 33.3
    if variant == "us_cine":
        ds.set_pixel_data(frames, "MONOCHROME2", 8, generate_instance_uid=False)
    else:
        rgb = np.stack([frames, frames * 0.85, frames * 0.7], axis=-1).astype(np.uint8)
        text = np.broadcast_to((mask > 0)[None], frames.shape).copy()
        for cm, word in zip(clock_masks, clock_words, strict=True):
            text[word.frames] |= (cm > 0)[None]
        rgb[text & (frames == 255)] = (255, 255, 0)  # light text in yellow; the banner and dark text stay grey
        _jpeg_frames(ds, rgb)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.preamble = b"\0" * 128
    return ds, BurnedFile("", variant, str(ds.file_meta.TransferSyntaxUID), n_frames, words)


def _jpeg_frames(ds: Dataset, rgb: np.ndarray) -> None:
    """Colour frames written as JPEG baseline (YBR_FULL_422), one fragment per frame."""
    from PIL import Image

    ds.set_pixel_data(rgb, "RGB", 8, generate_instance_uid=False)  # the Image Pixel attributes
    streams = []
    for frame in rgb:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=90, subsampling=1)
        streams.append(buf.getvalue())
    ds.PixelData = encapsulate(streams, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"


def generate_cine_set(out_dir: Path, *, count: int = len(CINE_VARIANTS), seed: int = 0,
                      variants: tuple[str, ...] = CINE_VARIANTS) -> BurnedKey:
    """Write ``count`` cines cycling through ``variants`` and their ``burned_key.json``
    (:func:`deidpipe.synth.burned.generate_burned_set` with the cine maker); return the key."""
    return generate_burned_set(out_dir, count=count, seed=seed, variants=variants, make=make_cine)
