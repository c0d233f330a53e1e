"""Shared fixtures: a project key, a synthetic archive generated once per test session, a CT to plant names in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from deidpipe.dicomio import read_dataset
from deidpipe.keys import ProjectKey


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
