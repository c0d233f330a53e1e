"""Deflated Explicit VR Little Endian files, inflated with bounds before pydicom parses them.

pydicom inflates a deflated data set with one ``zlib.decompress`` call: a few megabytes of file can become
gigabytes in memory before a single element is parsed (a deflate bomb; deflate reaches about 1000:1 on zeros).
Here the data set is inflated in chunks and the inflated size is capped:

* at :data:`RATIO` times the compressed size: DICOM data sets rarely deflate better than about 20:1, a blank
  image perhaps better, so 50:1 leaves room for honest files;
* but never below :data:`FLOOR` (a small file of a blank image can deflate at several hundred to one, and a
  few tens of megabytes are harmless), and never above :data:`HARD_CAP` (1 GiB), whatever the file's size.

A process may lower the 1 GiB cap (``DEIDPIPE_INFLATE_MAX_BYTES``: ``deidpipe serve`` sets it for its processing
processes), and a caller that holds data sets of many senders at once (the node's SCP) charges every inflated
chunk to its memory budget as it comes (:func:`charging`): over the budget, inflating stops at once with
:class:`InflateBudgetExceeded`, not an error of the object's making.

A data set that runs over its ceiling is refused with a fixed reason; one that is cut short is truncated. What
inflates within bounds is handed to pydicom's own data set reader as Explicit VR Little Endian, with the File Meta
Information as read (its transfer syntax stays Deflated, so the output is written deflated again), which is what
``pydicom.dcmread`` builds for the same file.
"""

from __future__ import annotations

import contextlib
import io
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_partial, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from deidpipe.dicomio.completeness import FRAGMENTS_CUT
from deidpipe.dicomio.plainread import dataset_truncation
from deidpipe.errors import InputError, TruncatedError
from deidpipe.settings import positive_env

RATIO = 50
FLOOR = 64 << 20
HARD_CAP = 1 << 30
#: Inflated bytes produced per ``decompress`` call: bounds the memory beyond the ceiling to one chunk.
CHUNK = 4 << 20
_INPUT_CHUNK = 256 << 10
#: pydicom's ``stop_when``: (tag, VR, length) -> stop before this element.
StopWhen = Callable[[BaseTag, str | None, int], bool]
DEFLATE_BOMB_REASON = "deflated data set inflates beyond the size limit"
#: Sets a lower cap than :data:`HARD_CAP` for this process and those it starts (bytes).
CAP_ENV = "DEIDPIPE_INFLATE_MAX_BYTES"
#: Copies of its inflated bytes a data set holds while it is read: the inflated buffer, and the values pydicom's
#: reader copies out of it. A budget is charged this many times each inflated byte.
PARSE_COPIES = 2


class InflateLimitError(InputError):
    """A deflated data set inflates to more than its ceiling (a deflate bomb, or a file this tool refuses)."""


class InflateBudgetExceeded(BaseException):  # noqa: N818 - not an error of the object's making
    """The memory budget of :func:`charging` cannot hold more inflated bytes: the caller answers "out of
    resources" and may try again later. A ``BaseException`` (like ``ObjectTimeout``): the readers' ``except
    Exception`` must not turn it into an error of the object."""


@dataclass
class Charge:
    """What :func:`charging` has taken from a budget so far (the caller gives it back), and the cap it sets."""

    take: Callable[[int], bool]
    cap: int | None = None
    taken: int = 0


_local = threading.local()


@contextlib.contextmanager
def charging(take: Callable[[int], bool], cap: int | None = None) -> Iterator[Charge]:
    """Within the block, in this thread, every deflated data set read charges ``take`` (a budget's: True if it
    could take that many bytes) with :data:`PARSE_COPIES` times each chunk as it is inflated, and inflates to at
    most ``cap`` bytes. The yielded :class:`Charge` says how much was taken: give it back after the block."""
    charge = Charge(take, cap)
    previous = getattr(_local, "charge", None)
    _local.charge = charge
    try:
        yield charge
    finally:
        _local.charge = previous


def process_cap() -> int:
    """:data:`HARD_CAP`, or the lower cap ``DEIDPIPE_INFLATE_MAX_BYTES`` sets for this process."""
    return min(HARD_CAP, positive_env(CAP_ENV, HARD_CAP, int))


def inflate_limit(compressed: int) -> int:
    """The most bytes a deflated data set of ``compressed`` bytes may inflate to (see the module docstring)."""
    charge: Charge | None = getattr(_local, "charge", None)
    cap = process_cap() if charge is None or charge.cap is None else min(process_cap(), charge.cap)
    return min(cap, max(FLOOR, RATIO * compressed))


def inflate_bounded(data: bytes | memoryview, label: str | None = None, limit: int | None = None) -> io.BytesIO:
    """The raw deflate stream ``data`` inflated into a buffer (positioned at 0), at most ``limit`` bytes
    (default: :func:`inflate_limit`). Raises :class:`InflateLimitError` beyond it and :class:`TruncatedError`
    when the stream ends early or is corrupt; memory never exceeds the ceiling plus one chunk. Within
    :func:`charging`, each chunk is charged before it is kept (:class:`InflateBudgetExceeded` if it cannot be)."""
    ceiling = inflate_limit(len(data)) if limit is None else limit
    charge: Charge | None = getattr(_local, "charge", None)
    out = DicomBytesIO()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    view = memoryview(data)
    pos, total = 0, 0
    tail: bytes | memoryview = b""
    try:
        while not inflater.eof:
            if not tail and pos < len(view):  # input in small pieces: zlib copies what it leaves unconsumed
                tail, pos = view[pos:pos + _INPUT_CHUNK], pos + _INPUT_CHUNK
            chunk = inflater.decompress(tail, CHUNK)
            total += len(chunk)
            if total > ceiling:
                raise InflateLimitError(label, DEFLATE_BOMB_REASON)
            if charge is not None and chunk:
                if not charge.take(PARSE_COPIES * len(chunk)):
                    raise InflateBudgetExceeded
                charge.taken += PARSE_COPIES * len(chunk)
            out.write(chunk)
            tail = inflater.unconsumed_tail
            if not chunk and not tail and pos >= len(view):
                break  # every byte in, nothing more out
    except zlib.error:
        raise TruncatedError(label, "deflated data set is corrupt or truncated") from None
    if not inflater.eof:
        raise TruncatedError(label, "file is truncated (inside the deflated data set)")
    out.seek(0)
    return out


_PIXEL_DATA_TAG_BYTES = b"\xe0\x7f\x10\x00"


def check_read_to_end(fp: BinaryIO, label: str | None, ds: Dataset) -> None:
    """Refuse a data set that pydicom stopped reading before the end of the file.

    Where the file ends inside an element of undefined length (encapsulated Pixel Data whose fragments do not
    end, a sequence cut short), pydicom (validation off) swallows the EOFError and returns the top-level data set
    without it, and then empty (the elements read before are lost with it). The file object is left at the
    start of that element's value, before the end of the file or at it (the file ends just there): a data set
    that stops before the file does, or that is empty, is truncated; its pixel data, when that is the element,
    is named in the reason."""
    stopped = fp.tell()
    end = fp.seek(0, io.SEEK_END)
    if stopped >= end and ds._dict:
        return
    fp.seek(max(stopped - 12, 0))
    before = fp.read(min(stopped, 12))
    if _PIXEL_DATA_TAG_BYTES in (before[:4], before[4:8]):  # explicit VR (12-byte header), implicit (8)
        raise TruncatedError(label, FRAGMENTS_CUT)
    raise TruncatedError(label, "file is truncated (inside an element of undefined length)")


def _read_deflated(fp: BinaryIO, *, force: bool, stop_when: StopWhen | None,
                   specific_tags: list[BaseTag | int] | None, label: str | None) -> FileDataset | None:
    """The data set at ``fp`` when its File Meta says Deflated Explicit VR Little Endian, read as pydicom's
    ``read_partial`` would but inflated within bounds; None (``fp`` rewound) for any other transfer syntax."""
    start = fp.tell()
    preamble = read_preamble(fp, force)
    meta = _read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        fp.seek(start)
        return None
    inflated = inflate_bounded(fp.read(), label)
    inflated.name = getattr(fp, "name", None)
    if stop_when is None and specific_tags is None:
        # Byte accounting of the inflated data set, as for any plain file (pydicom returns the elements before a
        # cut element header as if the data set ended there, and check_read_to_end cannot tell).
        with inflated.parent.getbuffer() as view:  # the inflated bytes, not copied
            cut = dataset_truncation(view, implicit=False)
        if cut is not None:
            raise TruncatedError(label, cut)
    dataset = read_dataset(inflated, False, True, stop_when=stop_when, specific_tags=specific_tags)
    if stop_when is None:
        check_read_to_end(inflated, label, dataset)
    ds = FileDataset(inflated, dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def read_deflated(source: BinaryIO, label: str | None, *, stop_before_pixels: bool = False) -> FileDataset | None:
    """The data set of a Deflated Explicit VR Little Endian file, inflated within bounds; None (and ``source``
    rewound) for any other transfer syntax, for pydicom to read. Call inside ``quiet_pydicom``."""
    stop = _at_pixel_data if stop_before_pixels else None
    return _read_deflated(source, force=True, stop_when=stop, specific_tags=None, label=label)


def read_partial_bounded(fp: BinaryIO, stop_when: StopWhen | None = None, *, force: bool = False,
                         specific_tags: list[BaseTag | int] | None = None) -> FileDataset:
    """``pydicom.filereader.read_partial`` with a deflated data set inflated within bounds (for the index pass,
    which reads headers with ``read_partial``)."""
    ds = _read_deflated(fp, force=force, stop_when=stop_when, specific_tags=specific_tags, label=None)
    if ds is None:
        ds = read_partial(fp, stop_when, force=force, specific_tags=specific_tags)
    return ds
