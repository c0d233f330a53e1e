"""Deflated Explicit VR Little Endian files, inflated with bounds before pydicom parses them.

pydicom inflates a deflated data set with one ``zlib.decompress`` call: a few megabytes of file can become
gigabytes in memory before a single element is parsed (a deflate bomb; deflate reaches about 1000:1 on zeros).
Here the data set is inflated in chunks and the inflated size is capped:

* at :data:`RATIO` times the compressed size: DICOM data sets rarely deflate better than about 20:1, a blank
  image perhaps better, so 50:1 leaves room for honest files;
* but never below :data:`FLOOR` (a small file of a blank image can deflate at several hundred to one, and a
  few tens of megabytes are harmless), and never above :data:`HARD_CAP` (1 GiB), whatever the file's size.

A data set that runs over its ceiling is refused with a fixed reason; one that is cut short is truncated. What
inflates within bounds is handed to pydicom's own data set reader as Explicit VR Little Endian, with the File Meta
Information as read (its transfer syntax stays Deflated, so the output is written deflated again), which is what
``pydicom.dcmread`` builds for the same file.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from typing import BinaryIO

from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_partial, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from deidpipe.errors import InputError, TruncatedError
from deidpipe.pixelcheck import FRAGMENTS_CUT

RATIO = 50
FLOOR = 64 << 20
HARD_CAP = 1 << 30
#: Inflated bytes produced per ``decompress`` call: bounds the memory beyond the ceiling to one chunk.
CHUNK = 4 << 20
_INPUT_CHUNK = 256 << 10
#: pydicom's ``stop_when``: (tag, VR, length) -> stop before this element.
StopWhen = Callable[[BaseTag, str | None, int], bool]
DEFLATE_BOMB_REASON = "deflated data set inflates beyond the size limit"


class InflateLimitError(InputError):
    """A deflated data set inflates to more than its ceiling (a deflate bomb, or a file this tool refuses)."""


def inflate_limit(compressed: int) -> int:
    """The most bytes a deflated data set of ``compressed`` bytes may inflate to (see the module docstring)."""
    return min(HARD_CAP, max(FLOOR, RATIO * compressed))


def inflate_bounded(data: bytes | memoryview, label: str | None = None, limit: int | None = None) -> io.BytesIO:
    """The raw deflate stream ``data`` inflated into a buffer (positioned at 0), at most ``limit`` bytes
    (default: :func:`inflate_limit`). Raises :class:`InflateLimitError` beyond it and :class:`TruncatedError`
    when the stream ends early or is corrupt; memory never exceeds the ceiling plus one chunk."""
    ceiling = inflate_limit(len(data)) if limit is None else limit
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
