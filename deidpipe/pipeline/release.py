"""A release's risk target, the run's side: after the index, read every object's quasi-identifiers as the header
stage writes them (in the workers: :func:`deidpipe.pipeline.execute.labels_task`), choose one transformation for
the whole release (:func:`deidpipe.risk.archive.choose`) and the objects of the patients it suppresses.

The choice is kept in the state folder (``release.json``: levels, the suppressed patients' keyed tokens and their
objects' ids) so that a resumed run applies the same one; the figures alone (levels, counts, loss, risk before and
after) go under DST as ``_deidpipe/release.json``, which is safe to share.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deidpipe.durable import atomic_write
from deidpipe.errors import DeidError
from deidpipe.pipeline.execute import labels_task, reason_of
from deidpipe.pipeline.plan import ExecItem, ExecTask
from deidpipe.pipeline.progress import Reporter
from deidpipe.pipeline.sink import CONTROL_DIR
from deidpipe.policy import Policy

STATE_FILE = "release.json"
PUBLIC_FILE = f"{CONTROL_DIR}/release.json"


@dataclass(frozen=True)
class Release:
    """The run's choice: ``levels`` per quasi-identifier, the ``suppressed_objects`` (object ids) of the patients
    it suppresses, and ``figures`` (counts, loss, risk before and after; no identifying value)."""

    levels: dict[str, int]
    suppressed_objects: frozenset[str]
    figures: dict[str, Any]

    @property
    def level_tuple(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self.levels.items()))


def _payloads(tasks: Iterable[ExecTask]) -> Iterator[list[ExecItem]]:
    for task in tasks:
        if task.items:
            yield task.items


def choose_release(policy: Policy, state_root: Path, dst: Path, *, resume: bool, executor: Any,
                   tasks: Iterable[ExecTask], objects: int, reporter: Reporter) -> Release:
    """The release's transformation: the stored one on resume, else chosen from the objects of ``tasks`` (read
    and scrubbed by ``executor``'s workers). Raises :class:`DeidError` when the objects cannot be read for it or
    no transformation meets the target (nothing has been written then)."""
    from deidpipe.risk.archive import ReleaseChoice, choose
    from deidpipe.risk.errors import RiskError

    target = policy.risk_target
    assert target is not None
    stored = state_root / STATE_FILE
    if resume and stored.is_file():
        data = json.loads(stored.read_text(encoding="utf-8"))
        choice = ReleaseChoice.from_dict(data["choice"])
        release = Release(choice.levels, frozenset(data["suppressed_objects"]), choice.figures)
    else:
        rows: dict[str, dict[str, Any]] = {}
        reporter.start("risk", objects)
        for items, out, exc in executor.imap(labels_task, _payloads(tasks)):
            if exc is not None:
                raise DeidError(f"risk target: the quasi-identifiers could not be read ({reason_of(exc)})")
            rows.update((oid, row) for oid, row in out if row is not None)
            reporter.advance(len(items))
        reporter.finish()
        try:
            choice = choose(rows.values(), target)
        except RiskError as exc:
            raise DeidError(f"risk target: {exc}") from None
        suppressed = frozenset(oid for oid, row in rows.items() if row["patient"] in choice.suppressed)
        release = Release(choice.levels, suppressed, choice.figures)
        state = {"choice": choice.to_dict(), "suppressed_objects": sorted(suppressed)}
        atomic_write(stored, [json.dumps(state).encode()])
    public = {"target": target.summary(), "levels": release.levels,
              "patients_suppressed": release.figures.get("suppressed", 0),
              "objects_suppressed": len(release.suppressed_objects),
              **{k: release.figures[k] for k in ("patients", "loss", "loss_relative", "risk_before", "risk_after")
                 if k in release.figures}}
    atomic_write(dst / PUBLIC_FILE, [json.dumps(public, indent=2, default=str).encode()])
    return release
