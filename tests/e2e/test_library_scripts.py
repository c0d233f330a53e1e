"""The library as a research portal calls it: scripts run in a fresh interpreter, as a user would run them.

Worker processes must never import the caller's ``__main__``: a script that calls ``deidpipe.run`` at its top
level (no ``if __name__ == "__main__":`` guard) would otherwise call it again in every spawned or fork-server
worker, and the pool would break (every object quarantined). Each script here counts how often its top level ran.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from deidpipe.dicomio import read_dataset, write_dataset
from deidpipe.keys import ProjectKey
from tests.helpers import REPO

ROOT = REPO
COPIES = 6


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """project.key, in.dcm and archive/ with a few CT_small copies under fresh UIDs: what the README assumes."""
    ProjectKey.generate(tmp_path / "project.key")
    src = get_testdata_file("CT_small.dcm")
    write_dataset(read_dataset(src), tmp_path / "in.dcm")
    (tmp_path / "archive").mkdir()
    for i in range(COPIES):
        ds = read_dataset(src)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(i // 3)])
        write_dataset(ds, tmp_path / "archive" / f"ct{i}.dcm")
    return tmp_path


def _run_script(cwd: Path, code: str, *, stdin: bool = False) -> subprocess.CompletedProcess[str]:
    if stdin:
        args, inp = [sys.executable, "-"], code
    else:
        (cwd / "script.py").write_text(code)
        args, inp = [sys.executable, "script.py"], None
    proc = subprocess.run(args, cwd=cwd, input=inp, capture_output=True, text=True, timeout=240,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_readme_library_block_runs_as_written(workdir: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Library\n\n```python\n(.*?)```", readme, re.S)
    assert block, "README.md has no Library block"
    out = _run_script(workdir, block.group(1)).stdout
    assert f"{COPIES} written, 0 quarantined" in out
    assert out.count("written ") == COPIES  # iter_run's lines: one per object, each written


#: The end of an unguarded portal script: it counts its own top-level runs, then calls ``run`` at module level.
UNGUARDED_RUN = """
with open("top-level-ran", "a") as f:
    f.write("x")
report = deidpipe.run("archive/", "out/", Policy.basic(), key=ProjectKey.from_file("project.key"), workers=2)
print("RESULT", report.written, report.quarantined)
"""


def _assert_unguarded_runs_once(workdir: Path, prelude: str) -> None:
    """``prelude`` (imports and the module-level work before ``run``) then :data:`UNGUARDED_RUN`, as a script:
    every object written, nothing quarantined, the top level run once."""
    out = _run_script(workdir, textwrap.dedent(prelude) + UNGUARDED_RUN).stdout
    assert f"RESULT {COPIES} 0" in out
    assert (workdir / "top-level-ran").read_text() == "x"


def test_unguarded_script_with_torch_loaded_runs_once(workdir: Path) -> None:
    """torch loaded and run first (its OpenMP pool started, as a portal's model server would): the workers are
    forked and run torch on one thread; the top level runs once, and nothing is quarantined."""
    _assert_unguarded_runs_once(workdir, """
        import torch
        import presidio_analyzer  # noqa: F401
        import deidpipe
        from deidpipe import Policy, ProjectKey

        torch.nn.functional.conv2d(torch.randn(1, 3, 64, 64), torch.randn(4, 3, 3, 3))
    """)


def test_unguarded_script_under_a_fork_server_runs_once(workdir: Path) -> None:
    """A thread running (a portal's web server), so the workers come from a fork server: they never import the
    script, whose top level would call ``run`` again in each of them."""
    _assert_unguarded_runs_once(workdir, """
        import threading, time
        import deidpipe
        from deidpipe import Policy, ProjectKey

        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    """)


def test_iter_run_from_a_main_without_a_file(workdir: Path) -> None:
    """A Jupyter-like ``__main__`` (code on standard input, no file), with a thread running (so no fork)."""
    code = textwrap.dedent("""
        import threading, time
        import deidpipe
        from deidpipe import Policy, ProjectKey

        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        results = list(deidpipe.iter_run("archive/", "out/", Policy.basic(), key=ProjectKey.from_file("project.key"),
                                         workers=2))
        print("RESULT", sum(r.status == "written" for r in results), len(results))
    """)
    out = _run_script(workdir, code, stdin=True).stdout
    assert f"RESULT {COPIES} {COPIES}" in out


def test_worker_context_hides_main_from_spawned_children() -> None:
    """The context every pool uses: a spawned child is given no path to the caller's main module."""
    from multiprocessing import spawn

    from deidpipe.pipeline.executors import _main_hidden, worker_context

    assert worker_context("spawn").get_start_method() == "spawn"
    assert worker_context("forkserver").get_start_method() == "forkserver"
    with _main_hidden():
        data = spawn.get_preparation_data("probe")
    assert "init_main_from_path" not in data and "init_main_from_name" not in data
    assert sys.modules["__main__"].__name__ == "__main__"
