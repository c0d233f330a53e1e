"""Keep the value-quoting messages of pydicom and the image decoders off every terminal and log.

pydicom says what is wrong with a value by quoting it, through ``warnings.warn`` (``UserWarning`` from
``pydicom.valuerep``, ``pydicom.charset``, ...) and through its logger: ``Invalid value for VR UI: '<the value>'``.
The decoders (pylibjpeg and its plugins, GDCM from native code) do the same. A tool that prints a patient's name
to the terminal while it scrubs the name from the file defeats itself, so in every process that runs deidpipe's
stages:

* :func:`install` (process-wide, idempotent, cheap): warnings attributed to these libraries' modules, or to
  deidpipe's own (where pydicom's ``stacklevel`` points), are ignored; their loggers are off and every record
  they make still has its text replaced by a fixed one (in case a host turns them on, as
  ``pydicom.config.debug()`` does); GDCM's native traces are off. It runs when :mod:`deidpipe.dicomio` is
  imported (the first pydicom work deidpipe does, in any process: the CLI, a pool worker, a Dask worker, a
  host that calls :func:`deidpipe.deidentify_dataset`) and again in every worker initializer.
* :func:`quiet`, around every task and every library call that parses or decodes: re-asserts the filter in front
  of any a host added since (``warnings.simplefilter("always")`` after import), and switches pydicom's value
  validation off for the block (it warns, or raises, with the value in the text).

The cost to a host application: pydicom's and the decoders' warnings and log lines are silenced in a process that
uses deidpipe's stages. That is deliberate: those libraries' messages are exactly where values leak, and the
product's rule is that no original value reaches a terminal or a log. Nothing else of the host's is touched: no
other module's warnings, no other logger. Exceptions are handled where they are caught (typed errors with fixed
reasons); :func:`crash_report` describes an unexpected one without its message.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

#: Libraries whose warnings and log records may quote a DICOM value.
LOUD_LIBRARIES = ("pydicom", "pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm", "_gdcm")
#: Their warnings are ignored, and deidpipe's: pydicom's ``stacklevel`` can point at the deidpipe frame that
#: called it (deidpipe itself never warns). ``warnings`` matches the module a warning is attributed to.
_MODULE_PATTERN = r"(?:" + "|".join((*LOUD_LIBRARIES, "deidpipe")) + r")(?:\..*)?\Z"
#: What a record from one of those loggers says instead of its text.
WITHHELD = "message withheld (it may quote a DICOM value)"
_OFF = logging.CRITICAL + 1

_lock = threading.Lock()
_installed = False
#: Blocks of :func:`quiet` running now (in any thread) and the validation modes the outermost one found.
_depth = 0
_saved_modes: tuple[Any, Any] | None = None


def _is_loud(logger_name: str) -> bool:
    return logger_name.split(".", 1)[0] in LOUD_LIBRARIES


class _WithholdFilter(logging.Filter):
    """Drops every record of the logger it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


_WITHHOLD = _WithholdFilter()


def _withholding_factory(inner: Any) -> Any:
    """A log record factory that gives any record of a loud library's logger a fixed text and no arguments:
    the last line of defence for a child logger or a handler that :func:`install` did not see."""

    def make(name: str, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = inner(name, *args, **kwargs)
        if _is_loud(name):
            record.msg, record.args, record.exc_info, record.exc_text = WITHHELD, (), None, None
        return record

    make._deidpipe_withholds = True  # type: ignore[attr-defined]
    return make


def _filter_in_front() -> None:
    """Put the ignore filter first in ``warnings.filters`` (no change, and no cache reset, when it is)."""
    first = warnings.filters[0] if warnings.filters else None
    if first is not None and first[0] == "ignore" and first[3] is not None and first[3].pattern == _MODULE_PATTERN:
        return
    warnings.filterwarnings("ignore", module=_MODULE_PATTERN)  # removes an older copy, inserts in front


def _silence_gdcm() -> None:
    """GDCM prints warnings and errors from C++ straight to stderr; its traces are off (if it is loaded: pydicom
    loads it with its pixel decoders, on ``import pydicom``)."""
    gdcm = sys.modules.get("gdcm")
    trace = getattr(gdcm, "Trace", None)
    if trace is not None:
        trace.WarningOff()
        trace.ErrorOff()
        trace.DebugOff()


def install() -> None:
    """Silence the loud libraries' warnings and log records in this process (idempotent; see the module)."""
    global _installed
    _filter_in_front()
    _silence_gdcm()
    with _lock:
        if _installed:
            return
        for name in [*LOUD_LIBRARIES, *logging.Logger.manager.loggerDict]:
            if _is_loud(name):
                logger = logging.getLogger(name)
                logger.setLevel(_OFF)
                if _WITHHOLD not in logger.filters:
                    logger.addFilter(_WITHHOLD)
        factory = logging.getLogRecordFactory()
        if not getattr(factory, "_deidpipe_withholds", False):
            logging.setLogRecordFactory(_withholding_factory(factory))
        _installed = True


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """A block of pydicom work: the ignore filter in front of any added since :func:`install`, and pydicom's
    value validation off until the last block running (in any thread) ends.

    Unlike ``warnings.catch_warnings`` nothing global is saved and put back per block, so blocks in several
    threads of a host cannot restore each other's state (nor leave the host's warnings switched off)."""
    global _depth, _saved_modes
    from pydicom import config as pydicom_config

    install()
    settings = pydicom_config.settings
    with _lock:
        if _depth == 0:
            _saved_modes = settings.reading_validation_mode, settings.writing_validation_mode
        settings.reading_validation_mode = settings.writing_validation_mode = pydicom_config.IGNORE
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_modes is not None:
                settings.reading_validation_mode, settings.writing_validation_mode = _saved_modes
                _saved_modes = None


def crash_report(exc: BaseException) -> str:
    """An unexpected exception as a traceback of file, line and function only: no message (pydicom's quote
    values), no local variables, no chained exceptions' messages."""
    frames = traceback.format_list(traceback.extract_tb(exc.__traceback__))
    return "".join(frames) + f"{type(exc).__name__} (message withheld: it may quote a value)"
