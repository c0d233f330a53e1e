"""Burned-in text: decode any transfer syntax, find text (known regions, the line finder, EasyOCR) with the one
detector ``run`` and ``scan`` share (:func:`detect_text`), black it out in every frame and check again, remove
overlays and icons, write back losslessly. See ``docs/pixels.md``. Names load on first use (PEP 562), so that
importing one module of this package does not import the others (numpy, pydicom's codecs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.lazy import lazy_names

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.pixels.candidates import Box
    from deidpipe.pixels.codecs import Decoded, PixelDecodeError, PixelEncodeError, decode, encode
    from deidpipe.pixels.detect import EasyOcrEngine, OcrEngine, OcrError, Word
    from deidpipe.pixels.find import (
        Detection,
        PixelOptions,
        PixelResult,
        detect_text,
        displayed_frames,
        text_likely,
    )
    from deidpipe.pixels.redact import TextRemainsError, redact_dataset

_WHERE = {
    "Box": ".candidates",
    **dict.fromkeys(("Decoded", "PixelDecodeError", "PixelEncodeError", "decode", "encode"), ".codecs"),
    **dict.fromkeys(("EasyOcrEngine", "OcrEngine", "OcrError", "Word"), ".detect"),
    **dict.fromkeys(("Detection", "PixelOptions", "PixelResult", "detect_text", "displayed_frames", "text_likely"),
                    ".find"),
    **dict.fromkeys(("TextRemainsError", "redact_dataset"), ".redact"),
}

__all__ = [
    "Box", "Decoded", "Detection", "EasyOcrEngine", "OcrEngine", "OcrError", "PixelDecodeError", "PixelEncodeError",
    "PixelOptions", "PixelResult", "TextRemainsError", "Word", "decode", "detect_text", "displayed_frames", "encode",
    "redact_dataset", "text_likely",
]

__getattr__ = lazy_names(__name__, _WHERE)
