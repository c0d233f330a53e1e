"""The OCR backend's start-up (deidpipe.pixels.detect): the CRAFT detector built without random initialisation is
EasyOCR's own, weight for weight and box for box."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from deidpipe.pixels.detect import _detector_file, craft_detector, easyocr_model_dir


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")  # EasyOCR's own
def test_craft_detector_is_easyocrs_own(ocr):
    """Against ``easyocr.detection.get_detector`` (the library's CPU path, random initialisation included): the
    same modules, the same state (every parameter and buffer equal), eval mode, and the same text boxes from the
    session's reader on a rendered line of text."""
    from easyocr.detection import get_detector

    weights = easyocr_model_dir() / _detector_file()
    ours, theirs = craft_detector(weights), get_detector(str(weights), device="cpu", quantize=True)
    assert [type(m) for m in ours.modules()] == [type(m) for m in theirs.modules()]
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not ours.training and not theirs.training
    assert ocr.detector.state_dict().keys() == a.keys()

    image = np.full((64, 320, 3), 255, np.uint8)
    cv2.putText(image, "Okonkwo 1961", (8, 44), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 2)
    found = ocr.detect(image)
    detector, ocr.detector = ocr.detector, theirs
    try:
        assert ocr.detect(image) == found and found[0][0]
    finally:
        ocr.detector = detector
