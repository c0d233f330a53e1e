"""The batch runner: source -> index -> plan -> execute -> sink -> audit, resumable.

``Run`` is an iterable of :class:`ObjectResult`, yielded as objects finish (for portals that stream);
:func:`run` drains it and returns the :class:`RunReport`. DST holds only what is safe to share: the
de-identified objects, ``quarantine/`` (keyed hashes and fixed reasons) and ``_deidpipe/audit.parquet`` (one row
per object, keyed hashes and pseudonyms only). What resume needs, the manifest with the input paths above all,
lives in a state folder outside DST (:mod:`deidpipe.pipeline.state`): ``run.json`` (parameters, the key's
fingerprint), ``manifest.parquet`` (input paths: keep it, never release it) and ``journal.jsonl`` (progress).

Crash consistency: a journal line is written only after the files it speaks of are durable (:meth:`Run._record`),
and ``--resume`` trusts a finished line only after checking its files (:meth:`Run._trusted_finished`): an output
must have the recorded size and SHA-256, else it is removed and made again; a missing or damaged quarantine record
is written again from the line. Whatever a crash can leave (a partial temporary, an output or record whose line was
lost, a torn last line) is cleaned up, done again with identical bytes, or ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deidpipe.errors import DeidError
from deidpipe.keys import ProjectKey
from deidpipe.pipeline.audit import (
    STATUS_QUARANTINED,
    STATUS_WRITTEN,
    Journal,
    ObjectResult,
    finished_objects,
    write_audit,
)
from deidpipe.pipeline.batch import deidentify, open_pool
from deidpipe.pipeline.execute import WorkContext, index_task, reason_of
from deidpipe.pipeline.index import KIND_INVALID, KIND_REJECTED, MANIFEST_SCHEMA, ManifestWriter, object_id
from deidpipe.pipeline.plan import ExecItem, ExecTask, Plan
from deidpipe.pipeline.progress import Reporter
from deidpipe.pipeline.registry import needs_whole_series
from deidpipe.pipeline.release import Release
from deidpipe.pipeline.report import RunReport
from deidpipe.pipeline.sink import (
    CONTROL_DIR,
    LAYOUT_KEEP,
    LAYOUT_PSEUDONYM,
    clean_temporaries,
    output_matches,
    quarantine_bytes,
    quarantine_path,
    remove_output,
    remove_quarantine,
    sync_dirs,
    write_quarantine,
)
from deidpipe.pipeline.source import SourceItem, SourceSpec, detect, iter_items
from deidpipe.pipeline.state import StateDir, inside
from deidpipe.policy import Policy

log = logging.getLogger("deidpipe.pipeline")

INDEX_CHUNK = 64
STREAM_TASK_BYTES = 64 * 1024**2
#: Resume hashes every finished output; hashlib releases the GIL, so a few threads keep a disk busy. In slices,
#: so that a million finished objects do not mean a million futures at once.
VERIFY_THREADS = min(8, os.cpu_count() or 1)
VERIFY_SLICE = 4096


def _canonical(obj: Any) -> Any:
    if isinstance(obj, set | frozenset):
        return sorted((_canonical(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return repr(obj)


def _policy_digest(policy: Policy) -> str:
    """A fingerprint of everything in the policy (a resume must use the very same one)."""
    try:
        text = json.dumps(_canonical(dataclasses.asdict(policy)), sort_keys=True, default=str)
    except TypeError:  # not a dataclass
        text = policy.describe() if hasattr(policy, "describe") else repr(policy)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _import_in_background(module: str) -> None:
    """Start importing ``module`` in a thread. polars (0.35 s) is needed here only once the index's rows are
    written; imported while the workers index, it costs the run nothing. A later ``import`` waits for it."""
    threading.Thread(target=importlib.import_module, args=(module,), name=f"import-{module}", daemon=True).start()


def _quarantine_record(r: ObjectResult) -> dict[str, Any]:
    """A quarantined object's record: every field comes from its journal line, so resume can rebuild it."""
    return {
        "object_id": r.object_id,
        "input_path_hash": r.object_id,
        "content_hash": r.content_hash,
        "stage": r.stage,
        "reason": r.reason,
    }


class Run:
    """One run of the pipeline; iterate it to drive it. ``report`` is set once iteration ends."""

    def __init__(
        self,
        src: str | Path,
        dst: str | Path,
        policy: Policy | None = None,
        *,
        key: ProjectKey | None = None,
        workers: int | None = None,
        executor: str = "local",
        scheduler: str | None = None,
        resume: bool = False,
        keep_paths: bool = False,
        progress: Reporter | bool | None = None,
        chunk: int = 32,
        state_dir: str | Path | None = None,
    ) -> None:
        if policy is None:
            policy = Policy.basic()
        self.src = Path(src)
        self.dst = Path(dst).resolve()
        #: Outside DST: ``<DST>.deidpipe-state`` beside it unless ``state_dir`` names another folder.
        self.state = StateDir.locate(self.dst, state_dir)
        self.policy: Policy = policy
        self.key = key if key is not None else ProjectKey.load(None)
        self.workers = workers
        self.executor_name = executor
        self.scheduler = scheduler
        self.resume = resume
        self.layout = LAYOUT_KEEP if keep_paths else LAYOUT_PSEUDONYM
        if isinstance(progress, Reporter):
            self.reporter = progress
        else:
            self.reporter = Reporter.auto() if progress else Reporter("off")
        self.chunk = chunk
        self.report: RunReport | None = None
        self._named: set[Path] = set()  # folders under DST whose names this run has made durable

    # -- set-up -----------------------------------------------------------------------------------------
    def _prepare(self, spec: SourceSpec) -> int:
        """Check SRC, DST and the state folder, read or write run.json; returns this run's number."""
        root = Path(spec.root)
        if inside(self.dst, root) or inside(root, self.dst):
            raise DeidError("source and destination must not contain one another")
        self.state.check_place(root, self.dst)
        if (not self.resume and self.state.read() is None and self.dst.exists() and any(self.dst.iterdir())):
            raise DeidError("the destination is not empty and holds no deidpipe run")
        fresh = {"key_fingerprint": self.key.fingerprint(), "policy": _policy_digest(self.policy),
                 "layout": self.layout}
        run_number = self.state.begin(resume=self.resume, fresh=fresh,
                                      old_layout=(self.dst / CONTROL_DIR / "run.json").exists())
        (self.dst / CONTROL_DIR).mkdir(parents=True, exist_ok=True)
        removed = clean_temporaries(self.dst)
        if removed:
            log.info("removed %d temporary files left by an interrupted run", removed)
        return run_number

    # -- passes -----------------------------------------------------------------------------------------
    def _index_payloads(self, spec: SourceSpec) -> Iterator[list[SourceItem]]:
        batch: list[SourceItem] = []
        nbytes = 0
        for item in iter_items(spec):
            batch.append(item)
            nbytes += len(item.data) if item.data is not None else 0
            if len(batch) >= INDEX_CHUNK or nbytes >= STREAM_TASK_BYTES:
                yield batch
                batch, nbytes = [], 0
        if batch:
            yield batch

    def _index(self, spec: SourceSpec, executor: Any) -> Path:
        writer = ManifestWriter(self.state.manifest)
        self.reporter.start("index", None)
        for items, rows, exc in executor.imap(index_task, self._index_payloads(spec)):
            if exc is not None:
                rows = []
                for item in items:
                    row = dict.fromkeys(MANIFEST_SCHEMA)
                    row.update(path=item.relpath, object_id=object_id(self.key, item.relpath), size=item.size,
                               kind=KIND_INVALID, reason=f"index failed ({reason_of(exc)})")
                    rows.append(row)
            writer.add(rows)
            self.reporter.advance(len(rows), sum(1 for r in rows if r["kind"] in (KIND_INVALID, KIND_REJECTED)))
        self.reporter.finish()
        return writer.close()

    def _stream_tasks(self, spec: SourceSpec, plan: Plan) -> Iterator[ExecTask]:
        """Tasks that follow a streamed source's order, cut where the series changes. Differing copies of one
        SOP instance (rare) are held back and run together, in path order, at the end."""
        todo = plan.todo_items()
        instance_of = plan.instance_of()
        held: dict[str, tuple[str | None, list[ExecItem]]] = {}
        # A series-scope stage (defacing) needs the whole series in one task, wherever its members lie in the
        # stream: they are gathered and the task goes out when the last one has come.
        whole = {group for group, stages in plan.stages_by_series.items() if needs_whole_series(stages)}
        missing = Counter(group for group, _, _ in todo.values() if group in whole)
        gathered: dict[str | None, list[ExecItem]] = {}
        task: ExecTask | None = None
        nbytes = 0
        for item in iter_items(spec):
            oid = object_id(self.key, item.relpath)
            entry = todo.pop(oid, None)
            if entry is None:
                continue
            group, chash, series = entry
            if group in whole:
                gathered.setdefault(group, []).append(ExecItem(oid, item, chash, series))
                missing[group] -= 1
                if not missing[group]:
                    yield ExecTask(group, plan.stages_by_series[group], gathered.pop(group))
                continue
            if oid in instance_of:
                held.setdefault(instance_of[oid], (group, []))[1].append(ExecItem(oid, item, chash, series))
                continue
            if task is not None and (task.series_uid != group or len(task.items) >= self.chunk
                                     or nbytes >= STREAM_TASK_BYTES):
                yield task
                task = None
            if task is None:
                task, nbytes = ExecTask(group, plan.stages_by_series[group]), 0
            task.items.append(ExecItem(oid, item, chash, series))
            nbytes += len(item.data or b"")
        if task is not None:
            yield task
        for group, items in held.values():
            items.sort(key=lambda i: i.item.relpath)
            yield ExecTask(group, plan.stages_by_series[group], items)
        for oid, (group, chash, series) in todo.items():  # listed by the index, gone from the stream now
            gone = ExecItem(oid, SourceItem("", -1), chash, series)
            if group in whole:
                gathered.setdefault(group, []).append(gone)
            else:
                yield ExecTask(group, plan.stages_by_series[group], [gone])
        for group, items in gathered.items():  # series with a member gone from the stream: one task each
            yield ExecTask(group, plan.stages_by_series[group], items)

    def _record(self, journal: Journal, results: list[ObjectResult]) -> None:
        """Make a batch's files durable, then journal it. Outputs were fsynced by the worker before they were
        linked; here their folders are synced, quarantine records written and synced, stale records removed,
        and only then the lines go in. A crash in between leaves files without lines (done again on resume,
        with identical bytes), never a line without its file."""
        touched: list[str] = []
        for r in results:
            if r.status == STATUS_QUARANTINED:
                write_quarantine(self.dst, _quarantine_record(r))
                touched.append(quarantine_path(Path(), r.object_id).as_posix())
            elif self.resume and remove_quarantine(self.dst, r.object_id):  # from an earlier attempt: stale
                touched.append(quarantine_path(Path(), r.object_id).as_posix())
            if r.status == STATUS_WRITTEN and r.output:
                touched.append(r.output)
        sync_dirs(self.dst, touched, self._named)
        journal.write(results)

    def _trusted_finished(self, journal_path: Path) -> dict[str, ObjectResult]:
        """The objects an earlier run finished whose files are as its journal says.

        A written output must be a regular file inside DST with the recorded size and SHA-256; one that is not
        (deleted, truncated, changed) is removed (that path only) and the object is done again, so the damaged
        file never stands in the way of the new one. A quarantine record that is missing or differs is written
        again from the line.
        """
        done = finished_objects(journal_path)
        written = [r for r in done.values() if r.status == STATUS_WRITTEN]
        repaired = 0
        with ThreadPoolExecutor(VERIFY_THREADS) as pool:
            for start in range(0, len(written), VERIFY_SLICE):
                part = written[start:start + VERIFY_SLICE]
                checks = pool.map(lambda r: output_matches(self.dst, r.output, r.bytes_out, r.out_hash), part)
                for r, ok in zip(part, list(checks), strict=True):
                    if not ok:
                        remove_output(self.dst, r.output)
                        del done[r.object_id]
                        repaired += 1
        rewritten: list[str] = []
        for r in done.values():
            if r.status != STATUS_QUARANTINED:
                continue
            record = _quarantine_record(r)
            try:
                intact = quarantine_path(self.dst, r.object_id).read_bytes() == quarantine_bytes(record)
            except OSError:
                intact = False
            if not intact:
                write_quarantine(self.dst, record)
                rewritten.append(quarantine_path(Path(), r.object_id).as_posix())
        sync_dirs(self.dst, rewritten, self._named)
        if repaired or rewritten:
            log.warning("resume: %d finished outputs did not match the journal and are made again; "
                        "%d quarantine records were rewritten", repaired, len(rewritten))
        return done

    def _release(self, spec: SourceSpec, plan: Plan, executor: Any, manifest: Path,
                 finished: dict[str, ObjectResult]) -> Release:
        """Choose the release's transformation (:mod:`deidpipe.pipeline.release`) and set aside, decided now,
        the objects of the patients it suppresses (``skipped``) and those it could not count (quarantined)."""
        from deidpipe.pipeline.release import UNCOUNTED_REASON, choose_release
        from deidpipe.risk.archive import SUPPRESSED_REASON

        tasks = plan.tasks() if spec.random_access else self._stream_tasks(spec, plan)
        written_before = sum(r.status == STATUS_WRITTEN for r in finished.values())
        release = choose_release(self.policy, self.state.root, manifest, resume=self.resume,
                                 written_before=written_before, executor=executor, tasks=tasks,
                                 objects=plan.todo_count, reporter=self.reporter)
        plan.set_aside(release.suppressed_objects, SUPPRESSED_REASON)
        plan.set_aside(release.uncounted_objects, UNCOUNTED_REASON, quarantine=True)
        return release

    # -- the run ----------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[ObjectResult]:
        t_start = time.monotonic()
        spec = detect(self.src)
        run_number = self._prepare(spec)
        journal_path = self.state.journal
        finished = self._trusted_finished(journal_path) if self.resume else {}
        ctx = WorkContext(spec, str(self.dst), self.key, self.policy, self.layout)
        executor = open_pool(ctx, self.executor_name, self.workers, self.scheduler)
        _import_in_background("polars")  # the workers are started (forked without it) and index meanwhile
        report = RunReport(self.dst, spec.kind, executor.name, executor.workers, self.state.root)
        journal = Journal(journal_path, run_number)
        try:
            manifest = self._index(spec, executor)
            t_indexed = time.monotonic()
            report.index_s = t_indexed - t_start
            plan = Plan(manifest, set(finished), dedupe_instances=self.layout == LAYOUT_PSEUDONYM,
                        chunk=self.chunk, policy=self.policy)
            release = None
            if self.policy.risk_target is not None:
                release = self._release(spec, plan, executor, manifest, finished)
            written: list[str] = []  # object ids in the release (a risk target's check of what was written)
            for oid in plan.resumed_ids:
                r = finished[oid]
                r.resumed = True
                report.add(r)
                written += [oid] if r.status == STATUS_WRITTEN else []
                yield r
            decided = plan.decided()
            self._record(journal, decided)
            for r in decided:
                report.add(r)
                yield r
            self.reporter.start("de-identify", plan.todo_count)
            tasks = plan.tasks() if spec.random_access else self._stream_tasks(spec, plan)
            levels = release.level_tuple if release is not None else None
            for _, results in deidentify(_with_levels(tasks, levels), executor):
                self._record(journal, results)
                self.reporter.advance(len(results), sum(r.status == STATUS_QUARANTINED for r in results))
                for r in results:
                    report.add(r)
                    written += [r.object_id] if r.status == STATUS_WRITTEN else []
                    yield r
            self.reporter.finish()
            report.execute_s = time.monotonic() - t_indexed
            if release is not None:
                from deidpipe.pipeline.release import publish_release

                publish_release(release, self.policy, self.dst, written)
                report.release = release.figures
        finally:
            self.reporter.finish()
            journal.close()
            executor.close()
        write_audit(journal_path, self.dst / CONTROL_DIR / "audit.parquet")
        clean_temporaries(self.dst)  # the (empty) temporary folder goes: DST is left as it is to be shared
        self.state.finish()
        report.elapsed_s = time.monotonic() - t_start
        self.report = report


def _with_levels(tasks: Iterator[ExecTask], levels: tuple[tuple[str, int], ...] | None) -> Iterator[ExecTask]:
    """The tasks, each carrying the release's levels (None: no risk target)."""
    for task in tasks:
        task.levels = levels
        yield task


def iter_run(src: str | Path, dst: str | Path, policy: Policy | None = None, **kwargs: Any) -> Run:
    """An iterable of :class:`ObjectResult` as objects finish; its ``report`` is set when it is exhausted."""
    return Run(src, dst, policy, **kwargs)


def run(src: str | Path, dst: str | Path, policy: Policy | None = None, **kwargs: Any) -> RunReport:
    """De-identify the archive ``src`` into ``dst``; see :class:`Run` for the options."""
    r = Run(src, dst, policy, **kwargs)
    for _ in r:
        pass
    assert r.report is not None
    return r.report


__all__ = ["Run", "iter_run", "run"]
