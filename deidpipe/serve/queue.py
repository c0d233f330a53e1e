"""The durable on-disk queue of ``deidpipe serve``.

Layout under ``QUEUE``::

    tmp/                       partial writes, and tickets set aside while they close (``*.close``: put back
                               at start, then the folder is emptied)
    incoming/<oid>.dcm         received objects, durable: the SCP answers Success only once one is here
    processing/<oid>.dcm       claimed by the processing stage (moved back to incoming/ at start)
    out/                       de-identified objects, written by the pipeline's own sink (``<patient>/...``)
    outbox/<dest>/<oid>.json   one ticket per object and destination still to deliver
    delivered/<dest>/<oid>.json  the ticket once the destination has the object
    quarantine/<name>.json     one record per object that failed (like ``run``'s), never the object
    audit.jsonl                one line per object processed, and one per delivery or delivery failure
    out.lock                   held by a processing round; an output is removed only under it

``<oid>`` is a keyed hash of the object's SOP Instance UID: a second copy of an instance replaces the first while
it waits, and nothing in a name is an original value. Every step is a rename of a durable file, so a crash at
any point leaves each object in exactly one state (or, between two renames, in a state that is taken up again
and ends the same way): received objects are processed again, tickets are delivered again (destinations are
idempotent by SOP Instance UID).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deidpipe.durable import GroupCommit, atomic_write, fsync_dir, fsync_file, write_synced

DIRS = ("tmp", "incoming", "processing", "out", "outbox", "delivered", "quarantine")
#: Suffix of a ticket set aside in ``tmp/`` by :meth:`Queue.close_ticket` (put back by :meth:`Queue.recover`).
ASIDE = ".close"


class Queue:
    """The queue folder. Safe to use from the SCP's threads, the processing thread and the delivery threads."""

    def __init__(self, root: str | Path, destinations: Iterable[str] = ()) -> None:
        self.root = Path(root)
        for d in DIRS:
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.destinations = tuple(destinations)
        for name in self.destinations:
            (self.root / "outbox" / name).mkdir(exist_ok=True)
            (self.root / "delivered" / name).mkdir(exist_ok=True)
        self._audit_lock = threading.Lock()
        # Held while a ticket is set aside by close_ticket and while release_outputs looks for tickets: another
        # destination's thread must never see an object without tickets because one is set aside for a moment.
        self._tickets_lock = threading.Lock()
        self._audit_dirty = False
        # Received objects: the SCP's threads (one per association) share a sync when they store together.
        self._incoming = GroupCommit(self.path("tmp"), self.path("incoming"))

    def path(self, state: str, name: str = "") -> Path:
        return self.root / state / name if name else self.root / state

    # -- start-up -------------------------------------------------------------------------------------------
    def recover(self) -> int:
        """After a stop or a crash: tickets set aside by :meth:`close_ticket` go back to the outbox where no
        ticket took their place, partial writes go, claimed objects go back to incoming/, and outputs no ticket
        names any more go (their release was cut short). Returns how many objects were taken up again."""
        for p in self.path("tmp").glob(f"*{ASIDE}"):
            self._put_back(p)
        for p in self.path("tmp").iterdir():
            p.unlink(missing_ok=True)
        for name in self.destinations:  # tickets of a batch cut short: its objects are processed again
            for p in self.path("outbox", name).glob(".*.json.tmp"):
                p.unlink(missing_ok=True)
        n = 0
        for p in list(self.path("processing").iterdir()):
            if p.suffix == ".dcm":
                self.unclaim(p.name[:-4])
                n += 1
        fsync_dir(self.path("incoming"))
        fsync_dir(self.path("processing"))
        self._sweep_outputs()
        return n

    def _sweep_outputs(self) -> None:
        """Remove every file under ``out/`` that no ticket in the outbox names (an object is processed again from
        incoming/ into a fresh output, so nothing that is still wanted goes)."""
        wanted = {t.get("output") for d in self.destinations for t in self.tickets(d)}
        root = self.path("out")
        for p in list(root.rglob("*.dcm")):
            rel = p.relative_to(root).as_posix()
            if rel not in wanted and not rel.startswith("_"):  # the sink's own folders (_deidpipe) stay
                p.unlink(missing_ok=True)

    # -- durable writes ---------------------------------------------------------------------------------------
    def _write_durable(self, target: Path, parts: Sequence[bytes]) -> None:
        """Through a temporary file in ``tmp/`` (removed by :meth:`recover` if a crash leaves it)."""
        atomic_write(target, parts, tmp=self.path("tmp", f"{target.name}.{uuid.uuid4().hex}"))

    def put(self, oid: str, parts: Sequence[bytes]) -> Path:
        """Store a received object durably (data and name on disk when this returns); raises OSError if not.
        Objects stored at the same time from several threads are made durable by one sync (group commit,
        :class:`deidpipe.durable.GroupCommit`)."""
        return self._incoming.write(f"{oid}.dcm", parts)

    # -- processing -----------------------------------------------------------------------------------------
    def incoming(self) -> list[str]:
        """Object ids waiting, oldest first."""
        entries = []
        with os.scandir(self.path("incoming")) as it:
            for e in it:
                if e.name.endswith(".dcm"):
                    try:
                        entries.append((e.stat().st_mtime_ns, e.name[:-4]))
                    except FileNotFoundError:
                        continue
        return [oid for _, oid in sorted(entries)]

    def claim(self, oids: Iterable[str]) -> list[str]:
        """Move objects to processing/; returns those that were still there."""
        taken = []
        for oid in oids:
            try:
                os.replace(self.path("incoming", f"{oid}.dcm"), self.path("processing", f"{oid}.dcm"))
            except FileNotFoundError:
                continue
            taken.append(oid)
        return taken

    def unclaim(self, oid: str) -> None:
        """A claimed object back to ``incoming/``, unless a newer copy of it has been received there meanwhile
        (then the claimed one goes: the newer copy is what the sender meant)."""
        src = self.path("processing", f"{oid}.dcm")
        try:
            os.link(src, self.path("incoming", f"{oid}.dcm"))
        except FileExistsError:
            pass
        except FileNotFoundError:
            return
        src.unlink(missing_ok=True)

    def done_processing(self, oids: Iterable[str]) -> None:
        for oid in oids:
            self.path("processing", f"{oid}.dcm").unlink(missing_ok=True)

    # -- delivery tickets -----------------------------------------------------------------------------------
    def add_tickets(self, tickets: Sequence[dict[str, Any]]) -> None:
        """One ticket per (object, destination), durable when this returns. Every ticket of a batch is written
        under a hidden name first and only then renamed into place, so that a destination that delivers and
        closes its ticket at once still sees the other destinations' tickets (and keeps the output for them)."""
        staged: list[tuple[Path, Path]] = []
        for t in tickets:
            target = self.path("outbox", f"{t['destination']}/{t['object_id']}.json")
            hidden = target.with_name(f".{t['object_id']}.json.tmp")
            write_synced(hidden, [json.dumps(t, sort_keys=True).encode()])
            staged.append((hidden, target))
        for hidden, target in staged:
            os.replace(hidden, target)
        for d in {target.parent for _, target in staged}:
            fsync_dir(d)

    def tickets(self, dest: str) -> list[dict[str, Any]]:
        return self._records(sorted(self.path("outbox", dest).glob("*.json")))

    def stamp(self) -> dict[str, Any]:
        """What tells one processing of an object from another, for its tickets: ``copy``, a fresh random id. A
        second copy of an instance is processed into the same output path while the first copy's tickets may
        still be open; with it, the first copy's delivery does not close the second copy's ticket
        (:meth:`close_ticket`)."""
        return {"copy": uuid.uuid4().hex}

    @contextmanager
    def output_lock(self, blocking: bool = True) -> Iterator[bool]:
        """The lock between writing outputs and removing them (``QUEUE/out.lock``, ``flock``: the processing
        stage may run in another process). The processing stage holds it for a whole round, from its workers'
        writes to its tickets; :meth:`release_outputs` takes it before it looks for tickets and removes outputs.
        Without it a delivery that closed an object's last ticket could remove the output a second copy of the
        object has just been processed into (the sink found the same bytes there and kept them) before the
        second copy's tickets exist. Yields whether the lock is held (always, when ``blocking``)."""
        import fcntl

        with open(self.root / "out.lock", "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _ticket_path(self, t: dict[str, Any]) -> Path:
        return self.path("outbox", f"{t['destination']}/{t['object_id']}.json")

    def newer_ticket(self, t: dict[str, Any]) -> dict[str, Any] | None:
        """The ticket now in the outbox for ``t``'s object and destination when it is another copy's (a copy
        received and processed after ``t``'s: it supersedes ``t``), else None."""
        current = self.read_ticket(self._ticket_path(t))
        return None if current is None or current.get("copy") == t.get("copy") else current

    def update_ticket(self, t: dict[str, Any]) -> dict[str, Any] | None:
        """A ticket's retry count and next attempt. A ticket that another copy's has superseded is not written
        back: the newer ticket is returned instead. As in :meth:`close_ticket`, the ticket in place is set aside
        before it is read, and the update (synced first: the name it takes was renamed away, so nothing else
        guards its content across a power cut) takes its place only where no newer ticket has arrived since
        (``os.link`` never replaces one). On any error the ticket set aside goes back."""
        target = self._ticket_path(t)
        tmp = self.path("tmp", f"{t['object_id']}.{uuid.uuid4().hex}")
        aside = self.path("tmp", f"{t['object_id']}.{uuid.uuid4().hex}{ASIDE}")
        try:
            write_synced(tmp, [json.dumps(t, sort_keys=True).encode()])
            with self._tickets_lock:
                try:
                    os.replace(target, aside)
                except FileNotFoundError:  # closed meanwhile (never by another thread: one per destination)
                    return None
                try:
                    taken = self.read_ticket(aside)
                    if taken is not None and taken.get("copy") != t.get("copy"):
                        self._put_back(aside)
                        return taken
                    try:
                        os.link(tmp, target)
                    except FileExistsError:  # a newer copy's ticket arrived while this one was aside
                        aside.unlink()
                        return self.read_ticket(target)
                    aside.unlink()
                    return None
                except BaseException:
                    if aside.exists():
                        self._put_back(aside)
                    raise
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def read_ticket(path: Path) -> dict[str, Any] | None:
        """A ticket's fields, or None where the file cannot be read as one (then it counts as the caller's own)."""
        try:
            return json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None

    def close_ticket(self, t: dict[str, Any], state: str) -> dict[str, Any] | None:
        """Move a ticket to ``delivered`` (or drop it, for ``quarantine``); the caller then releases its output
        (:meth:`release_outputs`). Returns the ticket of a newer copy of the object that has superseded ``t``
        (which is then left in the outbox), else None.

        The ticket is first renamed aside (``tmp/*.close``) and only then read: processing may replace it with a
        newer copy's at any moment, and a check followed by a move could move that newer ticket to ``delivered``
        unsent. A newer ticket goes back in place; :meth:`recover` puts back one a crash left aside."""
        src = self._ticket_path(t)
        aside = self.path("tmp", f"{t['object_id']}.{uuid.uuid4().hex}{ASIDE}")
        with self._tickets_lock:
            try:
                os.replace(src, aside)
            except FileNotFoundError:
                return None
            taken = self.read_ticket(aside)
            if taken is not None and taken.get("copy") != t.get("copy"):  # a newer copy's ticket: back in place
                self._put_back(aside)
                return taken
            if state == "delivered":  # the ticket as it was queued; the audit line has the time of delivery
                os.replace(aside, self.path("delivered", f"{t['destination']}/{t['object_id']}.json"))
            else:
                aside.unlink()
        return None

    def _put_back(self, aside: Path) -> None:
        """A ticket set aside returns to its outbox place, unless a newer ticket is there; the aside name goes."""
        t = self.read_ticket(aside)
        try:
            if t is not None:  # unreadable: it was never a ticket of ours whole
                os.link(aside, self._ticket_path(t))
        except (OSError, KeyError, TypeError):  # FileExistsError: a newer ticket is in place
            pass
        aside.unlink(missing_ok=True)

    def release_outputs(self, tickets: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Remove each settled ticket's output unless a ticket in the outbox still names that output (another
        destination's, or a newer copy's with the same path). Done under :meth:`output_lock`, taken once and
        without waiting: while a processing round holds it nothing is done, and every ticket comes back for the
        caller to try again later. Returns the tickets not done."""
        if not tickets:
            return []
        with self.output_lock(blocking=False) as held:
            if not held:
                return list(tickets)
            for t in tickets:
                out = self.output_path(t.get("output"))
                if out is None:
                    continue
                with self._tickets_lock:
                    if not self._output_wanted(t["object_id"], t["output"]):
                        out.unlink(missing_ok=True)
        return []

    def make_way(self, oids: Iterable[str], content_hashes: Mapping[str, str | None] | None = None) -> int:
        """Before a processing round (which holds :meth:`output_lock`): remove every output an earlier copy of
        these objects left, as named by their tickets (open, delivered or set aside) and delivery quarantine
        records. A newer copy of an instance (a corrected object under the same SOP Instance UID) is then
        written where the older copy's output waits for delivery or release, instead of being refused by the
        sink as a different object on the same path; its tickets replace the older copy's at the end of the
        round. A delivery that finds the output gone meanwhile is retried (:meth:`replacing`) and then finds
        the newer ticket. ``content_hashes``: the round's objects' input hashes; an object received again with
        the bytes every earlier copy's record names keeps its output (the same input gives the same output,
        which the sink finds in place), so a plain resend costs no retry. Returns how many outputs were
        removed."""
        removed = 0
        hashes = content_hashes or {}
        oids = list(oids)
        # In the order a ticket moves (outbox, set aside, delivered; a quarantine record is written before its
        # ticket closes), and the outbox once more: a ticket a delivery thread moves meanwhile is seen in one
        # place or the next. tmp/ is scanned once for the round, after every object's outbox was read.
        outboxes = {oid: [self.path("outbox", f"{d}/{oid}.json") for d in self.destinations] for oid in oids}
        found = {oid: self._records(paths) for oid, paths in outboxes.items()}
        for p in self.path("tmp").glob(f"*{ASIDE}"):
            oid = p.name.split(".", 1)[0]
            if oid in found:
                found[oid] += self._records([p])
        for oid in oids:
            records = found[oid]
            records += self._records(self.path("delivered", f"{d}/{oid}.json") for d in self.destinations)
            records += self._records(self.path("quarantine", f"{oid}.{d}.json") for d in self.destinations)
            records += self._records(outboxes[oid])
            if hashes.get(oid) is not None and all(r.get("content_hash") == hashes[oid] for r in records):
                continue  # the same input again: the same output, kept where it is
            for rel in {r.get("output") for r in records}:
                out = self.output_path(rel)
                if out is not None and out.exists():
                    out.unlink(missing_ok=True)
                    removed += 1
        return removed

    def _records(self, paths: Iterable[Path]) -> list[dict[str, Any]]:
        return [t for t in map(self.read_ticket, paths) if t is not None]

    def round_running(self) -> bool:
        """Whether a processing round holds :meth:`output_lock` now."""
        with self.output_lock(blocking=False) as held:
            return not held

    def replacing(self, t: dict[str, Any]) -> bool:
        """Whether ``t``'s output is missing because a newer copy of its object is on its way: a round is
        running (it may have made way, :meth:`make_way`), or a copy waits in ``incoming/`` or ``processing/`` (a
        round that failed after making way put it back). A delivery that fails on a missing output then tries
        again rather than quarantining an object that is about to be replaced."""
        out = self.output_path(t.get("output"))
        if out is None or out.exists():
            return False
        oid = t["object_id"]
        return (self.path("incoming", f"{oid}.dcm").exists() or self.path("processing", f"{oid}.dcm").exists()
                or self.round_running())

    def _output_wanted(self, oid: str, relpath: str) -> bool:
        """Whether a ticket in the outbox (or one being written) for ``oid`` names ``relpath``."""
        for d in self.destinations:
            if self.path("outbox", f"{d}/.{oid}.json.tmp").exists():
                return True
            try:
                current = json.loads(self.path("outbox", f"{d}/{oid}.json").read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                return True  # unreadable: keep the output rather than guess
            if current.get("output") == relpath:
                return True
        return False

    def output_path(self, relpath: str | None) -> Path | None:
        if not relpath or relpath.startswith("/") or ".." in relpath.split("/"):
            return None
        return self.path("out") / relpath

    # -- quarantine and audit ---------------------------------------------------------------------------------
    def quarantine(self, name: str, record: dict[str, Any]) -> Path:
        """A JSON record (no object, no original value) under ``quarantine/``, durable when this returns."""
        target = self.path("quarantine", f"{name}.json")
        self._write_durable(target, [(json.dumps(record, sort_keys=True, indent=1) + "\n").encode()])
        return target

    def audit(self, records: Iterable[dict[str, Any]], sync: bool = True) -> None:
        """Append audit lines; ``sync=False`` leaves the fsync to :meth:`sync_audit` (the node calls it every
        2 s and at stop), for lines written while a sender waits."""
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        if not lines:
            return
        with self._audit_lock, open(self.root / "audit.jsonl", "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
            else:
                self._audit_dirty = True

    def sync_audit(self) -> None:
        """Make audit lines appended with ``sync=False`` durable."""
        with self._audit_lock:
            if not self._audit_dirty:
                return
            self._audit_dirty = False
            fsync_file(self.root / "audit.jsonl")

