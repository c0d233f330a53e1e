"""The processing stage of ``deidpipe serve``: queued objects through the same stages as ``deidpipe run``.

Nothing here de-identifies anything itself. The queue's ``processing/`` folder is a folder source to the
pipeline: each claimed object is indexed by :func:`deidpipe.pipeline.index.index_batch` (the manifest row
``run`` makes), each series gets the stages of :mod:`deidpipe.pipeline.registry` its facts need under the
policy, and the batch entry :func:`deidpipe.pipeline.batch.deidentify` reads, de-identifies, encodes and writes
the objects into ``QUEUE/out/`` with the pipeline's sink. The bytes are therefore those ``deidpipe run`` writes
for the same object, key and policy.

A series that needs a series-scope stage (defacing) is held until no object of it has arrived for
``quiet_period_s`` seconds, then run whole. Held objects stay in ``processing/`` (a restart takes them up again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deidpipe.keys import ProjectKey
from deidpipe.pipeline.audit import STATUS_QUARANTINED, STATUS_SKIPPED, STATUS_WRITTEN, ObjectResult
from deidpipe.pipeline.batch import Pool, deidentify, open_pool, series_tasks
from deidpipe.pipeline.contract import SeriesFacts
from deidpipe.pipeline.execute import WorkContext
from deidpipe.pipeline.index import KIND_DICOM, index_batch
from deidpipe.pipeline.plan import ExecItem, ExecTask
from deidpipe.pipeline.registry import needed_stages, needs_whole_series
from deidpipe.pipeline.sink import LAYOUT_PSEUDONYM
from deidpipe.pipeline.source import SourceItem, SourceSpec
from deidpipe.policy import Policy
from deidpipe.serve.queue import Queue
from deidpipe.serve.worker import LoopThread

log = logging.getLogger("deidpipe.serve")


@dataclass
class _Held:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_seen: float = 0.0


class Processor(LoopThread):
    """Takes objects from ``incoming/``, runs the pipeline on them, and leaves one delivery ticket per
    destination (or a quarantine record)."""

    thread_name = "deidpipe-process"

    def __init__(self, queue: Queue, key: ProjectKey, policy: Policy, *, quiet_period_s: float = 30.0,
                 batch: int = 32, workers: int = 1,
                 on_ready: Callable[[list[dict[str, Any]]], None] = lambda tickets: None) -> None:
        super().__init__()
        self.queue = queue
        self.key = key
        self.policy = policy
        self.quiet_period_s = quiet_period_s
        self.batch = batch
        #: Processes that run the stages: 1 runs them in this process.
        self.workers = max(1, workers)
        self._executor: Pool | None = None
        self.on_ready = on_ready
        self.ctx = WorkContext(SourceSpec("folder", str(queue.path("processing"))), str(queue.path("out")),
                               key, policy, LAYOUT_PSEUDONYM)
        self.held: dict[str | None, _Held] = {}
        self.stats = {"processed": 0, "quarantined": 0, "skipped": 0, "held": 0}

    # -- one round ------------------------------------------------------------------------------------------
    def step(self, now: float | None = None) -> int:
        """Claim and process up to ``batch`` waiting objects, and any held series that has gone quiet.
        Returns how many objects finished."""
        now = time.time() if now is None else now
        done = 0
        tasks: list[ExecTask] = []
        claimed = self.queue.claim(self.queue.incoming()[: self.batch])
        if claimed:
            done += self._index_claimed(claimed, now, tasks)
        for series in [s for s, h in self.held.items() if now - h.last_seen >= self.quiet_period_s]:
            held = self.held.pop(series)
            rows = list(held.rows.values())
            tasks += self._tasks(series, rows, needed_stages(SeriesFacts.from_rows(rows), self.policy))
        if tasks:  # outputs written and their tickets made under the queue's output lock (Queue.output_lock)
            with self.queue.output_lock():
                # a newer copy of an object still waiting to be delivered takes its place (Queue.make_way)
                self.queue.make_way([i.object_id for task in tasks for i in task.items],
                                    {i.object_id: i.content_hash for task in tasks for i in task.items})
                done += self._execute(tasks)
        self.stats["held"] = sum(len(h.rows) for h in self.held.values())
        return done

    def guarded_step(self, stop: Any) -> int:
        """:meth:`step`, guarded: a failed round (e.g. a full disk: the objects stay queued, tried again) is
        logged, its claimed objects go back to ``incoming/`` and the caller pauses 2 s on ``stop`` (an event).
        Returns how many objects finished (0 after a failure)."""
        try:
            return self.step()
        except Exception as exc:  # noqa: BLE001
            log.error("processing round failed (%s); retrying", type(exc).__name__)
            self._requeue()
            stop.wait(2.0)
            return 0

    def _index_claimed(self, oids: list[str], now: float, tasks: list[ExecTask]) -> int:
        """Index claimed objects; unreadable ones are finished (quarantined) here, series that need a
        series-scope stage are held, the rest become ``tasks``. Returns how many objects finished."""
        items, present = [], []
        for oid in oids:
            path = self.queue.path("processing", f"{oid}.dcm")
            try:
                items.append(SourceItem(path.name, path.stat().st_size))
            except FileNotFoundError:
                continue
            present.append(oid)
        rows = index_batch(self.ctx.source, self.key, items, present)
        by_series: dict[str | None, list[dict[str, Any]]] = {}
        finished: list[ObjectResult] = []
        for row in rows:
            if row["kind"] != KIND_DICOM:
                finished.append(ObjectResult(row["object_id"], STATUS_QUARANTINED, row["content_hash"],
                                             stage="index", reason=row["reason"] or "unreadable",
                                             bytes_in=max(row["size"] or 0, 0)))
                continue
            by_series.setdefault(row["series_uid"], []).append(row)
        n = self._finish(finished)
        for series, srows in by_series.items():
            held = self.held.get(series)
            all_rows = srows + (list(held.rows.values()) if held else [])
            stages = needed_stages(SeriesFacts.from_rows(all_rows), self.policy)
            if needs_whole_series(stages):
                h = self.held.setdefault(series, _Held())
                h.rows.update({r["object_id"]: r for r in srows})
                h.last_seen = now
                continue
            tasks += self._tasks(series, srows, stages)
        return n

    def _tasks(self, series: str | None, rows: list[dict[str, Any]], stages: tuple[str, ...]) -> list[ExecTask]:
        """A whole series as one task when a series-scope stage is in ``stages``; else small tasks, so that the
        workers share a round."""
        items = [ExecItem(r["object_id"], SourceItem(r["path"], r["size"]), r["content_hash"], r["series_uid"],
                          r["mtime_ns"]) for r in rows]
        return list(series_tasks(series, items, stages, chunk=32 if self.workers == 1 else 4))

    def _execute(self, tasks: list[ExecTask]) -> int:
        """Run a round's tasks (in this process, or on the pool of ``workers`` processes) and finish each as it
        comes back; a task that fails as a whole quarantines its objects."""
        if not tasks:
            return 0
        if self._executor is None:
            self._executor = open_pool(self.ctx, workers=self.workers)
        n = 0
        for _, results in deidentify(tasks, self._executor):
            n += self._finish(results)
        return n

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def _finish(self, results: list[ObjectResult]) -> int:
        """Tickets, quarantine records and audit lines for finished objects, then their queue files go."""
        if not results:
            return 0
        now = time.time()
        tickets = []
        for r in results:
            if r.status == STATUS_WRITTEN:
                stamp = self.queue.stamp()  # this copy of the object, apart from any other copy of it
                for dest in self.queue.destinations:
                    tickets.append({"object_id": r.object_id, "destination": dest, "output": r.output,
                                    "bytes": r.bytes_out, "out_hash": r.out_hash, "queued_at": now,
                                    "content_hash": r.content_hash,
                                    "attempts": 0, "next_at": 0.0, **stamp})
            elif r.status == STATUS_SKIPPED:  # set aside by the policy (an encapsulated document): audited only
                log.info("object %s skipped at %s: %s", r.object_id[:12], r.stage, r.reason)
            else:
                self.queue.quarantine(r.object_id, {
                    "object_id": r.object_id, "input_path_hash": r.object_id, "content_hash": r.content_hash,
                    "stage": r.stage, "reason": r.reason, "time": now})
                log.warning("object %s quarantined at %s: %s", r.object_id[:12], r.stage, r.reason)
        self.queue.add_tickets(tickets)
        self.queue.audit([dict(r.to_record(), event="processed", time=now) for r in results])
        self.queue.done_processing(r.object_id for r in results)
        written = sum(r.status == STATUS_WRITTEN for r in results)
        skipped = sum(r.status == STATUS_SKIPPED for r in results)
        self.stats["processed"] += written
        self.stats["skipped"] += skipped
        self.stats["quarantined"] += len(results) - written - skipped
        if tickets:
            self.on_ready(tickets)
        return len(results)

    # -- the thread -------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.guarded_step(self._stop):
                self.wake.wait(0.5 if not self.held else min(0.5, self.quiet_period_s))
                self.wake.clear()
        self.close()

    def _requeue(self) -> None:
        """After a failed round: claimed objects that are not held go back to ``incoming/`` (where a newer copy
        received meanwhile is kept instead: :meth:`Queue.unclaim`)."""
        held = {oid for h in self.held.values() for oid in h.rows}
        for p in self.queue.path("processing").glob("*.dcm"):
            if p.name[:-4] not in held:
                try:
                    self.queue.unclaim(p.name[:-4])
                except OSError:
                    pass


def process_main(root: str, destinations: tuple[str, ...], key: ProjectKey, policy: Policy, quiet_period_s: float,
                 batch: int, parent: int, workers: int = 1, max_inflated: int = 0) -> None:
    """The processing stage in its own process (the node's SCP keeps the interpreter to itself): polls
    ``incoming/`` and leaves tickets in the outboxes, which the delivery threads pick up. SIGTERM ends it after
    its round; it dies with the node (PR_SET_PDEATHSIG). ``max_inflated``: the most bytes a deflated data set may
    inflate to here and in the worker processes it starts (they inherit the setting), as the SCP checked."""
    import os
    import signal

    from deidpipe.dicomio.deflate import CAP_ENV
    from deidpipe.pipeline.executors import die_with_parent

    die_with_parent(parent)
    if max_inflated > 0:
        os.environ[CAP_ENV] = str(max_inflated)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the node, which stops this process in order
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    proc = None
    while proc is None and not stop.is_set():
        try:  # the queue's folders are made here: a disk failing as the process starts must not end processing
            proc = Processor(Queue(root, destinations), key, policy, quiet_period_s=quiet_period_s, batch=batch,
                             workers=workers)
        except OSError as exc:
            log.error("processing cannot open the queue (%s); retrying", type(exc).__name__)
            stop.wait(2.0)
    if proc is None:
        return
    try:
        while not stop.is_set() and os.getppid() == parent:
            if not proc.guarded_step(stop):
                stop.wait(0.02 if not proc.held else min(0.02, proc.quiet_period_s))
    finally:
        proc.close()
