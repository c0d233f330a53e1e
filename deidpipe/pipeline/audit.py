"""The audit: a crash-safe journal while running, one Parquet row per object at the end.

The journal (``journal.jsonl`` in the state folder, outside DST: :mod:`deidpipe.pipeline.state`) gets one JSON line
per finished object, flushed and fsynced per batch of results, and written only once the files the line speaks of
are durable (the runner's order: output or quarantine record synced, then the line). A crash loses at most the lines
of the batch in hand, whose objects are simply done again; a torn last line is ignored. ``--resume`` reads it to
skip finished objects (the runner checks their files first). At the end of a run the journal becomes
``DST/_deidpipe/audit.parquet`` (safe to release with the objects): the latest record of each object, sorted by
object id.

A record holds hashes, pseudonymised output paths, timings, action counts and fixed reasons: no input path and no
original value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from deidpipe.durable import fsync_dir
from deidpipe.pipeline.tables import polars_schema

STATUS_WRITTEN = "written"  # de-identified and written (or an identical file was already there)
STATUS_QUARANTINED = "quarantined"  # a stage failed: a record in DST/quarantine, nothing written
STATUS_DUPLICATE = "duplicate"  # same SOP instance and same bytes as another input: written once
STATUS_SKIPPED = "skipped"  # deliberately not carried over (a DICOMDIR, a link, a FIFO, socket or device)
FINAL_STATUSES = (STATUS_WRITTEN, STATUS_QUARANTINED, STATUS_DUPLICATE, STATUS_SKIPPED)


@dataclass
class ObjectResult:
    """What happened to one input object. Carries hashes, pseudonyms and counts only."""

    object_id: str
    status: str
    content_hash: str | None = None
    stage: str | None = None  # the stage that failed, for a quarantined object
    reason: str | None = None
    output: str | None = None  # path relative to DST
    bytes_in: int = 0
    bytes_out: int = 0
    out_hash: str | None = None
    series_uid: str | None = None  # pseudonym
    timings_ms: dict[str, float] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    resumed: bool = False  # finished by an earlier run and skipped by this one

    def to_record(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict deep-copies every value, a measurable cost per object in the parent.
        rec = {name: getattr(self, name) for name in _RECORD_FIELDS}
        rec["timings_ms"] = json.dumps({k: round(v, 3) for k, v in sorted(self.timings_ms.items())})
        rec["actions"] = json.dumps(dict(sorted(self.actions.items())))
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> ObjectResult:
        rec = dict(rec)
        rec["timings_ms"] = json.loads(rec.get("timings_ms") or "{}")
        rec["actions"] = json.loads(rec.get("actions") or "{}")
        rec.pop("run", None)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in rec.items() if k in known})


#: The fields of a journal record: every field of :class:`ObjectResult` but ``resumed``.
_RECORD_FIELDS = tuple(f.name for f in fields(ObjectResult) if f.name != "resumed")

#: Column -> polars type name (see :mod:`deidpipe.pipeline.tables`).
AUDIT_SCHEMA: dict[str, str] = {
    "object_id": "String",
    "status": "String",
    "content_hash": "String",
    "stage": "String",
    "reason": "String",
    "output": "String",
    "bytes_in": "Int64",
    "bytes_out": "Int64",
    "out_hash": "String",
    "series_uid": "String",
    "timings_ms": "String",
    "actions": "String",
    "run": "Int64",
}


class Journal:
    """Append-only JSON lines, flushed and fsynced after every batch."""

    def __init__(self, path: Path, run_number: int) -> None:
        self.path = path
        self.run_number = run_number
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        created = not path.exists()
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if created:  # the journal's own name must survive a power cut, or every line in it is lost
            fsync_dir(path.parent)

    def _repair_tail(self) -> None:
        """A kill can leave a torn last line; cut it so the next append starts on a fresh line."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            data_end = fh.seek(0, os.SEEK_END)
            pos = data_end
            while pos > 0:
                step = min(65536, pos)
                fh.seek(pos - step)
                chunk = fh.read(step)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    fh.truncate(pos - step + nl + 1)
                    return
                pos -= step
            fh.truncate(0)

    def write(self, results: Iterable[ObjectResult]) -> None:
        for r in results:
            rec = r.to_record()
            rec["run"] = self.run_number
            self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())  # one sync per batch: what the journal says is done stays said

    def close(self) -> None:
        self._fh.close()


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a journal (a torn or garbled line is ignored)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def finished_objects(path: Path) -> dict[str, ObjectResult]:
    """The latest record of each object a previous run finished, keyed by object id. Not checked against the
    output tree: the runner verifies (and repairs) before it trusts one."""
    latest: dict[str, dict[str, Any]] = {}
    for rec in read_journal(path):
        latest[rec["object_id"]] = rec
    return {oid: ObjectResult.from_record(rec) for oid, rec in latest.items()
            if rec.get("status") in FINAL_STATUSES}


def write_audit(journal: Path, out: Path) -> Path:
    """The latest record of each object, as Parquet, sorted by object id."""
    import polars as pl

    tmp = out.with_suffix(".parquet.tmp")
    if journal.exists() and journal.stat().st_size:
        frame = pl.scan_ndjson(journal, schema=polars_schema(AUDIT_SCHEMA))
        (
            frame.with_row_index("_line")
            .filter(pl.col("_line") == pl.col("_line").max().over("object_id"))
            .drop("_line")
            .sort("object_id")
            .sink_parquet(tmp)
        )
    else:
        pl.DataFrame(schema=polars_schema(AUDIT_SCHEMA)).write_parquet(tmp)
    tmp.replace(out)
    return out
