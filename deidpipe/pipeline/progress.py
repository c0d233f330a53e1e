"""Progress on the terminal (a rich bar with objects/s and ETA) or plain periodic lines when not a TTY, and the
summary table at the end. Only counts, rates and fixed reasons are shown: never a path or a value."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from deidpipe.pipeline.report import RunReport


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} obj/s" if speed else "- obj/s", style="progress.data.speed")


class Reporter:
    """Phase-by-phase progress. ``mode`` is "rich", "plain" or "off"."""

    def __init__(self, mode: str = "off", stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.mode = mode
        self.stream = stream or sys.stderr
        self.interval = interval
        self._progress: Progress | None = None
        self._task: int | None = None
        self._phase = ""
        self._total: int | None = None
        self._done = 0
        self._quarantined = 0
        self._t0 = 0.0
        self._last = 0.0

    @classmethod
    def auto(cls, stream: TextIO | None = None) -> Reporter:
        stream = stream or sys.stderr
        return cls("rich" if Console(file=stream).is_terminal else "plain", stream)

    def start(self, phase: str, total: int | None) -> None:
        self.finish()
        self._phase, self._total, self._done, self._quarantined = phase, total, 0, 0
        self._t0 = self._last = time.monotonic()
        if self.mode == "rich":
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TextColumn("quarantined {task.fields[quarantined]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(phase, total=total, quarantined=0)
        elif self.mode == "plain":
            self._line(force=True)

    def advance(self, n: int = 1, quarantined: int = 0) -> None:
        self._done += n
        self._quarantined += quarantined
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, quarantined=self._quarantined)
        elif self.mode == "plain":
            self._line()

    def _line(self, force: bool = False, final: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self._t0, 1e-9)
        rate = self._done / elapsed
        parts = [f"deidpipe: {self._phase}", f"{self._done:,}" + (f"/{self._total:,}" if self._total else "")]
        if self._total:
            parts.append(f"({100.0 * self._done / self._total:.1f}%)")
        parts.append(f"{rate:,.1f} obj/s")
        if self._total and not final and rate > 0:
            parts.append(f"ETA {_hms((self._total - self._done) / rate)}")
        if final:
            parts.append(f"in {_hms(elapsed)}")
        parts.append(f"quarantined {self._quarantined:,}")
        print(" ".join(parts), file=self.stream, flush=True)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None
        elif self.mode == "plain" and self._phase:
            self._line(force=True, final=True)
        self._phase = ""


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def summary_table(report: RunReport) -> Table:
    """The end-of-run summary: counts, quarantine by reason, bytes and throughput."""
    table = Table(title="deidpipe run", show_header=True, header_style="bold")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("objects in source", f"{report.objects:,}"),
        ("written", f"{report.written:,}"),
        ("duplicates (identical copies)", f"{report.duplicates:,}"),
        ("skipped (not DICOM, DICOMDIR, links, ...)", f"{report.skipped:,}"),
    ]
    for reason, n in sorted(report.skipped_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append((f"  {reason[:60]}", f"{n:,}"))
    rows += [
        ("finished by an earlier run", f"{report.resumed:,}"),
        ("quarantined", f"{report.quarantined:,}"),
    ]
    for reason, n in sorted(report.quarantined_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append((f"  {reason}", f"{n:,}"))
    rows += _deface_rows(report.actions)
    rows += _release_rows(report.release)
    rows += [
        ("bytes read", _size(report.bytes_in)),
        ("bytes written", _size(report.bytes_out)),
        ("time (index / execute / total)",
         f"{report.index_s:.1f} s / {report.execute_s:.1f} s / {report.elapsed_s:.1f} s"),
        ("throughput", f"{report.files_per_s:,.1f} files/s, {report.mb_per_s:,.1f} MB/s"),
        ("workers", f"{report.workers} ({report.executor})"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _release_rows(figures: dict[str, Any] | None) -> list[tuple[str, str]]:
    """A risk target's figures: the levels chosen, the patients suppressed, the risk before and after."""
    if not figures:
        return []
    levels = ", ".join(f"{c} {lv}" for c, lv in figures.get("levels", {}).items() if lv)
    rows = [("risk target: levels generalised", levels or "none needed"),
            ("risk target: patients suppressed", f"{figures.get('suppressed', 0):,} of {figures.get('patients', 0):,}")]
    before = (figures.get("risk_before") or {}).get("prosecutor") or {}
    after = (figures.get("risk_after") or {}).get("prosecutor") or {}
    if "highest_risk" in before and "highest_risk" in after:
        rows.append(("risk target: highest / average risk",
                     f"{before['highest_risk']:.3f} / {before.get('success_rate', 0):.3f} -> "
                     f"{after['highest_risk']:.3f} / {after.get('success_rate', 0):.3f}"))
    written = figures.get("as_written")
    if written is not None:
        rows.append(("risk target: met by the release as written",
                     "yes" if written.get("met") else "NO (objects quarantined after the choice)"))
    return rows


#: The defacing stage's audit counts (deidpipe.deface.stage), as the summary names them.
_DEFACE_ACTIONS = {
    "defaced": "defaced (face removed)",
    "deface_no_face_in_view": "unchanged: no face in the field of view",
    "deface_no_tissue_to_remove": "unchanged: no tissue in the face region",
    "deface_field_too_small": "unchanged: field of view too small for a face",
    "deface_too_few_slices": "unchanged: too few slices for a volume, no face seen",
    "deface_scout": "unchanged: a scout (no stack of slices), no face seen",
    "deface_no_tissue": "unchanged: no tissue in the volume, no face seen",
    "deface_not_a_volume": "unchanged: region unknown and no clean volume",
    "deface_no_head_found": "unchanged: region unknown, no head found, no face seen",
}


def _deface_rows(actions: dict[str, int]) -> list[tuple[str, str]]:
    """Objects by what the defacing stage did to their series (nothing when the stage did not run)."""
    found = [(label, actions[code]) for code, label in _DEFACE_ACTIONS.items() if actions.get(code)]
    if not found:
        return []
    return [("defacing (objects)", f"{sum(n for _, n in found):,}")] + [(f"  {lab}", f"{n:,}") for lab, n in found]


def print_summary(report: RunReport, stream: TextIO | None = None) -> None:
    console = Console(file=stream or sys.stdout, width=100)
    console.print(summary_table(report))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
