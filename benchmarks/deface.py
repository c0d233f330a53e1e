"""Defacing: face removed, brain kept, faces found, recognition attack and seconds, against quickshear and niimath.

Every tool defaces the same NIfTI files: synthetic heads (``deidpipe.synth.heads.make_head``) at each voxel size,
every storage orientation in turn, half of them oblique, written to a temporary folder with their ground-truth
masks. Per volume and tool:

* seconds: wall time of the tool's command line (``deidpipe deface``, ``quickshear``, ``niimath -deface``), process
  start included: what a user running one file pays (deidpipe's includes its QC: renders, Haar and dlib);
* face removed: share of the ground-truth face voxels that read 0 after; brain changed: ground-truth brain voxels
  whose value changed (quickshear gets the ground-truth brain mask; niimath gets pydeface's template and face
  mask, read from the installed pydeface wheel; deidpipe its own registration);
* faces found: OpenCV Haar (views with a face, of 3) before and after, dlib HOG (views with a face at dlib's
  default threshold) after, on deidpipe's skin renders (``face_finding.render_views``);
* attack rank: dlib's descriptor of the renders, ranked against a gallery of every identity (plus distractors)
  rendered in another pose (``deidpipe.deface.attack``); after defacing the attacker crops where the face was
  before. Identities: face deformation up to 16 mm, pose rotation up to 5 degrees, no contrast noise
  (docs/deface.md: dlib cannot tell the default 4 mm identities apart).

pydeface itself needs FSL (flirt), which cannot be installed from PyPI here, so it is not measured; its paper's
figure, 167 s a volume, is quoted in the table's note.

    python benchmarks/deface.py [--volumes 6] [--voxel-mm 1 2] [--distractors 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np

from deidpipe.deface.attack import ViewEmbeddings, run_attack, volume_embeddings
from deidpipe.deface.face_finding import detect_faces, landmarks, render_views
from deidpipe.synth.heads import ORIENTATIONS, make_head

FACE_MM, MAX_DEGREES = 16.0, 5.0
BIN = Path(sys.executable).parent
TOOLS = ("deidpipe", "quickshear", "niimath")


def _head(seed: int, identity: int, voxel_mm: float, **kw: object):
    return make_head(seed, identity=identity, face_mm=FACE_MM, max_degrees=MAX_DEGREES, noise=False,
                     voxel_mm=voxel_mm, **kw)


def _command(tool: str, src: Path, brain: Path, out: Path) -> list[str]:
    if tool == "deidpipe":
        return [str(BIN / "deidpipe"), "deface", str(src), str(out)]
    if tool == "quickshear":
        return [str(BIN / "quickshear"), str(src), str(brain), str(out)]
    data = resources.files("pydeface") / "data"
    return [str(BIN / "niimath"), str(src), "-deface", str(data / "mean_reg2mean.nii.gz"),
            str(data / "facemask.nii.gz"), str(out)]


@dataclass
class Row:
    tool: str
    voxel_mm: float
    name: str
    seconds: float = float("nan")
    face_removed: float = float("nan")
    brain_changed: int = -1
    haar_before: int = 0
    haar_after: int = 0
    dlib_after: int = 0
    rank_before: int = 0
    rank_after: int = 0
    error: str = ""
    embeddings: ViewEmbeddings | None = field(default=None, repr=False)


def _run_tool(tool: str, src: Path, brain: Path, out: Path, before: nib.Nifti1Image, face: np.ndarray,
              brain_mask: np.ndarray, row: Row, boxes: dict) -> None:
    t0 = time.perf_counter()
    proc = subprocess.run(_command(tool, src, brain, out), capture_output=True, text=True, check=False)
    row.seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        row.error = f"exit {proc.returncode}: {(proc.stdout + proc.stderr).strip().splitlines()[-1:]}"
        return
    after = nib.load(str(out))
    a = np.asarray(after.dataobj, dtype=np.float32).reshape(face.shape)
    b = np.asarray(before.dataobj, dtype=np.float32).reshape(face.shape)
    row.face_removed = float((a[face] == 0).mean())
    row.brain_changed = int((a[brain_mask] != b[brain_mask]).sum())
    renders = render_views(after)
    haar = {k: detect_faces(v) for k, v in renders.items()}
    row.haar_after = sum(bool(v) for v in haar.values())
    row.dlib_after = sum(landmarks(v, haar=haar[k]).source == "hog" for k, v in renders.items())
    row.embeddings = volume_embeddings(None, boxes=boxes, renders=renders)


def run(volumes: int, voxel_sizes: list[float], distractors: int, folder: Path) -> list[Row]:
    """Deface ``volumes`` heads at each voxel size with every tool; rows per tool and volume."""
    rows: list[Row] = []
    for vox in voxel_sizes:
        gallery = [volume_embeddings(_head(7000 + i, i, vox, orientation="RAS", oblique=False).image)
                   for i in range(volumes + distractors)]
        probes_before: list[ViewEmbeddings] = []
        by_tool: dict[str, list[Row]] = {t: [] for t in TOOLS}
        for i in range(volumes):
            orientation, oblique = ORIENTATIONS[i % len(ORIENTATIONS)], i % 2 == 1
            head = _head(8000 + i, i, vox, orientation=orientation, oblique=oblique)
            name = f"{orientation}{'-obl' if oblique else ''}"
            src, brain = folder / f"v{vox:g}_{i}.nii.gz", folder / f"v{vox:g}_{i}_brain.nii.gz"
            nib.save(head.image, str(src))
            nib.save(nib.Nifti1Image(head.brain.astype(np.uint8), head.image.affine), str(brain))
            renders = render_views(head.image)
            haar_before = sum(bool(detect_faces(v)) for v in renders.values())
            before = volume_embeddings(None, renders=renders)
            probes_before.append(before)
            boxes = {k: m.box for k, m in before.marks.items()}
            for tool in TOOLS:
                row = Row(tool, vox, name, haar_before=haar_before)
                _run_tool(tool, src, brain, folder / f"v{vox:g}_{i}_{tool}.nii.gz", head.image, head.face,
                          head.brain, row, boxes)
                rows.append(row)
                by_tool[tool].append(row)
                print(f"  {tool:10s} {vox:g} mm {name:8s} {row.seconds:6.1f} s  face {row.face_removed:7.2%}  "
                      f"brain {row.brain_changed}  {row.error}", file=sys.stderr, flush=True)
        for rows_t in by_tool.values():
            ok = [r for r in rows_t if r.embeddings is not None]
            if not ok:
                continue
            idx = [rows_t.index(r) for r in ok]
            res = run_attack(gallery, [probes_before[k] for k in idx], [r.embeddings for r in ok], idx)
            for r, rb, ra in zip(ok, res.ranks_before, res.ranks_after, strict=True):
                r.rank_before, r.rank_after = rb, ra
    return rows


def _table(rows: list[Row], gallery: int) -> str:
    lines = ["| tool | voxel | volume | seconds | face removed | brain voxels changed | Haar views before / after "
             "| dlib views after | attack rank before / after |", "| --- " * 9 + "|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.tool} | {r.voxel_mm:g} mm | {r.name} | {r.seconds:.1f} | failed: {r.error} | | | | |")
            continue
        lines.append(f"| {r.tool} | {r.voxel_mm:g} mm | {r.name} | {r.seconds:.1f} | {r.face_removed:.2%} | "
                     f"{r.brain_changed} | {r.haar_before} / {r.haar_after} | {r.dlib_after} | "
                     f"{r.rank_before} / {r.rank_after} |")
    lines += ["", "| tool | voxel | volumes | median s | s vs deidpipe | face removed (worst, mean) | "
              "brain voxels changed (max) | volumes with a Haar face after | with a dlib face after | "
              "rank-1 before / after |", "| --- " * 10 + "|"]
    for vox in sorted({r.voxel_mm for r in rows}):
        ref = statistics.median(r.seconds for r in rows if r.voxel_mm == vox and r.tool == "deidpipe")
        for tool in TOOLS:
            sel = [r for r in rows if r.voxel_mm == vox and r.tool == tool]
            ok = [r for r in sel if not r.error]
            if not ok:
                lines.append(f"| {tool} | {vox:g} mm | {len(sel)} | failed | | | | | | |")
                continue
            med = statistics.median(r.seconds for r in ok)
            face = [r.face_removed for r in ok]
            lines.append(
                f"| {tool} | {vox:g} mm | {len(ok)}/{len(sel)} | {med:.1f} | {med / ref:.2f}x | {min(face):.2%}, "
                f"{float(np.mean(face)):.2%} | {max(r.brain_changed for r in ok)} | "
                f"{sum(r.haar_after > 0 for r in ok)} | {sum(r.dlib_after > 0 for r in ok)} | "
                f"{sum(r.rank_before == 1 for r in ok)}/{len(ok)} / {sum(r.rank_after == 1 for r in ok)}/{len(ok)} |")
    lines += ["", f"Attack gallery: {gallery} identities a voxel size (chance of rank 1: 1 in {gallery}). "
              "pydeface needs FSL (flirt), which cannot be installed from PyPI here, so it is not measured; "
              "its published time is 167 s a volume."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=6, help="heads per voxel size (default 6)")
    parser.add_argument("--voxel-mm", type=float, nargs="+", default=[1.0, 2.0], help="voxel sizes (default 1 2)")
    parser.add_argument("--distractors", type=int, default=4, help="gallery identities never probed (default 4)")
    parser.add_argument("--keep", type=Path, help="write the volumes here and keep them (default: a temp folder)")
    args = parser.parse_args(argv)
    for tool in TOOLS:
        if not (BIN / tool).exists():
            print(f"{tool} not found in {BIN}", file=sys.stderr)
            return 2
    folder = args.keep or Path(tempfile.mkdtemp(prefix="deface-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        rows = run(args.volumes, args.voxel_mm, args.distractors, folder)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(_table(rows, args.volumes + args.distractors))
    print(f"\n{time.perf_counter() - t0:.0f} s in all", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
