"""Synthetic DICOM archives with an answer key.

``generate_archive(out_dir)`` writes a small multi-patient archive (CT, MR, US, Comprehensive SR, RT Structure
Set) full of planted identifying values in four character sets, private blocks, nested sequences and file meta,
plus ``answer_key.json``: every planted value with its path and the bytes a leak search must look for, and every
cross-object reference.  Users test their own pipelines with it; deidpipe's tests are built on it.

``deidpipe.synth.heads`` makes head volumes (NIfTI) with known face and brain masks for testing defacing.

Names are loaded on first use (PEP 562), so that importing ``deidpipe.synth.cli`` to build the command line does
not import pydicom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.lazy import lazy_names

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.synth.answer_key import (
        AnswerKey,
        FileEntry,
        PatientEntry,
        Planted,
        Reference,
        SafePrivate,
        SeriesEntry,
        StudyEntry,
        lookup,
    )
    from deidpipe.synth.archive import KEY_FILE, generate_archive

_ARCHIVE = ("KEY_FILE", "generate_archive")

__all__ = [
    "KEY_FILE",
    "AnswerKey",
    "FileEntry",
    "PatientEntry",
    "Planted",
    "Reference",
    "SafePrivate",
    "SeriesEntry",
    "StudyEntry",
    "generate_archive",
    "lookup",
]


__getattr__ = lazy_names(__name__, {name: ".archive" if name in _ARCHIVE else ".answer_key" for name in __all__})
