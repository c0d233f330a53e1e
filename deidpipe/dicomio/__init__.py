"""Byte-level DICOM: reading, writing (File Meta Information included), and what a read must check.

Like pydicom's ``filereader`` and ``filewriter``, one package holds what deidpipe does with a file's bytes:

* :mod:`~deidpipe.dicomio.read`: :func:`read_dataset`, the whole file or a typed, value-free
  :class:`~deidpipe.errors.InputError`;
* :mod:`~deidpipe.dicomio.plainread`: plain files read by their lengths (faster than pydicom, to the same data
  set), the header scan of the index pass, and truncation found by byte accounting;
* :mod:`~deidpipe.dicomio.deflate`: deflated data sets inflated in bounded chunks (no deflate bomb);
* :mod:`~deidpipe.dicomio.completeness`: is the pixel data all there, judged from lengths and the header;
* :mod:`~deidpipe.dicomio.head`: a Part 10 file's File Meta UIDs and where its data set starts (what a sender
  offers on an association);
* :mod:`~deidpipe.dicomio.write`: the one writer, :func:`write_dataset` / :func:`encode_dataset` and the node's
  File Meta Information (:func:`~deidpipe.dicomio.write.file_meta_bytes`), and the Implementation Class UID and
  Version Name of every file deidpipe writes;
* :mod:`~deidpipe.dicomio.quiet`: pydicom's and the decoders' value-quoting warnings and log records kept off
  every terminal and log.

Importing the package installs the quiet filter (:func:`deidpipe.dicomio.quiet.install`: cheap, process-wide,
idempotent), so that any process that reads or writes through here, or uses any of its modules, is silenced
before its first pydicom work. The reader and writer, which import pydicom, load on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.dicomio.quiet import install as _install_quiet
from deidpipe.dicomio.quiet import quiet as quiet_pydicom
from deidpipe.lazy import lazy_names

# pydicom's warnings and log lines quote values: silenced in any process that reads or writes through here.
_install_quiet()

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.dicomio.read import read_dataset
    from deidpipe.dicomio.write import (
        IMPLEMENTATION_CLASS_UID,
        IMPLEMENTATION_VERSION_NAME,
        encode_dataset,
        file_meta_bytes,
        write_dataset,
    )

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "encode_dataset",
    "file_meta_bytes",
    "quiet_pydicom",
    "read_dataset",
    "write_dataset",
]

__getattr__ = lazy_names(__name__, {
    "read_dataset": ".read",
    "encode_dataset": ".write",
    "write_dataset": ".write",
    "file_meta_bytes": ".write",
    "IMPLEMENTATION_CLASS_UID": ".write",
    "IMPLEMENTATION_VERSION_NAME": ".write",
})
