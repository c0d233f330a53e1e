"""deidpipe.pixels.codecs: baseline JPEG decoded by Pillow first gives GDCM's pixels, bit for bit, on every
baseline JPEG file pydicom ships (the reason it may go first: output bytes do not depend on the decoder)."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.pixels import pixel_array
from pydicom.uid import JPEGBaseline8Bit

from deidpipe.pixels.codecs import decode


def _baseline_files() -> list[str]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files("*.dcm"):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - pydicom ships deliberately broken files too
                continue
            if getattr(ds, "file_meta", None) is not None and ds.file_meta.get("TransferSyntaxUID") == JPEGBaseline8Bit:
                out.append(path)
    return sorted(out)


BASELINE = _baseline_files()


def test_there_are_baseline_files_to_compare() -> None:
    assert len(BASELINE) >= 10


@pytest.mark.parametrize("path", BASELINE, ids=lambda p: p.rsplit("/", 1)[-1])
def test_decode_equals_gdcm(path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        reference = np.asarray(pixel_array(ds, raw=False, decoding_plugin="gdcm"))
        frames = decode(ds).frames
    assert np.array_equal(frames.reshape(reference.shape), reference)
