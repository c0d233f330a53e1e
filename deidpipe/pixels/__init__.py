"""Burned-in text: decode any transfer syntax, find text (known regions, the line finder, EasyOCR) with the one
detector ``run`` and ``scan`` share (:func:`detect_text`), black it out in every frame and check again, remove
overlays and icons, write back losslessly. See ``docs/pixels.md``."""

from deidpipe.pixels.candidates import Box
from deidpipe.pixels.codecs import Decoded, PixelDecodeError, PixelEncodeError, decode, encode
from deidpipe.pixels.detect import EasyOcrEngine, OcrEngine, OcrError, Word
from deidpipe.pixels.find import Detection, PixelOptions, PixelResult, detect_text, displayed_frames, text_likely
from deidpipe.pixels.redact import TextRemainsError, redact_dataset

__all__ = [
    "Box", "Decoded", "Detection", "EasyOcrEngine", "OcrEngine", "OcrError", "PixelDecodeError", "PixelEncodeError",
    "PixelOptions", "PixelResult", "TextRemainsError", "Word", "decode", "detect_text", "displayed_frames", "encode",
    "redact_dataset", "text_likely",
]
