"""Burned-in text: PHI word recall, fraction of non-text pixels blacked, images/s on one synth set.

Tools: deidpipe (pixels auto and all), Presidio's DicomImageRedactorEngine (Tesseract) and pydicom/deid's
coordinate filters (``deid.dicom.pixels``: header-driven regions, no OCR). Same files, same run.

    python benchmarks/pixel_redaction.py [--count 14] [--seed 0] [--ct-slices 300] [--only NAME] [--verbose]
    python benchmarks/pixel_redaction.py --pydicom    # recall on pydicom's bundled images that carry text
    python benchmarks/pixel_redaction.py --cines [--rounds 3]   # cines: first frame alone vs the whole cine
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


def _first_frame(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of ``ds`` with its first frame only (one fragment, or the first frame's bytes), NumberOfFrames 1."""
    from pydicom.encaps import encapsulate, generate_frames

    one = copy.deepcopy(ds)
    n = int(ds.NumberOfFrames)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        one.PixelData = encapsulate([next(generate_frames(ds.PixelData, number_of_frames=n))])
    else:
        one.PixelData = ds.PixelData[:len(ds.PixelData) // n]
    one.NumberOfFrames = 1
    return one


def _cpu(ds: pydicom.Dataset, options: PixelOptions, rounds: int) -> tuple[float, pydicom.Dataset, object]:
    """Median CPU seconds (this process, all threads) of ``redact_dataset`` on copies of ``ds``, the crop cache
    cleared before each round; the last round's output and result."""
    times = []
    for _ in range(rounds):
        _clear_cache()
        out, source = copy.deepcopy(ds), copy.deepcopy(ds)
        t0 = time.process_time()
        result = redact_dataset(out, options, source=source)
        times.append(time.process_time() - t0)
    return sorted(times)[len(times) // 2], out, result


def _codec_cpu(ds: pydicom.Dataset) -> float:
    """CPU seconds to decode every frame and write them back (what any path pays for a cine that has text), or
    NaN where the stage would not write this image."""
    from deidpipe.pixels.codecs import encode

    out = copy.deepcopy(ds)
    t0 = time.process_time()
    try:
        dec = decode(ds)
        encode(out, dec, dec.frames.copy())
    except Exception:  # noqa: BLE001
        return float("nan")
    return time.process_time() - t0


def _at_fill(after: np.ndarray) -> np.ndarray:
    """Pixels at the fill value (black for colour, the minimum for grey) in every frame."""
    if after.ndim == 4:
        return (after == 0).all(axis=(0, 3))
    return (after == after.min()).all(axis=0)


def _blacked_mask(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Pixels changed in any frame (what a path blacked)."""
    diff = after != before
    return diff.any(axis=(0, 3)) if diff.ndim == 4 else diff.any(axis=0)


def _word_recall(key_file, after: np.ndarray, kinds: tuple[str, ...] = ("phi",)) -> float:
    """Share of (planted word, frame it shows in) pairs with at least 95% of the word's box at the fill value."""
    hit = total = 0
    fill = 0 if after.ndim == 4 else after.min()
    for w in key_file.words:
        if w.kind not in kinds:
            continue
        x0, y0, x1, y1 = w.box
        reg = after[w.frames, y0:y1, x0:x1]
        blk = (reg == fill).all(axis=-1) if after.ndim == 4 else reg == fill
        share = blk.mean(axis=(1, 2))
        hit += int((share >= 0.95).sum())
        total += len(w.frames)
    return hit / max(total, 1)


def cine_table(rounds: int = 3, perframe_rounds: int = 1, seed: int = 0) -> None:
    """Cines: CPU seconds of the first frame sent alone and of the whole cine (temporal path, and the per-frame path
    it replaces), in one process with warm models, median of ``rounds``; recall of the temporal path against the
    per-frame path; share of the frame blacked by each. Files: pydicom's bundled multi-frame images of 8 frames
    or more, and the synth ultrasound cines."""
    import os

    from pydicom.data import get_testdata_file

    from deidpipe.pixels.cine import moving_mask, plan_cine
    from deidpipe.pixels.find import displayed_frames
    from deidpipe.synth.burned_cine import generate_cine_set

    easyocr_reader()
    folder = os.path.dirname(get_testdata_file("CT_small.dcm"))
    objects: list[tuple[str, pydicom.Dataset, object]] = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".dcm"):
            continue
        try:
            ds = pydicom.dcmread(os.path.join(folder, name))
            if int(ds.get("NumberOfFrames", 1) or 1) >= 8:
                objects.append((name, ds, None))
        except Exception:  # noqa: BLE001 - files pydicom ships to test its own error paths
            continue
    root = Path(tempfile.mkdtemp(prefix="pixbench-cines-"))
    key = generate_cine_set(root, seed=seed)
    objects += [(f"synth {f.variant}", pydicom.dcmread(root / f.path), f) for f in key.files]
    temporal, perframe = PixelOptions(), PixelOptions(temporal=False)
    print(f"cines: CPU seconds in one process, warm models, median of {rounds} (per-frame path: {perframe_rounds}); "
          "crop cache cleared before every round")
    print("| file | frames | first frame alone | whole cine | ratio | codec: frame / cine | ratio less codec | path "
          "| per-frame path | recall vs per-frame | blacked: temporal / per-frame |")
    for name, ds, key_file in objects:
        before = decode(ds).frames
        frames8 = displayed_frames(ds, decode(ds))
        plan = plan_cine(frames8)
        one = _first_frame(ds)
        _cpu(one, temporal, 1)  # warm: this object's shapes through every library once
        _cpu(ds, temporal, 1)
        first, _, _ = _cpu(one, temporal, rounds)
        whole, out_t, res_t = _cpu(ds, temporal, rounds)
        slow, out_p, res_p = _cpu(ds, perframe, perframe_rounds)
        after_t, after_p = decode(out_t).frames, decode(out_p).frames
        black_t, black_p = _blacked_mask(after_t, before), _blacked_mask(after_p, before)
        if key_file is not None:  # planted words, per frame they show in
            recall = (f"PHI words x frames {_word_recall(key_file, after_t):.3f} (per-frame path "
                      f"{_word_recall(key_file, after_p):.3f})")
        else:  # the per-frame path's boxes on static ground (text: the anatomy moves) are blacked too
            moving = moving_mask(frames8)
            still = [b for b in res_p.boxes if not moving[b.y0:b.y1, b.x0:b.x1].any()]
            filled = _at_fill(after_t)  # blacked, or black already: no text there either way
            shares = [float(filled[b.y0:b.y1, b.x0:b.x1].mean()) for b in still]
            area = sum(b.area for b in still)
            recall = (f"pixels of its {len(still)} boxes on static ground "
                      f"{sum(sh * b.area for sh, b in zip(shares, still, strict=True)) / max(area, 1):.3f} "
                      f"({sum(sh >= 0.95 for sh in shares)} boxes whole)" if still else "no box on static ground")
        codec_one = sorted(_codec_cpu(one) for _ in range(rounds))[rounds // 2]
        codec_all = sorted(_codec_cpu(ds) for _ in range(rounds))[rounds // 2]
        path = "per-frame (fallback)" if plan is None else (
            f"temporal: {res_t.cine_windows} windows, {res_t.cine_whole} whole frames, {res_t.passes} passes")
        written = not (np.isnan(codec_one) or np.isnan(codec_all))
        codec = f"{codec_one:.3f} / {codec_all:.3f} s" if written else "- (not written)"
        less = f"{(whole - codec_all) / max(first - codec_one, 1e-6):.1f}x" if written else "-"
        print(f"| {name} | {before.shape[0]} x {before.shape[1]}x{before.shape[2]} | {first:.3f} s | {whole:.3f} s "
              f"| {whole / first:.1f}x | {codec} | {less} | {path} | {slow:.2f} s "
              f"| {recall} | {black_t.mean():.3f} / {black_p.mean():.3f} |", flush=True)
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=14)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--ct-slices", type=int, default=300, help="CT series for the no-text overhead (0: skip)")
    ap.add_argument("--pydicom", action="store_true", help="only the table of pydicom's bundled images with text")
    ap.add_argument("--cines", action="store_true", help="only the cine table: first frame alone vs whole cine")
    ap.add_argument("--rounds", type=int, default=3, help="--cines: rounds per timing (median)")
    args = ap.parse_args()
    if args.cines:
        cine_table(args.rounds, seed=args.seed)
        return
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
