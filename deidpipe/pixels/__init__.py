"""Burned-in text: decode any transfer syntax, find text (known regions, a cheap screen, EasyOCR), black it out
in every frame, remove overlays and icons, write back losslessly. See ``docs/pixels.md``."""

from deidpipe.pixels.candidates import Box
from deidpipe.pixels.codecs import Decoded, PixelDecodeError, PixelEncodeError, decode, encode
from deidpipe.pixels.detect import EasyOcrEngine, OcrEngine, OcrError, Word
from deidpipe.pixels.redact import PixelOptions, PixelResult, redact_dataset, text_likely

__all__ = [
    "Box", "Decoded", "EasyOcrEngine", "OcrEngine", "OcrError", "PixelDecodeError", "PixelEncodeError",
    "PixelOptions", "PixelResult", "Word", "decode", "encode", "redact_dataset", "text_likely",
]
