"""``run``'s output passes ``scan``: one detector for both, a solid fill and its edges are never text, and ``run``
checks its blacked frames again (and blacks again) until the detector finds nothing.

Real objects only: synth burned-in images, pydicom's bundled test files, frames drawn in the test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from deidpipe.keys import ProjectKey
from deidpipe.pixels import PixelOptions, TextRemainsError, detect_text, redact_dataset
from deidpipe.pixels.candidates import StrokeMaps
from deidpipe.pixels.fills import without_fills
from deidpipe.pixels.lines import text_lines
from deidpipe.policy import Policy
from deidpipe.synth.burned import anatomy, generate_burned_set

KEY = ProjectKey(b"scan-after-run-key-0123456789abcdef")
#: pydicom's bundled images with burned-in text (and one without), each with its own SOP Instance UID.
PYDICOM_IMAGES = ("GDCMJ2K_TextGBR.dcm", "examples_rgb_color.dcm", "examples_palette.dcm", "SC_rgb_rle.dcm")


def _texts(img8: np.ndarray) -> list:
    """What the default detector takes as text in one frame (lines of letters), and what it would ask OCR about
    (two-letter chains)."""
    found = text_lines(StrokeMaps.of(img8))
    return found.text_boxes() + found.unsure


@pytest.fixture(scope="module")
def ground() -> np.ndarray:
    return anatomy(np.random.default_rng(11), 200, 300, 180).astype(np.uint8)


@pytest.mark.parametrize("where", ["flat", "anatomy", "thin", "strip", "colour"])
def test_a_black_fill_is_never_text(ground, where):
    """Black boxes (as ``run`` leaves them) on flat grey, over anatomy, thinner than a top-hat kernel, two of
    them with a thin strip of anatomy between, on a colour frame: no text box."""
    img = np.full_like(ground, 120) if where == "flat" else ground.copy()
    if where == "thin":
        img[60:68, 20:260] = 0  # thinner than the 15-pixel kernel: the whole box would be one dark stroke
        img[90:99, 40:52] = 0
        img[90:99, 60:72] = 0
        img[90:99, 80:92] = 0  # a row of small boxes a letter apart, like blacked words
    elif where == "strip":
        img[40:70, 10:290] = 0
        img[76:120, 0:300] = 0  # 6 rows of anatomy between two boxes
    else:
        img[50:80, 30:200] = 0
        img[100:112, 60:140] = 0
    if where == "colour":
        img = np.stack([img, (img * 0.8).astype(np.uint8), (img * 0.6).astype(np.uint8)], axis=-1)
    assert _texts(img) == []


def test_without_fills_mirrors_a_box_away(ground):
    """A box on anatomy without black pixels of its own is replaced by the mirror image of its surroundings
    (16 pixels deep from every side: a 30-pixel box disappears); a black ground around letters is left alone."""
    img = np.clip(ground.astype(np.int16) + 30, 0, 255).astype(np.uint8)
    img[50:80, 30:200] = 0
    out = without_fills(img)
    assert out.min() > 0 and np.array_equal(out[:50], img[:50]) and np.array_equal(out[80:], img[80:])
    assert np.array_equal(out[55, 40:190], img[44, 40:190])  # row 55 mirrors row 44 across the top edge
    letters = np.zeros((60, 200), np.uint8)
    cv2.putText(letters, "DOE JANE 1961", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 250, 2, cv2.LINE_8)
    assert np.array_equal(without_fills(letters), letters)


def test_text_beside_a_fill_is_still_text(ground):
    """A word next to a black box, and the lower half of a word the box cut, are still found."""
    img = ground.copy()
    img[40:70, 20:200] = 0
    cv2.putText(img, "DOE JANE 1961", (20, 95), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 250, 1, cv2.LINE_8)
    cv2.putText(img, "KOWALSKI 0042", (30, 150), cv2.FONT_HERSHEY_DUPLEX, 0.9, 250, 2, cv2.LINE_8)
    img[120:141, 20:260] = 0  # the top of the second line is blacked; its lower half stands out below the box
    boxes = _texts(img)
    assert any(b.y0 <= 90 and b.y1 >= 85 for b in boxes)
    assert any(b.y0 <= 145 and b.y1 >= 143 for b in boxes)


def _two_texts() -> pydicom.Dataset:
    """A 12-bit secondary capture: a bright name on a dark ground, and a faint ID that the display stretch hides
    (25 of 255) while the bright text sets the top of the range; once that is blacked, the stretch shows it (85)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    img = np.full((160, 256), 800, np.uint16)
    img[:, :16] = 0  # a black margin, as many devices leave
    cv2.putText(img, "DOE JOHN", (30, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 4095, 1, cv2.LINE_8)
    cv2.putText(img, "ID 4711 0815", (30, 110), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1200, 1, cv2.LINE_8)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.set_pixel_data(img, "MONOCHROME2", 12, generate_instance_uid=False)
    return ds


def test_text_left_after_one_round_is_blacked_again():
    """What the first round leaves (text the display stretch showed only once the brightest text was blacked)
    is found by the re-check and blacked too; the detector then finds nothing in the result."""
    ds = _two_texts()
    result = redact_dataset(ds, PixelOptions(), source=_two_texts())
    assert result.changed and result.passes == 3  # found, blacked, found again, blacked again, checked: clean
    assert any(b.y0 <= 100 and b.y1 >= 105 for b in result.boxes)  # the faint ID
    assert detect_text(ds, PixelOptions()).text == []


def test_text_still_found_after_the_last_round_is_refused(monkeypatch):
    from deidpipe.pixels import redact

    monkeypatch.setattr(redact, "MAX_REDACTIONS", 1)
    with pytest.raises(TextRemainsError):
        redact_dataset(_two_texts(), PixelOptions())


@pytest.fixture(scope="module")
def gbr() -> Path:
    return Path(get_testdata_file("GDCMJ2K_TextGBR.dcm"))


def test_scan_uses_the_pixel_stage_detector(gbr):
    """The scan's pixel findings are the text boxes of ``detect_text`` (known regions left out), and scanning
    changes nothing in the object."""
    from deidpipe.scan.pixels import pixel_findings

    ds = pydicom.dcmread(gbr)
    before = ds.PixelData
    found = detect_text(ds, PixelOptions())
    findings = pixel_findings(ds, "x.dcm", [])
    assert [f.location for f in findings] == [f"pixels:frame 0 box {b.x0},{b.y0},{b.width},{b.height}"
                                              for b in found.text]
    assert findings and ds.PixelData == before


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synth burned-in images (every variant once) and a few of pydicom's images, in one folder."""
    root = tmp_path_factory.mktemp("after-run") / "src"
    generate_burned_set(root / "synth", count=7, seed=9)
    (root / "synth" / "burned_key.json").unlink()
    (root / "pydicom").mkdir()
    for name in PYDICOM_IMAGES:
        shutil.copy(get_testdata_file(name), root / "pydicom" / name)
    return root


def test_scan_after_run_reports_nothing_high(archive, tmp_path):
    """``run`` (default policy) then ``scan``: no high finding, exit 0. Before one detector and the fill rule the
    scan reported the edges of ``run``'s boxes on examples_rgb_color and pieces of letters on GDCMJ2K_TextGBR."""
    from deidpipe.pipeline.runner import run
    from deidpipe.scan import scan

    # (that the scan finds the text on such inputs: tests/scan/test_scan.py::test_every_burned_in_text_box_is_found)
    report = run(archive, tmp_path / "out", Policy.basic(), key=KEY, workers=1)
    assert report.processed == len(PYDICOM_IMAGES) + 7 and not report.quarantined
    after = scan(tmp_path / "out", faces=False, workers=1)
    assert after.objects == report.processed and after.errors == 0
    high = [(f.path, f.rule, f.location) for f in after.findings if f.severity == "high"]
    assert not high
    assert after.exit_code("high") == 0
