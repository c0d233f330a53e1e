"""The plan: from the manifest, what each series needs, cut into tasks.

Every stage declares, by manifest columns, whether a series needs it, and whether it works on one object at a
time (``object``) or on a whole series (``series``, e.g. defacing, which needs the volume). Header
de-identification is needed by every object; the pixel-text and defacing stages of later issues register here
with their own ``needed`` test and a worker function in :mod:`deidpipe.pipeline.execute`, and nothing else in
the pipeline changes.

The plan also settles, before anything runs and so identically for any number of workers:
  * files the index could not read: quarantined at stage ``index``;
  * DICOMDIR files: skipped (the output tree is rebuilt, their references would be wrong);
  * two inputs with the same SOP Instance UID (they would share an output path): the first by path is done, an
    identical copy is a ``duplicate``, a different one is quarantined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from deidpipe.pipeline.audit import (
    STATUS_DUPLICATE,
    STATUS_QUARANTINED,
    STATUS_SKIPPED,
    ObjectResult,
)
from deidpipe.pipeline.index import KIND_DICOM, KIND_DICOMDIR, KIND_INVALID
from deidpipe.pipeline.source import SourceItem

SCOPE_OBJECT = "object"
SCOPE_SERIES = "series"


@dataclass(frozen=True)
class Stage:
    name: str
    scope: str
    needed: Callable[[pl.DataFrame], bool]


#: In execution order. Later issues append ("pixel_text", SCOPE_OBJECT, ...), ("deface", SCOPE_SERIES, ...).
STAGES: list[Stage] = [
    Stage("header", SCOPE_OBJECT, lambda rows: True),
]


@dataclass(frozen=True)
class ExecItem:
    object_id: str
    item: SourceItem  # relative path, size, and the bytes for a streamed source
    content_hash: str | None
    series_uid: str | None


@dataclass
class ExecTask:
    """Objects of one series (all of it for a series-scope stage, else a chunk) and the stages they need."""

    series_uid: str | None
    stages: tuple[str, ...]
    items: list[ExecItem] = field(default_factory=list)

    @property
    def object_ids(self) -> list[str]:
        return [i.object_id for i in self.items]


_PLAN_COLUMNS = [
    "path",
    "object_id",
    "size",
    "content_hash",
    "kind",
    "reason",
    "series_uid",
    "instance_uid",
    "modality",
    "sop_class_uid",
    "burned_in_annotation",
    "rows",
    "columns",
    "frames",
]


class Plan:
    """Decided outcomes and series tasks for one run."""

    def __init__(
        self,
        manifest: Path,
        finished: set[str] | frozenset[str] = frozenset(),
        *,
        dedupe_instances: bool = True,
        chunk: int = 32,
    ) -> None:
        frame = pl.read_parquet(manifest, columns=_PLAN_COLUMNS)
        self.resumed_ids: list[str] = []
        if finished:
            done = pl.col("object_id").is_in(pl.Series(list(finished), dtype=pl.String))
            self.resumed_ids = frame.filter(done)["object_id"].to_list()
            frame = frame.filter(~done)
        self.chunk = chunk
        self._decided: list[ObjectResult] = []
        self._decide_invalid(frame.filter(pl.col("kind") == KIND_INVALID))
        self._decide_dicomdir(frame.filter(pl.col("kind") == KIND_DICOMDIR))
        todo = frame.filter(pl.col("kind") == KIND_DICOM)
        if dedupe_instances:
            todo = self._decide_duplicates(todo)
        self._todo = todo.sort(["series_uid", "path"], nulls_last=True)
        self.stages_by_series: dict[str | None, tuple[str, ...]] = {}
        for (series,), rows in self._todo.group_by(["series_uid"], maintain_order=True):
            self.stages_by_series[series] = tuple(s.name for s in STAGES if s.needed(rows))

    # -- outcomes decided without running anything ------------------------------------------------------
    def _decide_invalid(self, rows: pl.DataFrame) -> None:
        for r in rows.select("object_id", "content_hash", "size", "reason").iter_rows(named=True):
            self._decided.append(
                ObjectResult(
                    r["object_id"], STATUS_QUARANTINED, r["content_hash"], stage="index",
                    reason=r["reason"] or "unreadable", bytes_in=max(r["size"] or 0, 0),
                )
            )

    def _decide_dicomdir(self, rows: pl.DataFrame) -> None:
        for r in rows.select("object_id", "content_hash", "size", "reason").iter_rows(named=True):
            self._decided.append(
                ObjectResult(r["object_id"], STATUS_SKIPPED, r["content_hash"], stage="plan",
                             reason=r["reason"], bytes_in=r["size"] or 0)
            )

    def _decide_duplicates(self, todo: pl.DataFrame) -> pl.DataFrame:
        ranked = todo.sort("path").with_columns(
            _rank=pl.int_range(pl.len()).over("instance_uid"),
            _first_hash=pl.col("content_hash").first().over("instance_uid"),
        )
        dup_filter = pl.col("instance_uid").is_not_null() & (pl.col("_rank") > 0)
        cols = ("object_id", "content_hash", "size", "series_uid", "_first_hash")
        for r in ranked.filter(dup_filter).select(cols).iter_rows(named=True):
            same = r["content_hash"] == r["_first_hash"]
            self._decided.append(
                ObjectResult(
                    r["object_id"],
                    STATUS_DUPLICATE if same else STATUS_QUARANTINED,
                    r["content_hash"],
                    stage=None if same else "plan",
                    reason=(
                        "identical copy of another input (same SOP Instance UID, same bytes)"
                        if same
                        else "another input has the same SOP Instance UID and different content"
                    ),
                    bytes_in=r["size"] or 0,
                    series_uid=r["series_uid"],
                )
            )
        return ranked.filter(~dup_filter).drop("_rank", "_first_hash")

    def decided(self) -> list[ObjectResult]:
        return self._decided

    # -- work ---------------------------------------------------------------------------------------------
    @property
    def todo_count(self) -> int:
        return self._todo.height

    @property
    def todo_bytes(self) -> int:
        return int(self._todo["size"].sum() or 0)

    def todo_items(self) -> dict[str, tuple[str | None, str | None]]:
        """object id -> (series pseudonym, content hash), for a streamed source whose tasks follow the stream."""
        t = self._todo
        return dict(zip(t["object_id"], zip(t["series_uid"], t["content_hash"], strict=True), strict=True))

    def tasks(self) -> Iterator[ExecTask]:
        """Series tasks for a random-access source: a whole series when a series-scope stage is needed, else
        chunks of ``chunk`` objects of one series."""
        scope = {s.name: s.scope for s in STAGES}
        for (series,), rows in self._todo.group_by(["series_uid"], maintain_order=True):
            stages = self.stages_by_series[series]
            whole = any(scope[s] == SCOPE_SERIES for s in stages)
            task = ExecTask(series, stages)
            for r in rows.select("object_id", "path", "size", "content_hash").iter_rows():
                task.items.append(ExecItem(r[0], SourceItem(r[1], r[2]), r[3], series))
                if not whole and len(task.items) >= self.chunk:
                    yield task
                    task = ExecTask(series, stages)
            if task.items:
                yield task
