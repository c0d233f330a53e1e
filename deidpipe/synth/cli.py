"""``deidpipe synth OUT``: write a synthetic archive and its answer key.

The generator (pydicom) and rich are imported inside the command, so ``deidpipe --help`` does not pay for them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer


def synth(
    out: Path = typer.Argument(..., help="Folder to write the archive into (created if missing)."),
    patients: int = typer.Option(3, "--patients", "-n", min=1, help="Number of synthetic patients."),
    seed: int = typer.Option(0, "--seed", "-s", min=0, help="Seed: the same seed gives byte-identical files."),
    burned_text: bool = typer.Option(False, "--burned-text", help="Also write images with burned-in text "
                                     "(and burned_key.json, the word boxes)."),
    heads: bool = typer.Option(False, "--heads", help="Write synthetic head volumes (NIfTI, and each as a DICOM "
                               "MR series under dicom/) with ground-truth face and brain masks instead (for "
                               "defacing; see deidpipe.synth.heads)."),
    head_count: int = typer.Option(6, "--head-count", min=1, help="With --heads: how many volumes (from 4 on, "
                                   "the last two are a face-out-of-view and a brain-only volume)."),
) -> None:
    """Write a synthetic DICOM archive full of planted PHI, with an answer key for testing de-identification."""
    if heads:
        from deidpipe.synth.heads import write_heads

        entries = write_heads(out, count=head_count, seed=seed)
        for e in entries:
            typer.echo(f"{e['file']}: {e['kind']}, {e['orientation']}{' oblique' if e['oblique'] else ''}, "
                       f"face voxels {e['face_voxels']}, brain voxels {e['brain_voxels']}")
        typer.echo(f"{len(entries)} heads and their masks in {out} (list: heads.json; DICOM series in "
                   f"{out / 'dicom'})")
        return
    from rich.console import Console
    from rich.table import Table

    from deidpipe.synth.archive import KEY_FILE, generate_archive

    key = generate_archive(out, patients=patients, seed=seed, burned_text=burned_text)
    kinds = Counter(p.kind for p in key.planted)
    table = Table(title=f"Synthetic archive in {out}", show_header=False)
    table.add_row("files", str(len(key.files())))
    table.add_row("DICOM objects", f"{len(key.objects())} ({len(key.members())} inside zips)")
    table.add_row("other entries", ", ".join(f"{what} {n}" for what, n in sorted(
        Counter(e.what for e in key.extras if e.what in {"dicomdir", "sidecar", "zip"}).items())) or "none")
    table.add_row("patients", str(len(key.patients)))
    table.add_row("planted values", f"{len(key.planted)} at {len(key.planted_paths())} paths")
    table.add_row("by kind", ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    table.add_row("hidden values", f"{len(key.hidden)} in names, documents, stream segments, sidecars")
    table.add_row("references", str(len(key.references)))
    table.add_row("answer key", str(Path(out) / KEY_FILE))
    Console().print(table)
