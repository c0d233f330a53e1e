"""Fixtures shared by the pixel tests: one EasyOCR reader per session (loading it takes seconds)."""

from __future__ import annotations

import pytest

from deidpipe.pixels.detect import easyocr_reader


@pytest.fixture(scope="session")
def ocr():
    return easyocr_reader()
