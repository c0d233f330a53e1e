"""Burned-in text: PHI word recall, fraction of non-text pixels blacked, images/s on one synth set.

Tools: deidpipe (pixels auto and all), Presidio's DicomImageRedactorEngine (Tesseract) and pydicom/deid's
coordinate filters (``deid.dicom.pixels``: header-driven regions, no OCR). Same files, same run.

    python benchmarks/pixel_redaction.py [--count 14] [--seed 0] [--ct-slices 300] [--only NAME] [--verbose]
    python benchmarks/pixel_redaction.py --pydicom    # recall on pydicom's bundled images that carry text
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from deidpipe.pixels import PixelOptions, decode, redact_dataset
from deidpipe.pixels.detect import easyocr_reader
from deidpipe.synth.burned import BurnedKey, generate_burned_set


def _deidpipe(selection: str, detector: str = "lines") -> Callable[[pydicom.Dataset], pydicom.Dataset]:
    from deidpipe.pixels.find import _CROP_CACHE

    _CROP_CACHE.clear()  # no tool sees answers another run computed on the same files

    def run(ds: pydicom.Dataset) -> pydicom.Dataset:
        redact_dataset(ds, PixelOptions(selection=selection, detector=detector), source=copy.deepcopy(ds))
        return ds
    return run


def _presidio() -> Callable[[pydicom.Dataset], pydicom.Dataset]:
    """Presidio's DICOM redactor with Tesseract, its analyzer on the installed spaCy model (no download)."""
    import logging

    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_image_redactor import DicomImageRedactorEngine, ImageAnalyzerEngine

    from deidpipe.header.text import SPACY_MODEL

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    logging.getLogger("presidio-image-redactor").setLevel(logging.ERROR)
    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]})
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    engine = DicomImageRedactorEngine(image_analyzer_engine=ImageAnalyzerEngine(analyzer_engine=analyzer))

    def run(ds: pydicom.Dataset) -> pydicom.Dataset:
        return engine.redact(ds, fill="contrast", padding_width=2, use_metadata=True)
    return run


def _deid() -> Callable[[pydicom.Dataset], pydicom.Dataset]:
    from deid.dicom.pixels import DicomCleaner

    def run(ds: pydicom.Dataset) -> pydicom.Dataset:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "in.dcm"
            ds.save_as(path)
            cleaner = DicomCleaner(output_folder=tmp, deid="dicom")
            cleaner.detect(str(path))
            if cleaner.results and cleaner.results.get("flagged"):
                cleaner.clean()
                arr = cleaner.cleaned
                out = pydicom.dcmread(path)
                out.set_pixel_data(np.asarray(arr).astype(decode(out).frames.dtype).reshape(
                    decode(out).frames.shape[1:] if decode(out).n_frames == 1 else decode(out).frames.shape),
                    "RGB" if np.asarray(arr).ndim == 3 and np.asarray(arr).shape[-1] == 3 else "MONOCHROME2",
                    int(out.BitsStored), generate_instance_uid=False)
                return out
            return ds
    return run


def _clear_cache() -> None:
    from deidpipe.pixels.find import _CROP_CACHE

    _CROP_CACHE.clear()


def warm_up(root: Path, key: BurnedKey, fn: Callable[[pydicom.Dataset], pydicom.Dataset]) -> None:
    """Run a tool once over a separate set (models loaded, caches of libraries filled), untimed."""
    for f in key.files:
        try:
            fn(pydicom.dcmread(root / f.path))
        except Exception:  # noqa: BLE001
            pass
    _clear_cache()


def measure(root: Path, key: BurnedKey, fn: Callable[[pydicom.Dataset], pydicom.Dataset],
            verbose: bool = False) -> tuple[float, float, float]:
    """PHI word recall (>= 95% of a word box's pixels changed or at the fill value in every frame), fraction
    of non-text pixels changed, images per second."""
    hit = total = 0
    nontext = changed = 0
    elapsed = 0.0
    for f in key.files:
        ds = pydicom.dcmread(root / f.path)
        before = decode(ds).frames
        t0 = time.perf_counter()
        try:
            out = fn(ds)
            after = decode(out).frames
        except Exception:  # noqa: BLE001 - a tool that fails on a file redacts nothing there
            after = before
        elapsed += time.perf_counter() - t0
        if after.shape != before.shape:
            after = after.reshape(before.shape) if after.size == before.size else before
        diff = (after != before).any(axis=-1) if before.ndim == 4 else after != before
        mask = np.zeros(before.shape[1:3], bool)
        for w in f.words:
            x0, y0, x1, y1 = w.box
            mask[y0:y1, x0:x1] = True
            if w.kind == "phi":
                total += 1
                fill = 0 if after.ndim == 4 else after.min()
                reg = after[:, y0:y1, x0:x1]
                blk = (reg == fill).all(axis=-1) if after.ndim == 4 else reg == fill
                ok = bool((diff[:, y0:y1, x0:x1] | blk).mean(axis=(1, 2)).min() >= 0.95)
                hit += ok
                if verbose and not ok:
                    print(f"   missed in {f.variant}: {len(w.text)} chars, box {w.box}")
        nt = np.broadcast_to(~mask, diff.shape)
        f_nt, f_ch = int(nt.sum()), int((diff & nt).sum())
        if verbose:
            print(f"   {f.variant:24s} non-text blacked {f_ch / max(f_nt, 1):.4f}")
        nontext += f_nt
        changed += f_ch
    return hit / max(total, 1), changed / max(nontext, 1), len(key.files) / elapsed


def ct_series(out: Path, n: int = 300, size: int = 512) -> None:
    """A CT series of ``n`` slices with no text: the header a scanner writes (no BurnedInAnnotation)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from deidpipe.synth.burned import anatomy

    out.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(0)
    base = anatomy(gen, size, size, 2400) - 1024
    study, series = generate_uid(), generate_uid()
    for i in range(n):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "CTSERIES^TEST", "CT0001", "19600101"
        ds.StudyDate, ds.Modality, ds.Manufacturer = "20240101", "CT", "SYNTHETIC MEDICAL"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber, ds.SliceLocation = i + 1, float(i)
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(i)], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        img = (np.roll(base, i % 17, axis=0) + gen.normal(0, 8, base.shape)).astype(np.int16)
        ds.set_pixel_data(img, "MONOCHROME2", 16, generate_instance_uid=False)
        ds.preamble = b"\0" * 128
        ds.save_as(out / f"ct{i:04d}.dcm", enforce_file_format=True)


def ct_overhead(n: int = 300, workers: int = 1, repeats: int = 9) -> tuple[float, float, float]:
    """Seconds for ``deidpipe.run`` on an ``n``-slice CT series with no text, pixels off and pixels auto (best of
    ``repeats``, alternating; every run starts with the previous one's output deleted and flushed, since write-back
    noise on this machine is larger than the stage), and the stage's own mean milliseconds per slice from the
    audit's timings."""
    import polars as pl

    import deidpipe
    from deidpipe.keys import ProjectKey
    from deidpipe.pipeline.state import default_state_dir
    from deidpipe.policy import Policy

    root = Path(tempfile.mkdtemp(prefix="pixbench-ct-"))
    ct_series(root / "src", n)
    key = ProjectKey(b"benchmark-key-0123456789abcdef")
    best = {"off": float("inf"), "auto": float("inf")}
    stage_ms: list[float] = []
    for _ in range(repeats):
        for mode in ("off", "auto"):
            out = root / f"out-{mode}"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(default_state_dir(out), ignore_errors=True)  # the run's state, beside DST
            os.sync()
            t0 = time.perf_counter()
            report = deidpipe.run(root / "src", out, Policy.from_mapping({"pixels": mode}), key=key,
                                  workers=workers)
            best[mode] = min(best[mode], time.perf_counter() - t0)
            if mode == "auto":
                timings = pl.read_parquet(report.audit)["timings_ms"].str.json_decode().struct.unnest()
                stage_ms.append(float(timings["pixel_text"].mean()))
    shutil.rmtree(root, ignore_errors=True)
    return best["off"], best["auto"], sorted(stage_ms)[len(stage_ms) // 2]


def _norm(text: str) -> str:
    return "".join(c for c in text.upper() if c.isalnum())


def pydicom_bundled() -> None:
    """pydicom's bundled test images that carry text EasyOCR can read (first frame): how many of those words it
    can still read after deidpipe (``pixels: all``). Prints one table row per file, never the words."""
    import os

    from pydicom.data import get_testdata_file

    from deidpipe.pixels.candidates import to_uint8
    from deidpipe.pixels.find import displayed_frames

    ocr = easyocr_reader()

    def read(ds: pydicom.Dataset) -> list[str]:
        frame = displayed_frames(ds, decode(ds))[0]  # palette images through their LUT, as a viewer shows them
        img = frame if frame.dtype == np.uint8 else to_uint8(frame)
        return [_norm(t) for _, t, c in ocr.readtext(img) if c >= 0.3 and len(_norm(t)) >= 2]

    folder = os.path.dirname(get_testdata_file("CT_small.dcm"))
    print("| file | frames | words read in input | no longer readable | recall | time |")
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".dcm")):
        path = os.path.join(folder, name)
        if os.path.getsize(path) > 4_000_000:
            continue
        try:
            ds = pydicom.dcmread(path)
            before = decode(ds).frames
            words = read(ds) if min(before.shape[1:3]) >= 8 else []
        except Exception:  # noqa: BLE001 - files pydicom ships to test its own error paths
            continue
        if not words:
            continue
        t0 = time.perf_counter()
        try:
            redact_dataset(ds, PixelOptions(selection="all"), source=copy.deepcopy(ds))
            decode(ds)  # the output decodes
        except Exception as exc:  # noqa: BLE001
            print(f"| {name} | {'x'.join(map(str, before.shape))} | {len(words)} | refused ({type(exc).__name__}) |")
            continue
        elapsed = time.perf_counter() - t0
        out = " ".join(read(ds))
        gone = sum(1 for w in words if w not in out)
        print(f"| {name} | {'x'.join(map(str, before.shape))} | {len(words)} | {gone} | {gone / len(words):.2f} "
              f"| {elapsed:.1f} s |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=14)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--ct-slices", type=int, default=300, help="CT series for the no-text overhead (0: skip)")
    ap.add_argument("--pydicom", action="store_true", help="only the table of pydicom's bundled images with text")
    args = ap.parse_args()
    if args.pydicom:
        pydicom_bundled()
        return
    if args.ct_slices:
        off, auto, stage = ct_overhead(args.ct_slices)
        print(f"{args.ct_slices}-slice CT series, no text, deidpipe.run (1 worker, best of 9): header only "
              f"{off:.2f} s ({1000 * off / args.ct_slices:.1f} ms/slice), pixels auto {auto:.2f} s: overhead "
              f"{100 * (auto - off) / off:+.1f}%; the stage itself {stage:.2f} ms/slice "
              f"({100 * stage * args.ct_slices / 1000 / off:.1f}% of the header-only run)", flush=True)
        if args.only == "ct":
            return
    root = Path(tempfile.mkdtemp(prefix="pixbench-"))
    key = generate_burned_set(root, count=args.count, seed=args.seed)
    warm_root = Path(tempfile.mkdtemp(prefix="pixbench-warm-"))
    warm_key = generate_burned_set(warm_root, count=7, seed=args.seed + 1000)
    easyocr_reader()  # load once, outside the timings
    tools = {"deidpipe (auto)": lambda: _deidpipe("auto"), "deidpipe (all)": lambda: _deidpipe("all"),
             "deidpipe (all, detector ocr)": lambda: _deidpipe("all", "ocr"),
             "presidio DicomImageRedactorEngine": _presidio, "deid coordinate filters": _deid}
    print(f"{len(key.files)} synth images with burned-in text ({root}); every tool warmed up on 7 other images")
    print(f"{'tool':38s} {'PHI recall':>10s} {'non-text blacked':>17s} {'images/s':>9s}")
    for name, make in tools.items():
        if args.only and args.only not in name:
            continue
        try:
            fn = make()
            warm_up(warm_root, warm_key, fn)
            recall, frac, ips = measure(root, key, fn, args.verbose)
            print(f"{name:38s} {recall:10.3f} {frac:17.4f} {ips:9.2f}", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"{name:38s} failed: {type(exc).__name__}: {exc}"[:200], flush=True)


if __name__ == "__main__":
    main()
