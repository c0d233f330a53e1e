"""The per-object time budget: an object that runs over it is quarantined and the batch goes on.

Readers, decoders and OCR are bounded where that is cheap (see :mod:`deidpipe.dicomio.deflate`), but a hostile or merely
unlucky object can still keep a worker busy for a long time, and every object queued behind it waits. Each object
gets a budget of seconds (:data:`OBJECT_BUDGET_S` by default; ``DEIDPIPE_OBJECT_BUDGET_S`` sets another for a run)
for its read and its stages, its write excluded (a write is I/O, and interrupting it could leave a written file
whose audit row says quarantined).

How a running stage is interrupted depends on the thread it runs in:

* in a process's main thread (the local pool's workers, the serial executor), ``SIGALRM`` from
  ``signal.setitimer`` raises :class:`ObjectTimeout` in the stage, wherever it is in Python code (a long call
  into native code is interrupted when it returns);
* elsewhere (Dask runs tasks in threads; signals go to the main thread only), the budget is checked between
  stages: cooperative, the fallback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

from deidpipe.settings import positive_env

OBJECT_BUDGET_S = 120.0
BUDGET_ENV = "DEIDPIPE_OBJECT_BUDGET_S"
BUDGET_REASON = "took longer than the per-object time budget"


def default_object_budget() -> float:
    """The budget in seconds: ``DEIDPIPE_OBJECT_BUDGET_S`` when it is a positive number, else 120."""
    return positive_env(BUDGET_ENV, OBJECT_BUDGET_S, float)


class ObjectTimeout(BaseException):  # noqa: N818 - it is not an error of the object's making
    """An object ran over its time budget.

    A ``BaseException`` (like ``KeyboardInterrupt``): raised from a signal handler anywhere in a stage, it must not
    be caught and renamed by the ``except Exception`` of a reader or decoder on its way out."""


#: The budget whose alarm is armed in this process (main thread only), for the signal handler.
_ARMED: Budget | None = None


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if _ARMED is not None:
        raise ObjectTimeout


class Budget:
    """The time one object has left; spent only while one of its steps runs (in a series task objects wait for
    each other between steps)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.spent = 0.0

    @property
    def left(self) -> float:
        return self.seconds - self.spent

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Run one step of the object: :class:`ObjectTimeout` now if nothing is left, or from the alarm (main
        thread) when the step runs over what is left; the time taken is spent either way."""
        global _ARMED
        if self.left <= 0:
            raise ObjectTimeout
        t0 = time.monotonic()
        # Not where the host application runs a timer of its own: the checks between steps then suffice.
        use_alarm = (threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
                     and _ARMED is None and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
        if not use_alarm:
            try:
                yield
            finally:
                self.spent += time.monotonic() - t0
            return
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        if previous is None:  # installed from outside Python: nothing to put back but the default
            previous = signal.SIG_DFL
        _ARMED = self
        signal.setitimer(signal.ITIMER_REAL, self.left)
        try:
            yield
        finally:
            _ARMED = None  # first: an alarm that arrives from here on does nothing
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            self.spent += time.monotonic() - t0
