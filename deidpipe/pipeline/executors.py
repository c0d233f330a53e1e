"""Executors: how tasks run (in this process, a local process pool, or a Dask cluster).

Every executor keeps a bounded number of tasks in flight, so memory does not grow with the archive. A task that
fails as a whole (a worker killed, a crash in native code) is retried one object at a time, so one poisonous
object is quarantined instead of its neighbours. Every task runs inside :func:`deidpipe.dicomio.quiet.quiet`, in every
process, so that no library message quoting a value reaches a terminal.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing import context as mpcontext
from typing import Any

from deidpipe.dicomio.quiet import install as install_quiet
from deidpipe.dicomio.quiet import quiet
from deidpipe.pipeline.execute import WorkContext
from deidpipe.pipeline.plan import ExecTask

log = logging.getLogger("deidpipe.pipeline")


def split_task(payload: Any) -> list[Any] | None:
    """How a failed task is retried: an exec task one object at a time; anything else is not retried."""
    if isinstance(payload, ExecTask) and len(payload.items) > 1:
        return [replace(payload, items=[i]) for i in payload.items]
    return None


def quiet_call(fn: Callable[[WorkContext, Any], Any], ctx: WorkContext, payload: Any) -> Any:
    """``fn(ctx, payload)`` inside :func:`deidpipe.dicomio.quiet.quiet`: how every executor runs every task (index or
    execute, in this process, a pool worker or a Dask worker), so that no pydicom or decoder message quoting a
    value reaches a terminal, whatever the process's warning filters."""
    with quiet():
        return fn(ctx, payload)


# -- executors ----------------------------------------------------------------------------------------------
Outcome = tuple[Any, Any, BaseException | None]  # (payload, result, error)


class SerialExecutor:
    """In this process: no start-up cost, the fastest choice for one worker."""

    name = "serial"

    def __init__(self, ctx: WorkContext) -> None:
        self.ctx = ctx
        self.workers = 1

    def imap(self, fn: Callable[[WorkContext, Any], Any], payloads: Iterable[Any]) -> Iterator[Outcome]:
        for p in payloads:
            try:
                yield p, quiet_call(fn, self.ctx, p), None
            except Exception as exc:  # noqa: BLE001
                yield p, None, exc

    def close(self) -> None:
        pass


_WORKER_CTX: WorkContext | None = None


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel kill this process when the process that started it dies (Linux ``PR_SET_PDEATHSIG``).

    A pool worker waits on its task queue forever: when the run is killed (``kill -9``, an OOM kill, a CI
    timeout) its workers would live on, each holding the models it loaded, until someone finds them. (Under
    ``forkserver`` the parent is the fork server, which exits with the run.) Elsewhere (no prctl) nothing is
    done. ``parent``: the pid the caller was started by, when it knows it (``deidpipe serve``'s processing
    process); by default the parent at the time of the call."""
    parent = os.getppid() if parent is None else parent
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _torch_fork_safe() -> bool:
    """Whether a child forked from this process may use torch: yes when torch is not loaded, or loaded without
    CUDA started (a CUDA context cannot cross a fork). Its OpenMP thread pool cannot cross one either (a child
    that runs a parallel region with the parent's pool started hangs), so a child forked with torch loaded runs
    torch on one thread (:func:`_single_torch_thread`)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return True
    try:
        return not torch.cuda.is_initialized()
    except Exception:  # noqa: BLE001 - a torch without the call: do not fork
        return False


def _single_torch_thread() -> None:
    """Run in every pool worker; acts only where torch is already loaded, i.e. in a child forked from a process
    that had it (a fresh interpreter has not imported it): torch on one thread (its OpenMP pool, if the parent
    started one, did not come across; one thread never asks for it). Elsewhere torch keeps its own default.
    ``DEIDPIPE_TORCH_THREADS`` is set to match, so that the OCR reader
    (:func:`deidpipe.pixels.detect.easyocr_reader`) does not raise it again. With one worker per core, as by
    default, one thread each is also what keeps the cores from being oversubscribed."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    torch.set_num_threads(1)
    os.environ["DEIDPIPE_TORCH_THREADS"] = "1"


#: ITK's own setting for the threads a filter or registration uses (its default: every core).
ITK_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def share_cores_with_itk(workers: int) -> None:
    """ITK (SimpleITK: defacing's registration and resampling) in a pool worker uses its share of the cores,
    ``cores // workers`` threads (at least one), not every core: with one worker per core, as by default, each
    worker's registration on two threads of a two-core machine cost 21% more CPU than on one (5.0 against 6.4
    CPU-s a head) for no gain in wall time, since the other worker wanted the second core. The result does not
    depend on it: the defaced volumes are the same bytes with 1, 2, 4 or 8 threads. Set in the environment (ITK
    reads it when first used) and, where SimpleITK is loaded already (a forked worker), in SimpleITK itself."""
    threads = max(1, len(os.sched_getaffinity(0)) // max(workers, 1))
    os.environ[ITK_THREADS_ENV] = str(threads)
    sitk = sys.modules.get("SimpleITK")
    if sitk is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _init_worker(ctx: WorkContext, workers: int = 1) -> None:
    global _WORKER_CTX
    die_with_parent()
    _single_torch_thread()  # a no-op unless forked with torch loaded (a fresh interpreter has not imported it)
    share_cores_with_itk(workers)
    _WORKER_CTX = ctx
    install_quiet()  # a spawned worker has imported deidpipe.dicomio already; a forked one inherits: once more


def _pool_call(fn: Callable[[WorkContext, Any], Any], payload: Any) -> Any:
    assert _WORKER_CTX is not None
    return quiet_call(fn, _WORKER_CTX, payload)


_MAIN_SWAP = threading.Lock()


@contextmanager
def _main_hidden() -> Iterator[None]:
    """While a worker process is being launched, ``sys.modules["__main__"]`` is a bare module.

    ``spawn`` and ``forkserver`` children re-run the parent's main module (the caller's script, as
    ``__mp_main__``) unless it has no ``__file__`` and no ``__spec__``: a portal's script that calls
    ``deidpipe.run`` at module level would then call it again in every worker (and break the pool), and one with
    a guard placed after some module-level work would repeat that work (model loads included) per worker. Our
    workers run only deidpipe's own functions, so they never need the caller's main module: the launch sees
    none and records no path to it."""
    with _MAIN_SWAP:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


class _ForkServerProcess(mpcontext.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with _main_hidden():
            return mpcontext.ForkServerProcess._Popen(process_obj)


class _SpawnProcess(mpcontext.SpawnProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with _main_hidden():
            return mpcontext.SpawnProcess._Popen(process_obj)


class _ForkServerContext(mpcontext.ForkServerContext):
    Process = _ForkServerProcess


class _SpawnContext(mpcontext.SpawnContext):
    Process = _SpawnProcess


#: Imported once by the fork server, so that each worker it forks starts with deidpipe loaded.
FORKSERVER_PRELOAD = ["deidpipe.pipeline.execute", "deidpipe.pipeline.index", "deidpipe.header.engine"]


def worker_context(method: str | None = None) -> multiprocessing.context.BaseContext:
    """The multiprocessing context every deidpipe worker process starts from (the local pool, ``scan``'s pool,
    ``serve``'s processing process and its pool).

    ``fork`` when this process runs a single Python thread and has not started CUDA (workers start in
    milliseconds, with everything already imported, models a portal loaded included); otherwise ``forkserver``
    (or ``spawn``): forking a process that holds other threads (a portal's web server, a progress display, Dask)
    can deadlock the child on a lock one of them held. torch loaded in this process does not stop the fork: its
    workers run torch on one thread (:func:`_torch_fork_safe`; a fork server would cost a portal's first run
    0.5 s of imports before its first object, issue 22). ``method`` forces one of ``spawn`` / ``forkserver`` /
    ``fork``. A spawned or fork-server worker never imports the caller's ``__main__`` (see :func:`_main_hidden`):
    only deidpipe's own modules load in it, whatever the caller's script does at module level."""
    methods = multiprocessing.get_all_start_methods()
    if method is None:
        if "fork" in methods and threading.active_count() == 1 and _torch_fork_safe():
            method = "fork"
        else:
            method = "forkserver" if "forkserver" in methods else "spawn"
    if method == "fork":
        return multiprocessing.get_context("fork")
    if method == "forkserver":
        ctx = _ForkServerContext()
        ctx.set_forkserver_preload(FORKSERVER_PRELOAD)  # no effect once a fork server runs; it then has its own
        return ctx
    return _SpawnContext()


def _noop() -> None:
    return None


class _Bounded:
    """Shared bookkeeping: submit up to ``inflight`` tasks, retry failed ones split, yield as they finish."""

    inflight: int

    def _submit(self, fn: Callable[..., Any], payload: Any) -> Any:
        raise NotImplementedError

    def _wait_any(self, pending: dict[Any, Any]) -> list[Any]:
        raise NotImplementedError

    def _result(self, fut: Any) -> Any:
        raise NotImplementedError

    def _on_failure(self, exc: BaseException) -> None:
        pass

    def imap(self, fn: Callable[[WorkContext, Any], Any], payloads: Iterable[Any]) -> Iterator[Outcome]:
        source = iter(payloads)
        retry: deque[tuple[Any, int]] = deque()
        pending: dict[Any, tuple[Any, int]] = {}
        exhausted = False
        while True:
            while len(pending) < self.inflight and (retry or not exhausted):
                if retry:
                    p, attempt = retry.popleft()
                else:
                    try:
                        p, attempt = next(source), 0
                    except StopIteration:
                        exhausted = True
                        continue
                pending[self._submit(fn, p)] = (p, attempt)
            if not pending:
                return
            for fut in self._wait_any(pending):
                p, attempt = pending.pop(fut)
                try:
                    result = self._result(fut)
                except Exception as exc:  # noqa: BLE001 - a whole task failed: retry its objects alone
                    self._on_failure(exc)
                    parts = split_task(p) if attempt == 0 else None
                    if parts:
                        log.warning("a task failed (%s); retrying its %d objects one by one",
                                    type(exc).__name__, len(parts))
                        retry.extend((part, 1) for part in parts)
                    elif attempt == 0 and isinstance(exc, BrokenProcessPool):
                        retry.append((p, 1))  # perhaps only a neighbour of the crash: once more
                    else:
                        yield p, None, exc
                    continue
                yield p, result, None


class PoolExecutor(_Bounded):
    """A local process pool."""

    name = "local"

    def __init__(self, ctx: WorkContext, workers: int, inflight: int | None = None) -> None:
        self.ctx = ctx
        self.workers = workers
        self.inflight = inflight or workers * 3
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        context = worker_context()
        pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker,
                                   initargs=(self.ctx, self.workers))
        if context.get_start_method() == "fork":
            gc.freeze()  # what is inherited stays out of the children's collections (no copy-on-write for GC)
            pool.submit(_noop).result()  # fork every worker now, before this process starts any thread
            gc.unfreeze()
        return pool

    def _submit(self, fn: Callable[..., Any], payload: Any) -> Future[Any]:
        try:
            return self._pool.submit(_pool_call, fn, payload)
        except BrokenProcessPool:
            self._restart()
            return self._pool.submit(_pool_call, fn, payload)

    def _wait_any(self, pending: dict[Any, Any]) -> list[Any]:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        return list(done)

    def _result(self, fut: Future[Any]) -> Any:
        return fut.result()

    def _on_failure(self, exc: BaseException) -> None:
        if isinstance(exc, BrokenProcessPool):
            self._restart()

    def _restart(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._start()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(_Bounded):
    """A Dask cluster: a new LocalCluster, or an existing scheduler at ``address``."""

    name = "dask"

    def __init__(self, ctx: WorkContext, workers: int, address: str | None = None,
                 inflight: int | None = None) -> None:
        from distributed import Client, LocalCluster

        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self._cluster = None
        if address:
            self._client = Client(address)
        else:
            self._cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, silence_logs=logging.ERROR)
            self._client = Client(self._cluster)
        self.workers = max(len(self._client.scheduler_info().get("workers", {})), 1)
        self.inflight = inflight or self.workers * 3
        self._ctx = self._client.scatter(ctx, broadcast=True, hash=False)

    def _submit(self, fn: Callable[..., Any], payload: Any) -> Any:
        return self._client.submit(quiet_call, fn, self._ctx, payload, pure=False)

    def _wait_any(self, pending: dict[Any, Any]) -> list[Any]:
        from distributed import wait as dwait

        done, _ = dwait(list(pending), return_when="FIRST_COMPLETED")
        return list(done)

    def _result(self, fut: Any) -> Any:
        try:
            return fut.result()
        finally:
            fut.release()

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
