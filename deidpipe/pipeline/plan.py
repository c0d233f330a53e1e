"""The plan: from the manifest, what each series needs, cut into tasks.

Every stage (:mod:`deidpipe.pipeline.registry`) says, from the facts the index recorded of a series
(:class:`~deidpipe.pipeline.contract.SeriesFacts`), whether the series needs it, and whether it works on one object
at a time (``object``) or on a whole series (``series``, e.g. defacing, which needs the volume). Header
de-identification is needed by every object.

The plan also settles, before anything runs and so identically for any number of workers:
  * files the index could not read: quarantined at stage ``index``; files that are not DICOM and do not look
    like it (sidecars: text, JSON, PNG, PDF): skipped there, ``not DICOM``, never copied;
  * entries the source listed but refused (hostile or broken archive members, unreadable folders): quarantined
    at stage ``source``; entries that are no object (links not followed, special files): skipped there;
  * DICOMDIR files: skipped (the output tree is rebuilt, their references would be wrong);
  * encapsulated documents (PDF, CDA, ...: by SOP class) under the policy's ``documents: skip``: skipped;
  * two inputs with the same SOP Instance UID (they would share an output path): the first by path is done, an
    identical copy is a ``duplicate``, a different one is quarantined.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deidpipe.documents import DOCUMENT_SOP_CLASSES, ENCAPSULATED_DOCUMENT
from deidpipe.pipeline.audit import (
    STATUS_DUPLICATE,
    STATUS_QUARANTINED,
    STATUS_SKIPPED,
    ObjectResult,
)
from deidpipe.pipeline.contract import SeriesFacts
from deidpipe.pipeline.index import (
    KIND_DICOM,
    KIND_DICOMDIR,
    KIND_INVALID,
    KIND_NOT_DICOM,
    KIND_REJECTED,
    KIND_SKIPPED,
)
from deidpipe.pipeline.registry import needed_stages, needs_whole_series
from deidpipe.pipeline.source import SourceItem

if TYPE_CHECKING:  # pragma: no cover - polars is imported where a table is read (see pipeline/tables.py)
    import polars as pl

    from deidpipe.policy import Policy

@dataclass(frozen=True)
class ExecItem:
    object_id: str
    item: SourceItem  # relative path, size, and the bytes for a streamed source
    content_hash: str | None
    series_uid: str | None
    #: The file's modification time when it was indexed (folder sources): if it and the size still match when
    #: the object is read again, the bytes are the ones the content hash was computed from.
    mtime_ns: int | None = None


@dataclass
class ExecTask:
    """Objects of one series (all of it for a series-scope stage, else a chunk) and the stages they need."""

    series_uid: str | None
    stages: tuple[str, ...]
    items: list[ExecItem] = field(default_factory=list)
    #: The release's generalisation levels (a policy's ``risk_target``), chosen by the run after the index.
    levels: tuple[tuple[str, int], ...] | None = None

    @property
    def object_ids(self) -> list[str]:
        return [i.object_id for i in self.items]


_PLAN_COLUMNS = [
    "path",
    "object_id",
    "size",
    "mtime_ns",
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
    "head_hint",
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
        policy: Policy,
    ) -> None:
        self.policy = policy
        import polars as pl

        frame = pl.read_parquet(manifest, columns=_PLAN_COLUMNS)
        self.resumed_ids: list[str] = []
        if finished:
            done = pl.DataFrame({"object_id": list(finished)}, schema={"object_id": pl.String})
            self.resumed_ids = frame.join(done, on="object_id", how="semi")["object_id"].to_list()
            frame = frame.join(done, on="object_id", how="anti")
        self.chunk = chunk
        self._decided: list[ObjectResult] = []
        self._decide_invalid(frame.filter(pl.col("kind") == KIND_INVALID))
        self._decide_invalid(frame.filter(pl.col("kind") == KIND_REJECTED), stage="source")
        self._decide_skipped(frame.filter(pl.col("kind") == KIND_SKIPPED), stage="source")
        self._decide_skipped(frame.filter(pl.col("kind") == KIND_DICOMDIR))
        self._decide_skipped(frame.filter(pl.col("kind") == KIND_NOT_DICOM), stage="index")
        todo = frame.filter(pl.col("kind") == KIND_DICOM).sort("path")
        if policy.documents == "skip":
            documents = pl.col("sop_class_uid").is_in(list(DOCUMENT_SOP_CLASSES))
            self._decide_skipped(todo.filter(documents).with_columns(reason=pl.lit(ENCAPSULATED_DOCUMENT)))
            todo = todo.filter(~documents.fill_null(False))
        if dedupe_instances:
            todo = self._decide_duplicates(todo)
        else:
            todo = todo.with_columns(_group=pl.col("series_uid"), _instance=pl.col("object_id"))
        # Inputs that share a SOP instance but differ in content stay together, in path order, in one task:
        # the first that succeeds is written, the others then meet a different finished file and are
        # quarantined; the outcome never depends on which worker runs first.
        self._todo = todo.sort(["_group", "_instance", "path"], nulls_last=True)
        counts = self._todo.group_by("_instance").len()
        self.conflict_ids: set[str] = set(
            self._todo.join(counts.filter(pl.col("len") > 1), on="_instance", how="semi")["object_id"]
        )
        self.stages_by_series: dict[str | None, tuple[str, ...]] = {}
        for (series,), rows in self._todo.group_by(["series_uid"], maintain_order=True):
            self.stages_by_series[series] = needed_stages(SeriesFacts.from_columns(rows), policy)
        for (group,), rows in self._todo.group_by(["_group"], maintain_order=True):
            if group not in self.stages_by_series:
                self.stages_by_series[group] = needed_stages(SeriesFacts.from_columns(rows), policy)

    # -- outcomes decided without running anything ------------------------------------------------------
    def _decide_invalid(self, rows: pl.DataFrame, stage: str = "index") -> None:
        for r in rows.select("object_id", "content_hash", "size", "reason").iter_rows(named=True):
            self._decided.append(
                ObjectResult(
                    r["object_id"], STATUS_QUARANTINED, r["content_hash"], stage=stage,
                    reason=r["reason"] or "unreadable", bytes_in=max(r["size"] or 0, 0),
                )
            )

    def _decide_skipped(self, rows: pl.DataFrame, stage: str = "plan") -> None:
        for r in rows.select("object_id", "content_hash", "size", "reason").iter_rows(named=True):
            self._decided.append(
                ObjectResult(r["object_id"], STATUS_SKIPPED, r["content_hash"], stage=stage,
                             reason=r["reason"], bytes_in=r["size"] or 0)
            )

    def _decide_duplicates(self, todo: pl.DataFrame) -> pl.DataFrame:
        """Byte-identical copies of one SOP instance are ``duplicate`` (the first by path is done). Copies that
        differ are all kept, grouped with the series of the first so that they run in one task."""
        import polars as pl

        ranked = todo.with_columns(
            _instance=pl.coalesce(pl.col("instance_uid"), pl.col("object_id")),
            _copy=pl.int_range(pl.len()).over(pl.coalesce("instance_uid", "object_id"), "content_hash"),
        ).with_columns(_group=pl.col("series_uid").first().over("_instance"))
        cols = ("object_id", "content_hash", "size", "series_uid")
        for r in ranked.filter(pl.col("_copy") > 0).select(cols).iter_rows(named=True):
            self._decided.append(
                ObjectResult(
                    r["object_id"], STATUS_DUPLICATE, r["content_hash"],
                    reason="identical copy of another input (same SOP Instance UID, same bytes)",
                    bytes_in=r["size"] or 0, series_uid=r["series_uid"],
                )
            )
        return ranked.filter(pl.col("_copy") == 0).drop("_copy")

    def decided(self) -> list[ObjectResult]:
        return self._decided

    def set_aside(self, object_ids: set[str] | frozenset[str], reason: str, *, quarantine: bool = False) -> None:
        """Decide these objects now (stage ``risk``): ``skipped`` (a release's risk target suppressed their
        patients), or quarantined (they could not be counted for it); they join :meth:`decided`."""
        import polars as pl

        if not object_ids:
            return
        chosen = pl.col("object_id").is_in(sorted(object_ids))
        rows = self._todo.filter(chosen).with_columns(reason=pl.lit(reason))
        if quarantine:
            self._decide_invalid(rows, stage="risk")
        else:
            self._decide_skipped(rows, stage="risk")
        self._todo = self._todo.filter(~chosen)

    # -- work ---------------------------------------------------------------------------------------------
    @property
    def todo_count(self) -> int:
        return self._todo.height

    @property
    def todo_bytes(self) -> int:
        return int(self._todo["size"].sum() or 0)

    def todo_items(self) -> dict[str, tuple[str | None, str | None, str | None]]:
        """object id -> (task group, content hash, series pseudonym) for a streamed source."""
        t = self._todo
        return dict(zip(t["object_id"], zip(t["_group"], t["content_hash"], t["series_uid"], strict=True),
                        strict=True))

    def instance_of(self) -> dict[str, str]:
        """object id -> SOP instance group, for the objects in :attr:`conflict_ids`."""
        import polars as pl

        ids = pl.DataFrame({"object_id": sorted(self.conflict_ids)}, schema={"object_id": pl.String})
        t = self._todo.join(ids, on="object_id", how="semi")
        return dict(zip(t["object_id"], t["_instance"], strict=True))

    def tasks(self) -> Iterator[ExecTask]:
        """Series tasks for a random-access source: a whole series when a series-scope stage is needed, else
        chunks of about ``chunk`` objects of one series (never splitting the copies of one SOP instance)."""
        for (group,), rows in self._todo.group_by(["_group"], maintain_order=True):
            stages = self.stages_by_series[group]
            whole = needs_whole_series(stages)
            task = ExecTask(group, stages)
            last_instance = None
            cols = ("object_id", "path", "size", "content_hash", "series_uid", "_instance", "mtime_ns")
            for oid, path, size, chash, series, instance, mtime_ns in rows.select(cols).iter_rows():
                if not whole and len(task.items) >= self.chunk and instance != last_instance:
                    yield task
                    task = ExecTask(group, stages)
                task.items.append(ExecItem(oid, SourceItem(path, size), chash, series, mtime_ns))
                last_instance = instance
            if task.items:
                yield task
