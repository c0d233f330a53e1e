"""Shared fixtures: a project key, a synthetic archive generated once per test session, a CT to plant names in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from deidpipe.dicomio import read_dataset
from deidpipe.keys import ProjectKey
from deidpipe.pipeline.executors import ITK_THREADS_ENV

# ``make test`` runs one xdist worker per core, and the tests that deface or read text in their own process are
# pool workers of a kind: each gets its share of the cores for ITK and torch, as deidpipe's own pool workers do
# (deidpipe.pipeline.executors.share_cores_with_itk). Two threads each on two cores only cost CPU in spinning.
_SHARE = str(max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault(ITK_THREADS_ENV, _SHARE)
os.environ.setdefault("DEIDPIPE_TORCH_THREADS", _SHARE)


@pytest.fixture(scope="session")
def key() -> ProjectKey:
    return ProjectKey(b"test-key-0123456789abcdef")


@pytest.fixture(scope="session")
def other_key() -> ProjectKey:
    return ProjectKey(b"another-key-0123456789abcdef")


@pytest.fixture(scope="session")
def synth_archive(tmp_path_factory: pytest.TempPathFactory):
    """(folder, answer key) of a synth archive; tests must not modify it."""
    from deidpipe.synth import generate_archive

    root = tmp_path_factory.mktemp("synth")
    answer = generate_archive(root, patients=3, seed=7)
    return root, answer


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory: pytest.TempPathFactory):
    """(folder, answer key) of a 2-patient synth archive without the real-world study (seed 3), its answer key
    file moved out of the folder (beside it): only the DICOM tree is inside. Tests must not modify it."""
    from deidpipe.synth import generate_archive

    root = tmp_path_factory.mktemp("synth-small")
    answer = generate_archive(root / "src", patients=2, seed=3, real_world=False)
    (root / "src" / "answer_key.json").replace(root / "answer_key.json")
    return root / "src", answer


@pytest.fixture()
def ct():
    """pydicom's CT_small with a name planted in the header and in free text."""
    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Okonkwo^Chidi"
    ds.StudyDescription = "CT abdomen for Chidi Okonkwo"
    ds.PatientComments = "lives at 12 Elm Street"
    return ds


def dciodvfy_available() -> bool:
    return shutil.which("dciodvfy") is not None


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


#: The test files that take longest (measured with ``--durations``, heaviest first). ``make test`` runs two xdist
#: workers with ``--dist loadfile --no-loadscope-reorder``: each worker takes the next whole file in collection
#: order when it runs low, so starting the longest files first lets the short ones fill the gaps and both workers
#: end together. (xdist's default order, by number of tests, left files with a few long tests, such as
#: test_attack's 70 s fixture or test_library_docs' one test, to the end, where one worker ran on alone.)
SLOWEST_FIRST = (  # share of the suite's test time, two full runs with --durations=0 (December 2026)
    "deface/test_volume.py",  # 30%
    "serve/test_node.py",  # 13%
    "scan/test_scan.py",  # 12%
    "pipeline/test_runner.py",  # 6%
    "deface/test_attack.py",  # 6%
    "pixels/test_redact.py",  # 5%
    "deface/test_stage.py",  # 4%
    "e2e/test_library_docs.py",
    "e2e/test_library_scripts.py",
    "deface/test_series.py",
    "deface/test_qc.py",
    "header/test_engine_corpus.py",
    "e2e/test_hostile_sources.py",
    "e2e/test_leaks.py",
    "test_cli.py",
    "e2e/test_fuzz.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the files of :data:`SLOWEST_FIRST` first, in that order; every other file after them as collected."""
    tests = Path(__file__).parent
    rank = {tests / name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path, len(rank)))  # stable: a file's tests keep their order
