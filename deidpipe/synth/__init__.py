"""Synthetic DICOM archives with an answer key.

``generate_archive(out_dir)`` writes a small multi-patient archive (CT, MR, US, Comprehensive SR, RT Structure
Set) full of planted identifying values in four character sets, private blocks, nested sequences and file meta,
and per patient a fourth study laid out as real archives are (GSPS, SEG, 12-lead ECG, Encapsulated PDF and CDA,
JPEG/JPEG 2000 captures with metadata segments and a DICOMDIR, patient-named folders, sidecars, a zip in a zip),
plus ``answer_key.json``: every planted value with its path and the bytes a leak search must look for, the
values hidden outside attributes, expected outcomes, and every cross-object reference (docs/synth.md).
``deidpipe.synth.search.search_tree`` is the leak search over every byte under a folder.  Users test their own
pipelines with it; deidpipe's tests are built on it.

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
        Extra,
        FileEntry,
        Hidden,
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
    "Extra",
    "FileEntry",
    "Hidden",
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
