"""``deidpipe deface IN OUT``: deface one NIfTI / MGH volume. SimpleITK and nibabel load only when it runs."""

from __future__ import annotations

from pathlib import Path

import typer


def deface_command(
    src: Path = typer.Argument(..., exists=True, dir_okay=False, help="Head volume: .nii, .nii.gz, .mgz or .mgh."),
    dst: Path = typer.Argument(..., help="Output volume (.nii, .nii.gz, .mgz or .mgh); written only on success."),
    margin_mm: float = typer.Option(8.0, "--margin-mm", min=0.0, help="Brain margin (mm) that is never changed."),
    brain_mask: Path | None = typer.Option(None, "--brain-mask", exists=True, dir_okay=False,
                                           help="Brain mask volume on SRC's grid (non-zero = brain), e.g. from a "
                                                "brain-extraction tool; default: the template's, pulled back."),
    resolution_mm: float = typer.Option(3.0, "--resolution-mm", min=1.0, max=8.0,
                                        help="Registration grid (mm): coarser is faster."),
    keep_ears: bool = typer.Option(False, "--keep-ears", help="Remove the face only (default: face and ears)."),
) -> None:
    """Remove the face from a head MR/CT volume, never a brain voxel; refuse (exit 2) if the fit is doubtful."""
    import numpy as np

    from deidpipe.deface.core import deface_file
    from deidpipe.deface.errors import DefaceError

    options: dict[str, object] = {"margin_mm": margin_mm, "resolution_mm": resolution_mm, "ears": not keep_ears}
    try:
        if brain_mask is not None:
            from deidpipe.deface.volume import load, volume_data

            options["brain_mask"] = np.asarray(volume_data(load(brain_mask))) > 0
        result = deface_file(src, dst, **options)
    except DefaceError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{result.reason}; face voxels removed {result.face_voxels_removed}, brain voxels changed "
               f"{result.brain_voxels_changed}, {result.seconds:.1f} s -> {dst}")
