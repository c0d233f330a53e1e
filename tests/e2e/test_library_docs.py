"""docs/library.md runs as written: its Python blocks, in order, in one namespace, in a folder laid out as the page
says (project.key, in.dcm, archive/, head.nii.gz), as a fresh script (subprocess) so that its worker processes meet
the caller's ``__main__`` the way a portal's script would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_library_scripts import ROOT, workdir  # noqa: F401 - the same folder as the README's block


@pytest.fixture
def docs_dir(workdir: Path) -> Path:  # noqa: F811
    from deidpipe.synth.heads import write_heads

    heads = write_heads(workdir / "heads", count=1, dicom=False)
    (workdir / "heads" / heads[0]["file"]).rename(workdir / "head.nii.gz")
    return workdir


def test_library_page_runs_as_written(docs_dir: Path) -> None:
    page = (ROOT / "docs" / "library.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) >= 7
    (docs_dir / "page.py").write_text("\n".join(blocks))
    proc = subprocess.run([sys.executable, "page.py"], cwd=docs_dir, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(docs_dir), "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "6 written, 0 quarantined, 0 skipped" in out
    assert "face voxels removed" in out
    assert "InputError" in out or "DeidError" in out
