"""The background thread the node's long-running parts share (processing stage, one per destination)."""

from __future__ import annotations

import threading


class LoopThread:
    """Runs ``_loop`` in a daemon thread (named ``thread_name`` unless :meth:`start` is given a name).
    ``_stop`` asks the loop to end; ``wake`` cuts its waits short."""

    thread_name = "deidpipe-worker"

    def __init__(self) -> None:
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self, name: str | None = None) -> None:
        self._thread = threading.Thread(target=self._loop, name=name or self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the loop to end, wake it, and wait up to ``timeout`` seconds for the thread."""
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
