"""Pixel stage: burned-in text on synth images, every codec, multi-frame, phi mode, fail closed, pipeline.

One small synth set (7 images) and one session-scoped EasyOCR reader keep this to a couple of minutes on CPU.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from deidpipe.errors import DeidError
from deidpipe.pixels import PixelOptions, decode, redact_dataset
from deidpipe.pixels.detect import easyocr_model_dir
from deidpipe.pixels.phi import PhiTerms, phi_words
from deidpipe.synth.burned import BURNED_KEY_FILE, BurnedKey, generate_burned_set


@pytest.fixture(scope="session")
def burned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BurnedKey]:
    root = tmp_path_factory.mktemp("burned")
    return root, generate_burned_set(root, count=7, seed=3)


@pytest.fixture(scope="session")
def redacted(burned, ocr):
    """(input frames, output dataset, output frames, result, key entry) per file, all-text mode."""
    root, key = burned
    out = {}
    for f in key.files:
        ds = pydicom.dcmread(root / f.path)
        before = decode(ds).frames
        result = redact_dataset(ds, PixelOptions(), source=copy.deepcopy(ds))
        after = decode(ds).frames
        out[f.path] = (before, ds, after, result, f)
    return out


def _blacked(after: np.ndarray, box: list[int]) -> float:
    x0, y0, x1, y1 = box
    reg = after[:, y0:y1, x0:x1]
    fill = 0 if after.ndim == 4 else after.min()
    hit = (reg == fill).all(axis=-1) if after.ndim == 4 else reg == fill
    return float(hit.mean())


def test_weights_are_checked():
    folder = easyocr_model_dir()
    assert (folder / "craft_mlt_25k.pth").is_file() and (folder / "english_g2.pth").is_file()


def test_every_planted_phi_word_is_blacked(redacted):
    missed = []
    total = 0
    for _before, _ds, after, _r, f in redacted.values():
        for w in f.words:
            if w.kind == "phi":
                total += 1
                if _blacked(after, w.box) < 0.95:
                    missed.append((f.variant, len(w.text)))
    assert total >= 30
    assert not missed, missed  # at least 95% of every planted PHI word box's pixels blacked


def test_non_text_pixels_mostly_kept(redacted):
    nontext = changed = 0
    for before, _ds, after, _r, f in redacted.values():
        diff = (after != before).any(axis=-1) if before.ndim == 4 else after != before
        mask = np.ones(before.shape[1:3], bool)
        for w in f.words:
            x0, y0, x1, y1 = w.box
            mask[y0:y1, x0:x1] = False
        nontext += int(np.broadcast_to(mask, diff.shape).sum())
        changed += int((diff & mask).sum())
    assert changed / nontext <= 0.02  # the target (measured about 1% here)


def _norm(text: str) -> str:
    return "".join(c for c in text.upper() if c.isalnum())


def test_ocr_of_output_finds_no_planted_phi(redacted, ocr):
    for _before, _ds, after, _r, f in redacted.values():
        found_words: set[str] = set()
        found = ""
        for k in range(after.shape[0]):
            img = after[k]
            if img.dtype != np.uint8:
                img = ((img.astype(np.float32) - img.min()) * (255.0 / max(float(np.ptp(img)), 1.0))).astype(np.uint8)
            for _, text, _ in ocr.readtext(img):
                found += " " + _norm(text)
                found_words.update(_norm(t) for t in text.split())
        for w in f.words:
            if w.kind != "phi" or not _norm(w.text):
                continue
            word = _norm(w.text)
            readable = word in found if len(word) >= 3 else word in found_words
            assert not readable, (f.variant, "planted PHI readable after redaction")


def test_no_text_image_is_pixel_identical(burned, redacted):
    root, _ = burned
    before, ds, after, result, f = next(v for v in redacted.values() if v[4].variant == "ct_no_text")
    assert not result.changed and np.array_equal(before, after)
    assert ds.PixelData == pydicom.dcmread(root / f.path).PixelData


def test_codecs_lossless_outside_boxes(redacted):
    seen = set()
    for before, ds, after, result, f in redacted.values():
        ts = ds.file_meta.TransferSyntaxUID
        if f.transfer_syntax in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"):
            assert ts == pydicom.uid.RLELossless  # never the original compressed bytes
        assert after.shape == before.shape
        mask = np.ones(before.shape[1:3], bool)
        for b in result.boxes:
            mask[b.y0:b.y1, b.x0:b.x1] = False
        assert np.array_equal(before[:, mask], after[:, mask]), f.variant
        assert str(ds.BurnedInAnnotation) == "NO" or not result.selected
        seen.add(f.variant)
    assert {"sc_rgb_jpeg", "dx_16bit_j2k", "xa_multiframe_rle", "es_rgb_rotated_deflate"} <= seen


def test_multiframe_every_frame(redacted):
    before, ds, after, result, f = next(v for v in redacted.values() if v[4].variant == "xa_multiframe_rle")
    assert after.shape[0] == 4
    for w in f.words:
        if w.kind == "phi":
            for k in range(4):
                assert _blacked(after[k:k + 1], w.box) >= 0.95
    assert result.verified_crops + result.cached_crops >= 0  # later frames reuse verified text
    codes = [i.CodeValue for i in ds.get("DeidentificationMethodCodeSequence", [])]
    assert "113101" in codes


def _redacted_us_grey(burned, options: PixelOptions):
    """The grey ultrasound image of the burned set, redacted with ``options``: its key entry and its frames."""
    root, key = burned
    f = next(f for f in key.files if f.variant == "us_grey")
    ds = pydicom.dcmread(root / f.path)
    redact_dataset(ds, options, source=copy.deepcopy(ds))
    return f, decode(ds).frames


def test_phi_mode_keeps_labels(burned, ocr):
    f, after = _redacted_us_grey(burned, PixelOptions(mode="phi"))
    labels = [w for w in f.words if w.kind == "label" and len(w.text) > 1]
    phi = [w for w in f.words if w.kind == "phi"]
    assert sum(_blacked(after, w.box) >= 0.95 for w in phi) >= len(phi) // 2  # phi-mode recall: see docs
    assert labels and all(_blacked(after, w.box) < 0.5 for w in labels)


def _tiny(img: np.ndarray, modality: str = "US") -> pydicom.Dataset:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = modality, "1.2.840.10008.5.1.4.1.1.6.1", generate_uid()
    ds.set_pixel_data(img, "MONOCHROME2", 8, generate_instance_uid=False)
    return ds


def test_small_images_are_read_unless_uniform(ocr):
    import cv2

    img = np.zeros((20, 60), np.uint8)
    cv2.putText(img, "1234", (2, 15), cv2.FONT_HERSHEY_PLAIN, 0.9, 255, 1)
    ds = _tiny(img)
    result = redact_dataset(ds, PixelOptions(), source=copy.deepcopy(ds))
    assert result.changed and not decode(ds).frames.any()  # every letter pixel blacked
    flat = _tiny(np.full((20, 60), 7, np.uint8))
    result = redact_dataset(flat, PixelOptions(), source=copy.deepcopy(flat))
    assert not result.changed and result.text_boxes == 0


def test_screen_catches_text_in_a_ct_slice(ocr):
    import cv2

    from deidpipe.synth.burned import anatomy

    gen = np.random.default_rng(1)
    img = (anatomy(gen, 256, 256, 1800) - 1024 + gen.normal(0, 8, (256, 256))).astype(np.int16)  # scanner noise
    clean = img.copy()
    cv2.putText(img, "12345678", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 3071, 1)
    for arr, changed in ((clean, False), (img, True)):
        ds = _tiny(np.zeros((2, 2), np.uint8), modality="CT")
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.set_pixel_data(arr, "MONOCHROME2", 16, generate_instance_uid=False)
        result = redact_dataset(ds, PixelOptions(), source=copy.deepcopy(ds))
        assert result.changed is changed and result.selected is changed


def test_palette_text_is_found_through_the_lut(ocr):
    """examples_palette.dcm: a label whose indices differ little but whose LUT colours contrast strongly."""
    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    before = decode(ds).frames
    result = redact_dataset(ds, PixelOptions(selection="all"), source=copy.deepcopy(ds))
    after = decode(ds).frames
    assert str(ds.PhotometricInterpretation) == "PALETTE COLOR" and result.changed
    label = (after != before)[0, 85:100, 125:300]
    assert label.mean() > 0.05  # the "+ Cist Mag 1.06 cm" label's strokes are blacked


def test_phi_words_rules():
    terms = PhiTerms(frozenset({"DOE", "JOHN", "12345678"}))
    assert phi_words("DOE JOHN 1234S678", terms, use_model=False) == [True, True, True]
    assert phi_words("L 5 cm GAIN 50", terms, use_model=False) == [False] * 5
    assert phi_words("DOB 03/04/1961", terms, use_model=False)[1]


def test_big_endian_and_ybr_decode():
    for name in ("MR_small_bigendian.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle_16bit.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        dec = decode(ds)
        assert dec.frames.ndim in (3, 4)


def test_undecodable_is_refused(burned):
    root, key = burned
    f = next(f for f in key.files if f.variant == "dx_16bit_j2k")
    ds = pydicom.dcmread(root / f.path)
    ds.PixelData = ds.PixelData[:200]  # a truncated codestream
    with pytest.raises(DeidError):
        redact_dataset(ds, PixelOptions(), source=ds)


def test_overlay_and_icon_removed(burned):
    root, key = burned
    f = next(f for f in key.files if f.variant == "us_small")
    ds = pydicom.dcmread(root / f.path)
    ds.add_new(0x60000010, "US", 64)
    ds.add_new(0x60003000, "OW", b"\xff" * (64 * 64 // 8))
    icon = pydicom.Dataset()
    icon.Rows = 8
    ds.IconImageSequence = [icon]
    result = redact_dataset(ds, PixelOptions(), source=ds)
    assert result.overlays_removed == 1 and result.icon_removed
    assert 0x60003000 not in ds and "IconImageSequence" not in ds


def test_policy_keys():
    from deidpipe.errors import PolicyError
    from deidpipe.policy import Policy

    p = Policy.from_mapping({"pixels": "all", "pixel_redaction": "phi"})
    assert p.pixels == "all" and p.pixel_redaction == "phi"
    assert Policy.basic().pixels == "auto"
    with pytest.raises(PolicyError):
        Policy.from_mapping({"pixels": "sometimes"})
    assert Policy.basic().pixel_detector == "lines"
    assert Policy.from_mapping({"pixel_detector": "ocr"}).pixel_detector == "ocr"
    with pytest.raises(PolicyError):
        Policy.from_mapping({"pixel_detector": "magic"})


def test_pipeline_runs_pixel_stage(burned, key, tmp_path, ocr):
    import deidpipe
    from deidpipe.policy import Policy

    root, bk = burned
    src = tmp_path / "src"
    src.mkdir()
    for f in bk.files[:2]:
        (src / f.path).write_bytes((root / f.path).read_bytes())
    (src / "broken.dcm").write_bytes((root / bk.files[3].path).read_bytes()[:-3000])
    report = deidpipe.run(src, tmp_path / "out", Policy.basic(), key=key, workers=1)
    assert report is not None
    outs = list((tmp_path / "out").rglob("*.dcm"))
    assert len(outs) == 2
    for p in outs:
        ds = pydicom.dcmread(p)
        assert ds.BurnedInAnnotation == "NO"
        assert "113101" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert (root / BURNED_KEY_FILE).is_file()


def test_lines_find_text_and_not_noise():
    """The classical line finder: a line of light text and a line of dark text are found (with their colour),
    a noisy anatomy-like frame with no text gives no line."""
    import cv2

    from deidpipe.pixels.candidates import StrokeMaps
    from deidpipe.pixels.lines import text_lines
    from deidpipe.synth.burned import anatomy

    gen = np.random.default_rng(5)
    img = anatomy(gen, 200, 300, 160).astype(np.uint8)
    cv2.putText(img, "DOE JANE 1961", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 250, 1, cv2.LINE_8)
    img[120:150, 40:260] = 200
    cv2.putText(img, "ID 0042137", (50, 142), cv2.FONT_HERSHEY_PLAIN, 1.2, 20, 1, cv2.LINE_8)
    found = text_lines(StrokeMaps.of(img))
    horizontal = [ln for ln in found.lines if not ln.vertical]
    assert any(ln.light and ln.box.y0 < 30 < ln.box.y1 and ln.colour >= 240 for ln in horizontal)
    assert any(not ln.light and ln.box.y0 < 140 < ln.box.y1 and ln.colour <= 30 for ln in horizontal)
    noise = (anatomy(gen, 256, 256, 3000) - 1024).astype(np.float32)
    noise8 = ((noise - noise.min()) * 255 / (noise.max() - noise.min())).astype(np.uint8)
    assert not text_lines(StrokeMaps.of(noise8)).lines


def test_ocr_detector_still_finds_the_words(burned, ocr):
    """``detector: ocr`` (every candidate to CRAFT) blacks the planted PHI of a grey ultrasound image too."""
    f, after = _redacted_us_grey(burned, PixelOptions(detector="ocr"))
    assert all(_blacked(after, w.box) >= 0.95 for w in f.words if w.kind == "phi")
