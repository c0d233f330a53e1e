"""``scan(path, ...) -> ScanReport``: list an archive with the pipeline's source layer, read every object, run the
header (and pixel / face) rules, build the quasi-identifier table and score it with :mod:`deidpipe.risk`.

Objects are read in a process pool for archives of more than :data:`SERIAL_LIMIT` objects (folders and zip files
send paths; tar members travel with their bytes, as in ``deidpipe run``). Nothing in a report holds a value of
the archive: findings carry a rule id, a location and a fixed message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deidpipe.scan.findings import Finding, ScanReport
from deidpipe.scan.rules import RANK

if TYPE_CHECKING:  # pragma: no cover - the policy and key are loaded where a scan starts
    from deidpipe.keys import ProjectKey
    from deidpipe.policy import Policy

#: Below this many listed members the scan runs in this process (a pool's start-up costs more than it saves).
SERIAL_LIMIT = 64
BATCH = 32


@dataclass
class _Job:
    """What a worker needs: picklable, small."""

    spec: Any  # SourceSpec
    policy: Policy
    secret: bytes
    known: tuple[str, ...]
    pixels: bool
    faces: bool
    show_values: bool = False
    presidio: bool = False


@dataclass
class ObjectScan:
    """What a worker found in one listed member: its kind, the header rules' hits (rule, severity, location,
    message), its quasi-identifier row, pixel findings and, for a head series, the key to group it by."""

    path: str
    kind: str  # dicom | skipped | error
    hits: list[tuple[str, str, str, str]] = field(default_factory=list)
    qi: dict[str, Any] | None = None
    pixel_findings: list[Finding] = field(default_factory=list)
    series: tuple[str, str, str] | None = None  # (keyed series token, modality, head hint) for face checks
    identifying: frozenset[str] = frozenset()  # components of ``path`` that name the object (keyed in reports)


_CHECKERS: dict[tuple[Any, ...], Any] = {}


def _checker(job: _Job) -> Any:
    from deidpipe.keys import ProjectKey
    from deidpipe.scan.headers import HeaderChecker
    from deidpipe.scan.known import deny_list

    ident = (job.secret, job.policy, job.known, job.presidio)
    c = _CHECKERS.get(ident)
    if c is None:
        c = _CHECKERS[ident] = HeaderChecker(job.policy, ProjectKey(job.secret),
                                               deny_list(list(job.known)) if job.known else None, job.presidio)
    return c


def scan_item(job: _Job, item: Any) -> ObjectScan:
    """Read one listed member and run the rules on it."""
    from deidpipe.dicomio import read_dataset
    from deidpipe.errors import DeidError, InputError, NotDicomError
    from deidpipe.pipeline.source import read_member
    from deidpipe.risk.qi import qi_row

    if item.skip is not None:
        if item.quarantine:
            return ObjectScan(item.relpath, "error", [("DP-E001", "high", "object",
                                                         "the member cannot be read safely")])
        return ObjectScan(item.relpath, "skipped")
    need_pixels = job.pixels
    try:
        # The whole member as bytes: dicomio then reads a plain file without pydicom's per-element reader, twice
        # as fast as pydicom's header-only read of the path (pixel data stays raw bytes, never decoded here).
        ds = read_dataset(read_member(job.spec, item), name=item.relpath)
    except NotDicomError:
        return ObjectScan(item.relpath, "skipped")
    except InputError as exc:
        return ObjectScan(item.relpath, "error", [("DP-E001", "high", "object",
                                                     f"the object cannot be read ({_reason(exc)})")])
    checker = _checker(job)
    try:
        hits = checker.check(ds)
        qi = qi_row(ds, checker.key)
    except DeidError:
        return ObjectScan(item.relpath, "error", [("DP-E001", "high", "object",
                                                     "an element of the object cannot be decoded")])
    except Exception as exc:  # noqa: BLE001 - never let one object stop the scan; never its message
        return ObjectScan(item.relpath, "error", [("DP-E001", "high", "object",
                                                     f"the object could not be checked ({type(exc).__name__})")])
    result = ObjectScan(item.relpath, "dicom", hits, qi)
    if not job.show_values:
        from deidpipe.scan.paths import identifying_components

        result.identifying = identifying_components(item.relpath, ds)
    if need_pixels:
        from deidpipe.scan.pixels import pixel_findings

        result.pixel_findings = pixel_findings(ds, item.relpath, list(job.known), reveal=job.show_values)
    if job.faces:
        from deidpipe.scan.faces import series_of

        result.series = series_of(ds, checker.key)
    return result


def _reason(exc: Any) -> str:
    """The fixed reason of an InputError (never a value: dicomio's reasons are fixed texts)."""
    return str(getattr(exc, "reason", "") or type(exc).__name__)[:120]


def _scan_batch(job: _Job, numbered: tuple[int, list[Any]]) -> list[ObjectScan]:
    """A task on the pipeline's pool (which runs it inside :func:`deidpipe.dicomio.quiet.quiet`): one batch of items."""
    return [scan_item(job, it) for it in numbered[1]]


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for it in items:
        batch.append(it)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run(job: _Job, items: list[Any], workers: int | None) -> Iterator[ObjectScan]:
    """Scan ``items`` on the pipeline's pool (:func:`deidpipe.pipeline.batch.open_pool`): in this process for a
    small archive or one worker. Results come in the order of ``items`` (the report's order does not depend on
    which worker finished first); a batch that fails as a whole fails the scan."""
    from deidpipe.pipeline.batch import open_pool
    from deidpipe.pipeline.executors import default_workers

    n = workers or default_workers()
    serial = n <= 1 or len(items) <= SERIAL_LIMIT
    size = BATCH if serial else max(4, min(BATCH, len(items) // (n * 4) or 4))
    pool = open_pool(job, workers=1 if serial else n)
    try:
        done: dict[int, list[ObjectScan]] = {}
        due = 0
        for (index, _), results, exc in pool.imap(_scan_batch, enumerate(_batches(iter(items), size))):
            if exc is not None:
                raise exc
            done[index] = results
            while due in done:
                yield from done.pop(due)
                due += 1
    finally:
        pool.close()


def scan(path: str | Path, policy: Policy | None = None, key: ProjectKey | None = None,
         known_identities: str | Path | list[str] | None = None, qi: list[str] | str | None = None,
         population: int | None = None, fraction: float | None = None,
         workers: int | None = None, *, threshold: float = 0.2, pixels: bool = True, faces: bool = True,
         show_values: bool = False, presidio: bool = False, unit: str = "patient") -> ScanReport:
    """Scan the archive at ``path`` (folder, zip, tar) under ``policy`` (default: the Basic Profile).

    ``key`` (a ProjectKey) names patients in the quasi-identifier table; without one, a random key for this scan.
    ``known_identities`` is a CSV path (or the terms themselves). ``qi`` chooses the table's columns (default
    all of :data:`deidpipe.risk.qi.QI_COLUMNS`); ``population`` / ``fraction`` give N for population
    uniqueness. ``pixels`` reads pixel data and looks for burned-in text; ``faces`` renders head series.
    ``show_values``: thumbnails show the text and faces found (blacked / pixelated otherwise); the HTML report
    then says so on top. No report ever holds a header value. ``presidio``: also screen the free text the policy
    keeps or cleans with presidio-analyzer (DP-H013; loads spaCy, slow). ``unit``: one row of the
    quasi-identifier table per ``patient`` (default) or per ``study``.
    Raises :class:`deidpipe.errors.InputError` when ``path`` is not a readable source."""
    from deidpipe.keys import ProjectKey
    from deidpipe.pipeline.source import detect, iter_items
    from deidpipe.policy import Policy
    from deidpipe.risk.qi import parse_qi
    from deidpipe.scan.known import load_known_identities

    policy = policy or Policy.basic()
    if isinstance(policy, str | Path):
        policy = Policy.load(policy)
    key = key or ProjectKey(os.urandom(32))
    columns = parse_qi(qi) if isinstance(qi, str) or qi is None else list(qi)
    if unit not in ("patient", "study"):
        raise ValueError("unit must be 'patient' or 'study'")
    if known_identities is None:
        terms: tuple[str, ...] = ()
    elif isinstance(known_identities, str | Path):
        terms = tuple(load_known_identities(known_identities))
    else:
        terms = tuple(known_identities)
    spec = detect(path)
    items = list(iter_items(spec))
    job = _Job(spec, policy, key.secret, terms, pixels, faces, show_values, presidio)
    findings: list[Finding] = []
    qi_rows: list[dict[str, Any]] = []
    objects = skipped = errors = 0
    face_series: dict[str, list[str]] = {}
    identifying: set[str] = set()  # path components that name some object: keyed in every path shown
    for r in _run(job, items, workers):
        identifying |= r.identifying
        if r.kind == "skipped":
            skipped += 1
            continue
        if r.kind == "error":
            errors += 1
        else:
            objects += 1
            if r.qi is not None:
                qi_rows.append(r.qi)
            if r.series is not None:
                face_series.setdefault(r.series[0], []).append(r.path)
        findings += [Finding(r.path, rule, sev, loc, msg) for rule, sev, loc, msg in r.hits]
        findings += r.pixel_findings
    if faces and face_series:
        from deidpipe.scan.faces import face_findings

        findings += face_findings(spec, face_series, reveal=show_values)
    if not show_values and identifying:
        from deidpipe.scan.paths import mask_path

        known = frozenset(identifying)
        findings = [replace(f, path=mask_path(f.path, known, key)) for f in findings]
    risk = table = None
    if qi_rows:
        from deidpipe.risk import assess
        from deidpipe.risk.qi import qi_table

        table = qi_table(qi_rows, unit)
        risk = assess(table, columns, population=population, fraction=fraction, threshold=threshold)
        if risk.prosecutor.records_at_risk and risk.prosecutor.records_at_risk > 0:
            findings.append(Finding("", "DP-R001", "medium", "risk",
                                    f"{risk.prosecutor.records_at_risk:.1%} of {unit} records are at prosecutor risk "
                                    f"above {threshold:g} (k = {risk.k})"))
    findings.sort(key=lambda f: (f.path, -RANK[f.severity], f.rule, f.location))
    return ScanReport(objects, findings, risk, skipped, errors, table, tuple(columns), show_values)
