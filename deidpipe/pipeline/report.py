"""What a run did: :class:`RunReport`, in counts (no identifying value), built from the objects' results.

Apart from the runner (:mod:`deidpipe.pipeline.runner`) so that the progress display and callers that only read a
report need not import the runner, its executors and the stages behind them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deidpipe.pipeline.audit import STATUS_DUPLICATE, STATUS_SKIPPED, STATUS_WRITTEN, ObjectResult
from deidpipe.pipeline.sink import CONTROL_DIR
from deidpipe.pipeline.state import StateDir


@dataclass
class RunReport:
    """What a run did, in counts (no identifying value)."""

    dst: Path
    source_kind: str
    executor: str
    workers: int
    #: The state folder (manifest, journal, run.json): outside DST, not to be released.
    state_dir: Path | None = None
    objects: int = 0
    written: int = 0
    quarantined: int = 0
    duplicates: int = 0
    skipped: int = 0
    resumed: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    index_s: float = 0.0
    execute_s: float = 0.0
    elapsed_s: float = 0.0
    #: With a risk target: the release's figures (levels, suppressed patients, loss, risk before and after).
    release: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.quarantined == 0

    @property
    def processed(self) -> int:
        return self.objects - self.resumed

    @property
    def files_per_s(self) -> float:
        return self.processed / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def manifest(self) -> Path:
        """The index, with every input's relative path: in the state folder, never under DST."""
        assert self.state_dir is not None
        return StateDir(self.state_dir).manifest

    @property
    def audit(self) -> Path:
        return self.dst / CONTROL_DIR / "audit.parquet"

    def add(self, r: ObjectResult) -> None:
        self.objects += 1
        if r.resumed:
            self.resumed += 1
        if r.status == STATUS_WRITTEN:
            self.written += 1
        elif r.status == STATUS_DUPLICATE:
            self.duplicates += 1
        elif r.status == STATUS_SKIPPED:
            self.skipped += 1
            reason = r.reason or "skipped"
            self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
        else:
            self.quarantined += 1
            reason = f"{r.stage}: {r.reason}"
            self.quarantined_by_reason[reason] = self.quarantined_by_reason.get(reason, 0) + 1
        if not r.resumed:
            self.bytes_in += r.bytes_in
            self.bytes_out += r.bytes_out
        for code, n in r.actions.items():
            self.actions[code] = self.actions.get(code, 0) + n
