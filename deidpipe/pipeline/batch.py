"""The batch entry: objects in, results out, on one pool. ``run``, ``serve`` and ``scan`` all come through here.

* :func:`open_pool` starts the pool every caller uses: this process for one worker, a local process pool, or a
  Dask cluster (:mod:`deidpipe.pipeline.executors`). Its workers import deidpipe's modules only, never the
  caller's ``__main__``.
* :func:`series_tasks` cuts the objects of one series into tasks: the whole series when one of its stages works
  on whole series (defacing), else chunks. ``serve`` cuts its series with it; ``run``'s plan cuts its own
  (:meth:`deidpipe.pipeline.plan.Plan.tasks`: never between two copies of one SOP instance, which a received
  series cannot hold).
* :func:`deidentify` runs tasks on a pool and yields each task with its objects' results as it finishes. A task
  never raises for a bad object (it is quarantined by the worker); a task that fails as a whole (a worker killed,
  a crash in native code) is retried one object at a time by the pool, and what still fails is quarantined here,
  so every object given gets exactly one result.

``run`` feeds it the tasks of its plan (:mod:`deidpipe.pipeline.plan`), ``serve`` the series it has received
(:mod:`deidpipe.serve.process`); ``scan`` runs its own task function on the same pool (:meth:`Pool.imap`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from deidpipe.pipeline.audit import STATUS_QUARANTINED, ObjectResult
from deidpipe.pipeline.execute import exec_task, reason_of
from deidpipe.pipeline.executors import DaskExecutor, PoolExecutor, SerialExecutor, default_workers
from deidpipe.pipeline.plan import ExecItem, ExecTask
from deidpipe.pipeline.registry import needs_whole_series

Pool = SerialExecutor | PoolExecutor | DaskExecutor


def open_pool(context: Any, executor: str = "local", workers: int | None = None,
              scheduler: str | None = None) -> Pool:
    """The pool that runs tasks with ``context`` (picklable; installed once per worker, passed to every task
    function as its first argument). ``workers``: processes (default: the CPUs this process may use; 1 runs in
    this process). ``executor`` ``dask`` or a ``scheduler`` address: a Dask cluster. Close it when done."""
    n = workers or default_workers()
    if executor == "dask" or scheduler:
        return DaskExecutor(context, n, scheduler)
    if executor != "local":
        raise ValueError(f"unknown executor {executor!r} (local or dask)")
    return SerialExecutor(context) if n == 1 else PoolExecutor(context, n)


def series_tasks(group: str | None, items: list[ExecItem], stages: tuple[str, ...], chunk: int) -> Iterator[ExecTask]:
    """Tasks for the objects of one series (``group``) that need ``stages``: one task when a series-scope stage is
    among them, else chunks of ``chunk`` objects in the order given."""
    step = max(len(items) if needs_whole_series(stages) else chunk, 1)
    for start in range(0, len(items), step):
        yield ExecTask(group, stages, items[start:start + step])


def failed_task_results(task: ExecTask, exc: BaseException) -> list[ObjectResult]:
    """Every object of a task that failed as a whole, quarantined at stage ``execute`` (nothing was written)."""
    return [ObjectResult(i.object_id, STATUS_QUARANTINED, i.content_hash, stage="execute",
                         reason=f"worker failed ({reason_of(exc)})", series_uid=i.series_uid,
                         bytes_in=max(i.item.size, 0)) for i in task.items]


def deidentify(tasks: Iterable[ExecTask], pool: Pool) -> Iterator[tuple[ExecTask, list[ObjectResult]]]:
    """Run ``tasks`` on ``pool`` (opened with a :class:`~deidpipe.pipeline.execute.WorkContext`); yield each task
    with one result per object, in the order tasks finish."""
    for task, results, exc in pool.imap(exec_task, tasks):
        yield task, (failed_task_results(task, exc) if exc is not None else results)
