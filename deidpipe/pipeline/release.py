"""A release's risk target, the run's side: after the index, read every object's quasi-identifiers as the header
stage writes them (in the workers: :func:`deidpipe.pipeline.execute.labels_task`), choose one transformation for
the whole release (:func:`deidpipe.risk.archive.choose`) and the objects of the patients it suppresses; after the
objects are written, check the release as written (:func:`deidpipe.risk.archive.check_release`).

Fail closed: an object whose quasi-identifiers could not be read for the choice is not written (it was not
counted), and a resumed run refuses inputs that are not those the choice was made from. The choice, the objects'
labels and a digest of the inputs counted are kept in the state folder (``release.json``: keyed tokens and
generalisable header values, never to be shared); the figures alone (levels, counts, loss, risk before and
after, and whether the release as written meets the target) go under DST as ``_deidpipe/release.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deidpipe.durable import atomic_write
from deidpipe.errors import DeidError
from deidpipe.pipeline.execute import labels_task, reason_of
from deidpipe.pipeline.index import KIND_DICOM
from deidpipe.pipeline.plan import ExecItem, ExecTask
from deidpipe.pipeline.progress import Reporter
from deidpipe.pipeline.sink import CONTROL_DIR
from deidpipe.policy import Policy
from deidpipe.risk.archive import ObjectLabels, ReleaseChoice

STATE_FILE = "release.json"
PUBLIC_FILE = f"{CONTROL_DIR}/release.json"
#: The audit's reason for an object left out because its quasi-identifiers could not be read for the choice.
UNCOUNTED_REASON = "not counted for the risk target (its header could not be read for the choice)"


@dataclass
class Release:
    """The run's choice (:class:`deidpipe.risk.archive.ReleaseChoice`: levels, suppressed patients, figures) in the
    run's terms: the ``suppressed_objects`` (object ids) of those patients, the ``uncounted_objects`` (no labels:
    not written) and every counted object's ``labels`` (for the check of what was written)."""

    choice: ReleaseChoice
    suppressed_objects: frozenset[str]
    uncounted_objects: frozenset[str]
    labels: ObjectLabels = field(repr=False)

    @property
    def levels(self) -> dict[str, int]:
        return self.choice.levels

    @property
    def figures(self) -> dict[str, Any]:
        """Counts, loss and risk before and after (no identifying value); ``as_written`` once checked."""
        return self.choice.figures

    @property
    def level_tuple(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self.levels.items()))


def inputs_digest(manifest: Path) -> str:
    """SHA-256 of the DICOM objects the index listed (object id and content hash, sorted): what a choice was
    made from. A resumed run whose inputs differ would write objects the search never counted."""
    import polars as pl

    rows = (pl.read_parquet(manifest, columns=["object_id", "content_hash", "kind"])
            .filter(pl.col("kind") == KIND_DICOM).sort("object_id"))
    h = hashlib.sha256()
    for oid, chash in rows.select("object_id", "content_hash").iter_rows():
        h.update(f"{oid}:{chash}\n".encode())
    return h.hexdigest()


def _payloads(tasks: Iterable[ExecTask]) -> Iterator[list[ExecItem]]:
    for task in tasks:
        if task.items:
            yield task.items


def _stored(path: Path, digest: str, written_before: int) -> Release | None:
    """The choice an earlier run of this release made, if any; refused when the inputs changed since."""
    if not path.is_file():
        if written_before:
            raise DeidError("risk target: objects were written before, but the release's choice is not in the "
                            "state folder; start a new run into an empty destination")
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("inputs") != digest:
        raise DeidError("risk target: the inputs changed since the release's transformation was chosen (objects "
                        "added, removed or changed); start a new run into an empty destination")
    return Release(ReleaseChoice.from_dict(data["choice"]), frozenset(data["suppressed_objects"]),
                   frozenset(data["uncounted_objects"]), ObjectLabels.from_dict(data["labels"]))


def choose_release(policy: Policy, state_root: Path, manifest: Path, *, resume: bool, written_before: int,
                   executor: Any, tasks: Iterable[ExecTask], objects: int, reporter: Reporter) -> Release:
    """The release's transformation: the stored one on resume, else chosen from the objects of ``tasks`` (read
    and scrubbed by ``executor``'s workers). Raises :class:`DeidError` when the objects cannot be read for it, no
    transformation meets the target, or a resumed run's inputs differ (nothing is written then)."""
    from deidpipe.risk.archive import choose
    from deidpipe.risk.errors import RiskError

    target = policy.risk_target
    assert target is not None
    digest = inputs_digest(manifest)
    path = state_root / STATE_FILE
    if resume and (release := _stored(path, digest, written_before)) is not None:
        return release
    labels = ObjectLabels(target.qi)
    uncounted: set[str] = set()
    reporter.start("risk", objects)
    for items, out, exc in executor.imap(labels_task, _payloads(tasks)):
        if exc is not None:
            raise DeidError(f"risk target: the quasi-identifiers could not be read ({reason_of(exc)})")
        for oid, row in out:
            if row is None:
                uncounted.add(oid)
            else:
                labels.add(oid, row)
        reporter.advance(len(items))
    reporter.finish()
    try:
        choice = choose(labels.rows(), target)
    except RiskError as exc:
        raise DeidError(f"risk target: {exc}") from None
    suppressed = labels.objects_of(choice.suppressed)
    release = Release(choice, suppressed, frozenset(uncounted), labels)
    state = {"inputs": digest, "choice": choice.to_dict(), "suppressed_objects": sorted(suppressed),
             "uncounted_objects": sorted(uncounted), "labels": labels.to_dict()}
    atomic_write(path, [json.dumps(state).encode()])
    return release


def publish_release(release: Release, policy: Policy, dst: Path, written: Iterable[str] | None = None) -> None:
    """Write the figures under DST (``_deidpipe/release.json``). With ``written`` (the object ids written, this
    run's and earlier ones'), the release as written is checked against the target first and the result goes
    into the figures (``as_written``): objects a later stage quarantined are not in the release, and their
    patients' classes may be smaller than the search counted."""
    from deidpipe.risk.archive import check_release
    from deidpipe.risk.report import finite

    target = policy.risk_target
    assert target is not None
    if written is not None:
        release.figures["as_written"] = check_release(release.labels.rows(written), target, release.levels)
    public = {"target": target.summary(), "levels": release.levels,
              "patients_suppressed": release.figures.get("suppressed", 0),
              "objects_suppressed": len(release.suppressed_objects),
              "objects_not_counted": len(release.uncounted_objects),
              **{k: release.figures[k] for k in ("patients", "loss", "loss_relative", "risk_before", "risk_after",
                                                  "as_written") if k in release.figures}}
    atomic_write(dst / PUBLIC_FILE, [json.dumps(finite(public), indent=2, allow_nan=False).encode()])
