"""Running tasks, the worker side: what a task does to its objects. The executors that run tasks (in process,
local pool, Dask) are in :mod:`deidpipe.pipeline.executors`.

Workers need no shared state: a :class:`WorkContext` (source, destination, policy and project key, all
picklable) is installed once per worker process, and every pseudonym is derived from the key. Results come back as
small :class:`ObjectResult` records; de-identified bytes are written by the worker itself.

A task never raises for a bad object: the object is quarantined with a fixed reason and the task goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pydicom.dataset import Dataset

from deidpipe import errors
from deidpipe.dicomio import encode_dataset, read_dataset
from deidpipe.errors import InputError, SkippedError
from deidpipe.header.engine import reads_private_elements
from deidpipe.keys import ProjectKey
from deidpipe.pipeline.audit import STATUS_QUARANTINED, STATUS_SKIPPED, STATUS_WRITTEN, ObjectResult
from deidpipe.pipeline.budget import BUDGET_REASON, Budget, ObjectTimeout, default_object_budget
from deidpipe.pipeline.contract import SCOPE_SERIES, Stage
from deidpipe.pipeline.index import content_hash, index_batch
from deidpipe.pipeline.plan import ExecItem, ExecTask
from deidpipe.pipeline.registry import stage_named
from deidpipe.pipeline.sink import discard_staged, flush_staged, output_digest, output_relpath, publish, stage_output
from deidpipe.pipeline.source import (
    MAX_MEMBER_BYTES,
    SourceItem,
    SourceSpec,
    member_path,
    open_regular,
    prefetch,
    read_member,
)
from deidpipe.policy import Policy

log = logging.getLogger("deidpipe.pipeline")


@dataclass(frozen=True)
class WorkContext:
    source: SourceSpec
    dst: str
    key: ProjectKey
    policy: Policy
    layout: str
    #: Seconds each object may take to read and de-identify (see :mod:`deidpipe.pipeline.budget`).
    object_budget_s: float = field(default_factory=default_object_budget)


def reason_of(exc: BaseException) -> str:
    """A reason that is safe to log (:func:`deidpipe.errors.reason_of`), the time budget's included."""
    return BUDGET_REASON if isinstance(exc, ObjectTimeout) else errors.reason_of(exc)


@dataclass
class _Work:
    item: ExecItem
    result: ObjectResult
    ds: Dataset | None = None
    source: Dataset | None = None
    budget: Budget = field(default_factory=lambda: Budget(0.0))


def _within_budget(w: _Work, stage: str, step: Callable[..., None], *args: Any) -> None:
    """Run ``step(*args)``, one step (read or stage) of ``w``, within what is left of its time budget; an object
    over its budget is quarantined with that reason at the step that ran over."""
    try:
        with w.budget.running():
            step(*args)
    except ObjectTimeout as exc:
        _quarantine(w, stage, exc)


def _series_within_budget(works: list[_Work], stage: Stage, ctx: WorkContext) -> None:
    """A series stage within the budgets of the objects it takes, together; over them, all are quarantined."""
    live = [w for w in works if w.ds is not None]
    try:
        with Budget(ctx.object_budget_s * len(live)).running():
            _apply_series_stage(works, stage, ctx)
    except ObjectTimeout as exc:
        for w in live:
            _quarantine(w, stage.name, exc)


def _quarantine(w: _Work, stage: str, exc: BaseException) -> None:
    """The object is not written: quarantined, or skipped when a stage set it aside on purpose (SkippedError)."""
    w.result.status = STATUS_SKIPPED if isinstance(exc, SkippedError) else STATUS_QUARANTINED
    w.result.stage = stage
    w.result.reason = reason_of(exc)
    w.ds = None
    w.source = None


def _read_file(path: str, size: int) -> tuple[bytes, int]:
    """At most ``size + 1`` bytes of a file (one more than the index saw tells that it grew) and its mtime
    after reading. Opened as a regular file only (a FIFO swapped in since the index would block a read)."""
    with open_regular(path, buffering=0) as fh:
        parts = []
        left = size + 1
        while left > 0:
            chunk = fh.read(left)
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        mtime_ns = os.fstat(fh.fileno()).st_mtime_ns
    return (parts[0] if len(parts) == 1 else b"".join(parts)), mtime_ns


def _read_input(w: _Work, ctx: WorkContext) -> bytes:
    """The object's bytes, checked to be the ones the index hashed; the audit's content hash is set.

    A folder member whose size and mtime are those the index recorded (before it hashed the file; here they are
    taken after reading) has not been written to since: the manifest's hash stands and the bytes are not hashed
    again. Anything else (archives, a file whose stat changed) is hashed and compared.
    """
    item = w.item
    path = member_path(ctx.source, item.item)
    if path is not None and item.mtime_ns is not None and item.content_hash is not None and item.item.size >= 0:
        if item.item.size > MAX_MEMBER_BYTES:
            raise InputError(None, "file is too large to be a DICOM object this pipeline handles")
        try:
            data, mtime_ns = _read_file(path, item.item.size)
        except OSError as exc:
            raise InputError(None, f"cannot be read ({type(exc).__name__})") from None
        w.result.bytes_in = len(data)
        if (len(data) != item.item.size or mtime_ns != item.mtime_ns) and (
                content_hash(ctx.key, data) != item.content_hash):
            raise InputError(None, "input changed after it was indexed")
        w.result.content_hash = item.content_hash
        return data
    data = read_member(ctx.source, item.item)
    w.result.bytes_in = len(data)
    digest = content_hash(ctx.key, data)
    if item.content_hash is not None and digest != item.content_hash:
        raise InputError(None, "input changed after it was indexed")
    w.result.content_hash = digest
    return data


def _read(w: _Work, ctx: WorkContext, keep_source: bool = False) -> None:
    """Read the object for its stages. Where no stage reads the original object (``keep_source``) and the
    header stage removes private elements unread, they are not built (see :func:`reads_private_elements`)."""
    t0 = time.perf_counter()
    try:
        data = _read_input(w, ctx)
        w.ds = read_dataset(data, leave_out_private=not keep_source and not reads_private_elements(ctx.policy))
        if keep_source:  # a later stage reads the original header values; held only then (memory, GC)
            w.source = w.ds
    except Exception as exc:  # noqa: BLE001 - every failure quarantines the object, the batch goes on
        _quarantine(w, "read", exc)
    w.result.timings_ms["read"] = (time.perf_counter() - t0) * 1e3


def _apply_object_stage(w: _Work, stage: Stage, ctx: WorkContext) -> None:
    t0 = time.perf_counter()
    try:
        w.ds, actions = stage.run(w.ds, ctx.policy, ctx.key, w.source)
        for code, n in actions.items():
            w.result.actions[code] = w.result.actions.get(code, 0) + int(n)
    except Exception as exc:  # noqa: BLE001
        _quarantine(w, stage.name, exc)
    w.result.timings_ms[stage.name] = (time.perf_counter() - t0) * 1e3


def _apply_series_stage(works: list[_Work], stage: Stage, ctx: WorkContext) -> None:
    live = [w for w in works if w.ds is not None]
    t0 = time.perf_counter()
    try:
        outputs = stage.run([w.ds for w in live], ctx.policy, ctx.key, [w.source for w in live])
        for w, (ds, actions) in zip(live, outputs, strict=True):
            w.ds = ds
            for code, n in actions.items():
                w.result.actions[code] = w.result.actions.get(code, 0) + int(n)
    except Exception as exc:  # noqa: BLE001 - a series stage fails for the whole series
        for w in live:
            _quarantine(w, stage.name, exc)
    per = (time.perf_counter() - t0) * 1e3 / max(len(live), 1)
    for w in live:
        w.result.timings_ms[stage.name] = per


class _Staged(NamedTuple):
    """An object's output, written to a temporary file and waiting for the task's flush (see :func:`_publish`)."""

    work: _Work
    relpath: str
    tmp: Path
    size: int
    digest: str


def _stage(w: _Work, ctx: WorkContext) -> _Staged | None:
    """Encode the object and write it to a temporary file; the data set is let go either way."""
    t0 = time.perf_counter()
    staged = None
    try:
        rel = output_relpath(w.ds, ctx.layout, w.item.item.relpath)
        parts = encode_dataset(w.ds)  # the file in pieces: native pixel data is never copied
        tmp = stage_output(Path(ctx.dst), parts, w.item.object_id)
        staged = _Staged(w, rel, tmp, sum(len(p) for p in parts), output_digest(parts))
    except Exception as exc:  # noqa: BLE001
        _quarantine(w, "write", exc)
    w.ds = None
    w.source = None
    w.result.timings_ms["write"] = (time.perf_counter() - t0) * 1e3
    return staged


def _publish(staged: list[_Staged], ctx: WorkContext) -> None:
    """Make a task's staged outputs durable in one flush, then link each into place (see
    :func:`deidpipe.pipeline.sink.flush_staged`). An object counts as written only once its file has its name."""
    if not staged:
        return
    t0 = time.perf_counter()
    dst = Path(ctx.dst)
    try:
        flush_staged(dst, [s.tmp for s in staged])
    except Exception as exc:  # noqa: BLE001 - nothing is linked: every object of the flush is quarantined
        for s in staged:
            discard_staged(s.tmp)
            _quarantine(s.work, "write", exc)
        return
    for s in staged:
        try:
            publish(dst, s.relpath, s.tmp)
        except Exception as exc:  # noqa: BLE001
            _quarantine(s.work, "write", exc)
            continue
        result = s.work.result
        result.status, result.output, result.bytes_out, result.out_hash = STATUS_WRITTEN, s.relpath, s.size, s.digest
    share = (time.perf_counter() - t0) * 1e3 / len(staged)
    for s in staged:
        s.work.result.timings_ms["write"] = s.work.result.timings_ms.get("write", 0.0) + share


def _new_work(item: ExecItem, ctx: WorkContext) -> _Work:
    return _Work(item, ObjectResult(item.object_id, STATUS_QUARANTINED, item.content_hash,
                                    series_uid=item.series_uid, bytes_in=max(item.item.size, 0)),
                 budget=Budget(ctx.object_budget_s))


#: The last context given levels: (the context it came from, the levels, the context with them). The original
#: is held, and compared by identity, so that a later run's context can never be taken for it.
_RELEASED: tuple[WorkContext, tuple[tuple[str, int], ...], WorkContext] | None = None


def _with_levels(ctx: WorkContext, levels: tuple[tuple[str, int], ...] | None) -> WorkContext:
    """``ctx`` with the release's chosen levels in its policy's risk target (one copy per worker and choice)."""
    global _RELEASED
    if levels is None or ctx.policy.risk_target is None:
        return ctx
    if _RELEASED is None or _RELEASED[0] is not ctx or _RELEASED[1] != levels:
        target = ctx.policy.risk_target.with_levels(dict(levels))
        policy = dataclasses.replace(ctx.policy, risk_target=target)
        _RELEASED = (ctx, levels, dataclasses.replace(ctx, policy=policy))
    return _RELEASED[2]


def exec_task(ctx: WorkContext, task: ExecTask) -> list[ObjectResult]:
    """Run one series task; never raises for a bad object (it is quarantined)."""
    ctx = _with_levels(ctx, task.levels)
    stages = [stage_named(name) for name in task.stages]
    keep_source = any(stage.needs_source for stage in stages)
    prefetch(ctx.source, [i.item for i in task.items])
    if all(stage.scope != SCOPE_SERIES for stage in stages):
        out, pending = [], []
        for item in task.items:  # one object in memory at a time
            w = _new_work(item, ctx)
            _within_budget(w, "read", _read, w, ctx, keep_source)
            for stage in stages:
                if w.ds is None:
                    break
                _within_budget(w, stage.name, _apply_object_stage, w, stage, ctx)
            if w.ds is not None and (staged := _stage(w, ctx)) is not None:
                pending.append(staged)
            out.append(w.result)
        _publish(pending, ctx)
        return out
    works = [_new_work(item, ctx) for item in task.items]
    for w in works:
        _within_budget(w, "read", _read, w, ctx, keep_source)
    for stage in stages:
        if stage.scope == SCOPE_SERIES:
            _series_within_budget(works, stage, ctx)
        else:
            for w in works:
                if w.ds is not None:
                    _within_budget(w, stage.name, _apply_object_stage, w, stage, ctx)
    _publish([staged for w in works if w.ds is not None and (staged := _stage(w, ctx)) is not None], ctx)
    return [w.result for w in works]


def index_task(ctx: WorkContext, items: list[SourceItem]) -> list[dict[str, Any]]:
    return index_batch(ctx.source, ctx.key, items)


def labels_task(ctx: WorkContext, items: list[ExecItem]) -> list[tuple[str, dict[str, Any] | None]]:
    """For a release with a risk target: each object's quasi-identifier labels as the header stage writes them
    (:func:`deidpipe.risk.archive.object_labels`), or None where it cannot be read or scrubbed (the object is
    then quarantined by its task, and is in no patient's row)."""
    from deidpipe.risk.archive import object_labels

    target = ctx.policy.risk_target
    assert target is not None
    header = stage_named("header")
    out: list[tuple[str, dict[str, Any] | None]] = []
    prefetch(ctx.source, [i.item for i in items])
    for item in items:
        w = _new_work(item, ctx)
        _within_budget(w, "read", _read, w, ctx)
        if w.ds is not None:
            _within_budget(w, header.name, _apply_object_stage, w, header, ctx)
        out.append((item.object_id, object_labels(w.ds, ctx.key, target) if w.ds is not None else None))
    return out
