"""Synthetic images with burned-in text and a ground-truth key of word boxes.

``generate_burned_set(out_dir)`` writes images whose pixels carry a patient's name, ID, birth and study dates
and institution (the same values as the object's header) next to harmless labels (orientation markers, scale
and device labels), in several Hershey fonts, sizes and contrasts, at corners, in bars and over the "anatomy";
grey and RGB, single and multi-frame, uncompressed, RLE, JPEG baseline (YBR), JPEG 2000 lossless and deflate.
``burned_key.json`` lists, per file, every word's text, kind (``phi`` or ``label``), box and frames.
``generate_archive(..., burned_text=True)`` adds such images for every synthetic patient. Ultrasound cines (32
frames, a clock that changes every few frames) are made only where asked: :mod:`deidpipe.synth.burned_cine`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

BURNED_KEY_FILE = "burned_key.json"
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
         cv2.FONT_HERSHEY_TRIPLEX)
LABELS = ("L", "R", "5 cm", "GAIN 50", "ABDOMEN", "FREQ 3.5MHz", "DEPTH 12cm", "LAT")
_FIRST = ("JOHN", "MARIA", "AHMED", "CHEN", "OLGA", "PIERRE", "AMARA", "KENJI")
_LAST = ("DOE", "KOWALSKI", "HASSAN", "LINDQVIST", "OKAFOR", "BERNARD", "TANAKA", "MORENO")
_SITES = ("ST MARY HOSPITAL", "NORTHGATE CLINIC", "RIVERSIDE MEDICAL", "WESTFIELD IMAGING")
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
XA_IMAGE = "1.2.840.10008.5.1.4.1.1.12.1"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ES_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.1"


@dataclass
class BurnedWord:
    """One planted word: its text, ``phi`` or ``label``, box [x0, y0, x1, y1) and the frames it is in."""

    text: str
    kind: str
    box: list[int]
    frames: list[int]


@dataclass
class BurnedFile:
    path: str
    variant: str
    transfer_syntax: str
    frames: int
    words: list[BurnedWord] = field(default_factory=list)


@dataclass
class BurnedPerson:
    """The identifying values written into both the header and the pixels."""

    name: str  # DICOM PN, FAMILY^GIVEN
    patient_id: str
    birth_date: str  # YYYYMMDD
    study_date: str
    institution: str

    @classmethod
    def random(cls, rng: random.Random) -> BurnedPerson:
        birth = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randint(0, 60 * 365))
        study = dt.date(2016, 1, 1) + dt.timedelta(days=rng.randint(0, 8 * 365))
        return cls(f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}", f"{rng.randint(10_000_000, 99_999_999)}",
                   birth.strftime("%Y%m%d"), study.strftime("%Y%m%d"), rng.choice(_SITES))

    def phi_strings(self, rng: random.Random) -> list[str]:
        """The words of a typical banner, dates in one of several formats."""
        fmt = rng.choice(["%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d-%b-%Y", "%Y%m%d"])
        birth = dt.datetime.strptime(self.birth_date, "%Y%m%d").strftime(fmt).upper()
        study = dt.datetime.strptime(self.study_date, "%Y%m%d").strftime(fmt).upper()
        family, given = self.name.split("^")
        return [family, given, self.patient_id, birth, study, *self.institution.split()[:2]]


@dataclass
class BurnedKey:
    seed: int
    files: list[BurnedFile] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> BurnedKey:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        files = [BurnedFile(**{**f, "words": [BurnedWord(**w) for w in f["words"]]}) for f in data["files"]]
        return cls(data["seed"], files)


def anatomy(rng: np.random.Generator, h: int, w: int, peak: float) -> np.ndarray:
    """A smooth blobby background with noise, in [0, peak]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w), np.float32)
    for _ in range(4):
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        s = rng.uniform(0.1, 0.3) * min(h, w)
        img += rng.uniform(0.3, 0.7) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    img = np.clip(img, 0, 1) * 0.8 + rng.normal(0, 0.03, (h, w)).astype(np.float32)
    return (np.clip(img, 0, 1) * peak).astype(np.float32)


class _Canvas:
    """Draws words one at a time and records the box of the pixels each one set."""

    def __init__(self, img: np.ndarray, rng: random.Random) -> None:
        self.img, self.rng = img, rng
        self.words: list[BurnedWord] = []
        self.taken: list[tuple[int, int, int, int]] = []

    def word(self, text: str, kind: str, x: int, y: int, *, font: int, scale: float, value: object,
             thickness: int = 1, rotate: bool = False) -> int:
        """Draw ``text`` with its baseline at (x, y); return the x after it (or -1 if it did not fit)."""
        (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
        h, w = self.img.shape[:2]
        mask = np.zeros((th + base + 4, tw + 4), np.uint8)
        cv2.putText(mask, text, (2, th + 2), font, scale, 255, thickness, cv2.LINE_8)
        if rotate:
            mask = np.ascontiguousarray(np.rot90(mask))
            x0, y0 = x, y - mask.shape[0]
        else:
            x0, y0 = x - 2, y - th - 2
        mh, mw = mask.shape
        if x0 < 0 or y0 < 0 or x0 + mw > w or y0 + mh > h:
            return -1
        ys, xs = np.nonzero(mask)
        box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        if any(box[0] < t[2] + 2 and t[0] < box[2] + 2 and box[1] < t[3] + 2 and t[1] < box[3] + 2
               for t in self.taken):
            return -1
        region = self.img[y0:y0 + mh, x0:x0 + mw]
        region[mask > 0] = value
        self.taken.append(box)
        self.words.append(BurnedWord(text, kind, list(box), []))
        return box[2]

    def line(self, words: list[tuple[str, str]], x: int, y: int, **kw: object) -> None:
        for text, kind in words:
            nx = self.word(text, kind, x, y, **kw)  # type: ignore[arg-type]
            if nx < 0:
                continue
            x = nx + int(8 * float(kw.get("scale", 0.5)) + 4)  # type: ignore[arg-type]


def _burn(img: np.ndarray, person: BurnedPerson, rng: random.Random, *, colour: bool, value_hi: float,
          value_lo: float, small: bool = False, rotate: bool = False,
          ground: np.ndarray | None = None) -> list[BurnedWord]:
    """Draw ``person``'s values and some labels into ``img``; ``ground`` is what the text will be shown over
    when that is not ``img`` itself (a mask later copied onto moving frames)."""
    h, w = img.shape[:2]
    canvas = _Canvas(img, rng)
    phi = person.phi_strings(rng)
    font = rng.choice(FONTS)
    scale = 0.35 if small else rng.choice([0.4, 0.5, 0.6])
    bright = (255, 255, 0) if colour else value_hi
    if colour:
        bright = rng.choice([(255, 255, 0), (0, 255, 255), (255, 255, 255), (255, 80, 80)])
    kw = {"font": font, "scale": scale, "value": bright}
    top = int(22 * scale / 0.5) + 2
    if small:
        canvas.line([(phi[2], "phi")], 2, top, **kw)
        canvas.word(rng.choice(["L", "R"]), "label", w - 12, h - 4, font=font, scale=scale, value=bright)
        return canvas.words
    # banner: name, ID on top; dates and institution at the bottom; labels at the sides and over anatomy
    img[: top + 5] = 0 if colour else value_lo
    canvas.line([(phi[0], "phi"), (phi[1], "phi"), (phi[2], "phi")], 4, top, **kw)
    canvas.line([(phi[3], "phi"), (phi[4], "phi")], 4, h - 14, **kw)
    canvas.line([(phi[5], "phi"), (phi[6], "phi")], max(4, w // 2), h - 18 - int(26 * scale / 0.5), **kw)
    dark = (20, 20, 20) if colour else value_lo + 0.1 * (value_hi - value_lo)
    # dark text over anatomy, on the row near the middle where the anatomy is brightest (legible: a real device
    # draws its text where it can be read, and a word on a background as dark as itself tests nothing)
    over_font = rng.choice(FONTS)
    (tw, th), _ = cv2.getTextSize(phi[2], over_font, scale, 1)
    shown = img if ground is None else ground
    grey = shown if shown.ndim == 2 else shown.mean(axis=-1)
    spots = [(x, h // 2 + d) for x in (w // 4, w // 3, w // 5) for d in (0, -12, 12, -24, 24)]
    def ground_at(p: tuple[int, int]) -> float:
        return float(np.percentile(grey[max(p[1] - th, 0):p[1], p[0]:p[0] + tw], 10))

    x_over, y_over = max(spots, key=ground_at)
    dark_level = float(np.mean(dark)) if colour else float(dark)
    if ground_at((x_over, y_over)) < dark_level + 0.25 * (value_hi - value_lo):
        dark = bright  # no ground bright enough for dark text here: a device would draw it light
    canvas.line([(phi[2], "phi")], x_over, y_over, font=over_font, scale=scale, value=dark)
    canvas.word(rng.choice(["L", "R"]), "label", w - 16, top + 24, font=font, scale=scale, value=bright)
    canvas.line([(t, "label") for t in rng.choice(LABELS[2:]).split()], w // 2, h // 3, **kw)
    if rotate:
        canvas.word(person.name.split("^")[0], "phi", w - 34, h - 40, font=font, scale=scale, value=bright,
                    rotate=True)
    return canvas.words


def _header(person: BurnedPerson, sop_class: str, modality: str, uid_seed: str, manufacturer_model: str
            ) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["burned", uid_seed])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["burned-study", person.patient_id])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["burned-series", person.patient_id, modality])
    ds.PatientName = person.name
    ds.PatientID = person.patient_id
    ds.PatientBirthDate = person.birth_date
    ds.StudyDate = person.study_date
    ds.InstitutionName = person.institution
    ds.Modality = modality
    ds.Manufacturer = "SYNTHETIC MEDICAL"
    ds.ManufacturerModelName = manufacturer_model
    ds.BurnedInAnnotation = "YES"
    ds.InstanceNumber = 1
    ds.file_meta = FileMetaDataset()  # written uncompressed; a variant may compress it afterwards
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _pixels(ds: Dataset, arr: np.ndarray, photometric: str, bits: int, signed: bool = False) -> None:
    ds.SamplesPerPixel = 3 if arr.ndim == (4 if arr.shape[0] > 1 and arr.ndim == 4 else 3) and arr.shape[-1] == 3 \
        else 1
    ds.set_pixel_data(arr, photometric, bits, generate_instance_uid=False)
    if signed:
        ds.PixelRepresentation = 1


def _jpeg_baseline(ds: Dataset, arr: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, subsampling=2 if arr.ndim == 3 else 0)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    if arr.ndim == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"


VARIANTS = ("us_grey", "sc_rgb_jpeg", "xa_multiframe_rle", "dx_16bit_j2k", "us_small", "es_rgb_rotated_deflate",
            "ct_no_text")


def make_image(variant: str, person: BurnedPerson, rng: random.Random, uid_seed: str) -> tuple[Dataset, BurnedFile]:
    """One image of ``variant`` with ``person``'s values in its header and pixels."""
    gen = np.random.default_rng(rng.getrandbits(32))
    words: list[BurnedWord] = []
    n_frames = 1
    if variant == "us_grey":
        ds = _header(person, US_IMAGE, "US", uid_seed, "Synth US 1")
        img = anatomy(gen, 240, 320, 180).astype(np.uint8)
        words = _burn(img, person, rng, colour=False, value_hi=rng.choice([255, 220]), value_lo=0)
        ds.set_pixel_data(img, "MONOCHROME2", 8, generate_instance_uid=False)
    elif variant == "sc_rgb_jpeg":
        ds = _header(person, SC_IMAGE, "OT", uid_seed, "Synth SC 2")
        grey = anatomy(gen, 240, 320, 200)
        img = np.stack([grey, grey * 0.8, grey * 0.6], axis=-1).astype(np.uint8)
        words = _burn(img, person, rng, colour=True, value_hi=255, value_lo=0)
        ds.set_pixel_data(img, "RGB", 8, generate_instance_uid=False)
        _jpeg_baseline(ds, img)
    elif variant == "xa_multiframe_rle":
        n_frames = 4
        ds = _header(person, XA_IMAGE, "XA", uid_seed, "Synth XA 1")
        base = anatomy(gen, 192, 256, 160)
        frames = np.stack([np.roll(base, 6 * k, axis=1) for k in range(n_frames)]).astype(np.uint8)
        mask_img = np.zeros((192, 256), np.uint8)
        # the dark word goes where the anatomy is bright in every frame (it moves under the text)
        words = _burn(mask_img, person, rng, colour=False, value_hi=255, value_lo=1, ground=frames.min(axis=0))
        for k in range(n_frames):
            frames[k][mask_img > 0] = mask_img[mask_img > 0]
        ds.set_pixel_data(frames, "MONOCHROME2", 8, generate_instance_uid=False)
        ds.compress(RLELossless, generate_instance_uid=False)
    elif variant == "dx_16bit_j2k":
        ds = _header(person, DX_IMAGE, "DX", uid_seed, "Synth DX 1")
        img = (anatomy(gen, 320, 320, 3000) + 200).astype(np.uint16)
        words = _burn(img, person, rng, colour=False, value_hi=4095, value_lo=100)
        ds.set_pixel_data(img, "MONOCHROME2", 12, generate_instance_uid=False)
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    elif variant == "us_small":
        ds = _header(person, US_IMAGE, "US", uid_seed, "Synth US 1")
        img = anatomy(gen, 64, 64, 150).astype(np.uint8)
        words = _burn(img, person, rng, colour=False, value_hi=255, value_lo=0, small=True)
        ds.set_pixel_data(img, "MONOCHROME2", 8, generate_instance_uid=False)
    elif variant == "es_rgb_rotated_deflate":
        ds = _header(person, ES_IMAGE, "ES", uid_seed, "Synth ES 1")
        grey = anatomy(gen, 256, 256, 220)
        img = np.stack([grey, grey * 0.5, grey * 0.4], axis=-1).astype(np.uint8)
        words = _burn(img, person, rng, colour=True, value_hi=255, value_lo=0, rotate=True)
        ds.set_pixel_data(img, "RGB", 8, generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    elif variant == "ct_no_text":
        ds = _header(person, CT_IMAGE, "CT", uid_seed, "Synth CT 1")
        ds.BurnedInAnnotation = "NO"
        img = (anatomy(gen, 128, 128, 2000) - 1024).astype(np.int16)
        ds.set_pixel_data(img, "MONOCHROME2", 16, generate_instance_uid=False)
    else:
        raise ValueError(f"unknown variant {variant}")
    for wd in words:
        wd.frames = list(range(n_frames))
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.preamble = b"\0" * 128
    return ds, BurnedFile("", variant, str(ds.file_meta.TransferSyntaxUID), n_frames, words)


#: Draws one image: (variant, person, rng, uid seed) -> (dataset, key entry).
Maker = Callable[[str, BurnedPerson, random.Random, str], tuple[Dataset, BurnedFile]]


def generate_burned_set(out_dir: Path, *, count: int = 14, seed: int = 0,
                        variants: tuple[str, ...] = VARIANTS, people: list[BurnedPerson] | None = None,
                        prefix: str = "", make: Maker | None = None) -> BurnedKey:
    """Write ``count`` images cycling through ``variants`` and their ``burned_key.json``; return the key. ``make``
    draws one image (default :func:`make_image`; :func:`deidpipe.synth.burned_cine.generate_cine_set` passes the
    cine maker)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = BurnedKey(seed)
    for i in range(count):
        rng = random.Random(f"deidpipe.synth.burned/{seed}/{prefix}{i}")
        person = people[i % len(people)] if people else BurnedPerson.random(rng)
        variant = variants[i % len(variants)]
        ds, entry = (make or make_image)(variant, person, rng, f"{seed}/{prefix}{i}")
        entry.path = f"{prefix}{i:03d}_{variant}.dcm"
        ds.save_as(out_dir / entry.path, enforce_file_format=True)
        key.files.append(entry)
    key_path = out_dir / BURNED_KEY_FILE
    if prefix and key_path.exists():
        old = BurnedKey.load(key_path)
        old.files += key.files
        key = old
    key.save(key_path)
    return key


def add_burned_images(out_dir: Path, answer: object, seed: int) -> BurnedKey:
    """Images with burned-in text for every patient of a synth archive (``patientNNN/burned/``), using the
    patient's own name, ID and birth date; the word boxes go to ``burned_key.json``."""
    key = BurnedKey(seed)
    for patient in answer.patients:  # type: ignore[attr-defined]
        rng = random.Random(f"deidpipe.synth.burned-archive/{seed}/{patient.index}")
        study = patient.studies[0].study_date if patient.studies else "20200101"
        person = BurnedPerson(str(patient.name).split("=")[0], patient.patient_id, patient.birth_date, study,
                              rng.choice(_SITES))
        sub = generate_burned_set(Path(out_dir) / f"patient{patient.index:03d}" / "burned", count=len(VARIANTS),
                                  seed=seed, people=[person])
        for f in sub.files:
            f.path = f"patient{patient.index:03d}/burned/{f.path}"
        key.files += sub.files
        (Path(out_dir) / f"patient{patient.index:03d}" / "burned" / BURNED_KEY_FILE).unlink()
    key.save(Path(out_dir) / BURNED_KEY_FILE)
    return key
