"""Destinations of ``deidpipe serve``: C-STORE (association reused), STOW-RS (dicomweb-client), a folder.

Each destination has its own thread and its own tickets (``QUEUE/outbox/<dest>/``). An attempt ends in one of:

* delivered: Success, or a warning status (``0xBxxx``, ``0x0001``, ``0x0107``, ``0x0116``): the ticket moves to
  ``delivered/``;
* retry: the destination cannot be reached, refuses or drops the association, times out, or answers ``0xA7xx``
  (out of resources), or HTTP 408/429/5xx: retried with exponential backoff (``retry.initial_s`` doubling up to
  ``retry.max_interval_s``) until ``retry.max_attempts`` attempts or ``retry.max_age_s`` seconds since the
  object was queued, then quarantined with an ``ALERT`` log line;
* failed: any other failure status, or an HTTP 4xx, or no presentation context the destination accepts: the
  object is quarantined at once (a record ``QUEUE/quarantine/<oid>.<dest>.json``).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from deidpipe.dicomio.head import file_head
from deidpipe.durable import atomic_write, fsync_dir
from deidpipe.serve.config import Destination, RetryConfig, TlsConfig
from deidpipe.serve.queue import Queue
from deidpipe.serve.worker import LoopThread

log = logging.getLogger("deidpipe.serve")

DELIVERED, RETRY, FAILED = "delivered", "retry", "failed"
WARNING_STATUSES = frozenset({0x0001, 0x0107, 0x0116})


def classify_status(status: int) -> str:
    if status == 0x0000 or status in WARNING_STATUSES or 0xB000 <= status <= 0xBFFF:
        return DELIVERED
    if 0xA700 <= status <= 0xA7FF:
        return RETRY
    return FAILED


def client_tls_context(tls: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls.ca else None)
    if tls.cert is not None and tls.key is not None:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx


class _Unreachable(Exception):
    """The whole batch could not be tried (connection, association, timeout): every ticket is retried."""


# -- senders: send(tickets) -> [(outcome, reason)] --------------------------------------------------------------
class Sender:
    """A destination's sender: ``send(tickets)``, plus ``idle()`` (between batches: release what is unused) and
    ``close()`` (at stop), which do nothing unless the sender holds a connection."""

    def _send_files(self, files: list[tuple[int, Any, tuple[str, str, str, int]]],
                    out: list[tuple[str, str] | None]) -> None:
        """Send each open output of a batch (see :meth:`send`), its outcome into ``out``."""
        from deidpipe.serve.net import ProtocolError

        needed = {(sop, ts) for _, _, (sop, _, ts, _) in files}
        if files and (self.assoc is None or not self.assoc.is_established or not needed <= self.contexts):
            wanted = needed | (self.contexts if self.assoc is not None else set())
            self._open(wanted if len(wanted) <= 128 else needed)  # PS3.8: at most 128 contexts
        for i, fh, (sop, inst, ts, offset) in files:
            if self.assoc is None:  # closed by a failure earlier in this batch
                out[i] = (RETRY, "association lost")
                continue  # the rest of the batch: retried, not sent on a dead association
            if (sop, ts) not in self.assoc.contexts:
                out[i] = (FAILED, "the destination accepted no presentation context for this object")
                continue
            try:
                fh.seek(offset)
                status = self.assoc.store(sop, inst, ts, fh)
            except OSError as exc:  # the file, read while sending: the message is cut, so is the association
                self.assoc.abort()
                self.close()
                out[i] = (FAILED, f"de-identified output cannot be read ({type(exc).__name__})")
                continue
            except ProtocolError as exc:  # objects sent before this one keep their outcome
                self.close()
                out[i] = (RETRY, f"no response ({exc})")
                continue
            out[i] = (classify_status(int(status)), f"status 0x{int(status):04X}")

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, tickets: list[dict[str, Any]]) -> list[tuple[str, str]]:
        raise NotImplementedError


class DicomSender(Sender):
    """C-STORE SCU (:class:`deidpipe.serve.association.Requestor`). One association is kept open while there is work and
    renewed when a batch needs a presentation context it lacks; each file's data set goes as it is on disk (the
    bytes ``run`` writes), in PDU-sized reads; TCP_NODELAY is set on its socket."""

    IDLE_RELEASE_S = 5.0

    def __init__(self, dest: Destination, node_ae_title: str, queue: Queue) -> None:
        self.dest = dest
        self.calling = dest.calling_ae or node_ae_title
        self.queue = queue
        self.assoc: Any = None
        self.contexts: set[tuple[str, str]] = set()
        self.last_used = 0.0

    def _open(self, needed: set[tuple[str, str]]) -> None:
        from deidpipe.serve.association import Requestor
        from deidpipe.serve.net import AssociationRejected, ProtocolError

        self.close()
        # Seconds to wait for anything from the destination, a C-STORE response included (destination
        # ``timeout_s``, default 10): then the association is dropped and the object retried.
        assoc = Requestor(self.dest.host, self.dest.port, self.dest.ae_title, self.calling,
                          timeout=self.dest.timeout_s,
                          tls=client_tls_context(self.dest.tls) if self.dest.tls else None)
        # One presentation context per (SOP class, transfer syntax), as storescu does: a context proposing several
        # syntaxes gets one of them accepted, and objects in the others would have nothing to go on.
        try:
            assoc.open([(sop, [ts]) for sop, ts in sorted(needed)])
        except AssociationRejected:
            raise _Unreachable("association rejected") from None
        except ProtocolError:
            raise _Unreachable("cannot connect (or the association was aborted)") from None
        self.assoc, self.contexts = assoc, set(needed)  # asked for: what was refused is not asked again here

    def close(self) -> None:
        if self.assoc is not None:
            self.assoc.release()
        self.assoc, self.contexts = None, set()

    def idle(self) -> None:
        if self.assoc is not None and time.monotonic() - self.last_used > self.IDLE_RELEASE_S:
            self.close()

    def send(self, tickets: list[dict[str, Any]]) -> list[tuple[str, str]]:
        out: list[tuple[str, str] | None] = [None] * len(tickets)
        # Each output is opened before its head is read and sent from that same open file: a newer copy of the
        # object may take the path meanwhile (Queue.make_way), and its head must not go with these bytes. The
        # open file keeps its inode, so "the path is still this file" is a sound check after the head is read.
        files: list[tuple[int, Any, tuple[str, str, str, int]]] = []
        try:
            for i, t in enumerate(tickets):
                path = self.queue.output_path(t["output"])
                try:
                    fh = open(path, "rb")  # type: ignore[arg-type]  # noqa: SIM115 - closed in the finally
                except Exception as exc:  # noqa: BLE001 - the output is gone: nothing to retry
                    out[i] = (FAILED, f"de-identified output cannot be read ({type(exc).__name__})")
                    continue
                try:
                    head = file_head(path)  # type: ignore[arg-type]
                    same = os.path.samestat(os.fstat(fh.fileno()), os.stat(path))  # type: ignore[arg-type]
                except Exception as exc:  # noqa: BLE001 - damaged, or replaced and removed meanwhile
                    fh.close()
                    out[i] = (FAILED, f"de-identified output cannot be read ({type(exc).__name__})")
                    continue
                if not same:  # a newer copy took the path while the head was read
                    fh.close()
                    out[i] = (RETRY, "de-identified output replaced by a newer copy")
                    continue
                files.append((i, fh, head))
            self._send_files(files, out)
        finally:
            for _, fh, _ in files:
                fh.close()
        self.last_used = time.monotonic()
        return [o if o is not None else (RETRY, "not sent") for o in out]


class StowSender(Sender):
    """STOW-RS through dicomweb-client, ``batch`` instances per request."""

    def __init__(self, dest: Destination, queue: Queue) -> None:
        from dicomweb_client.api import DICOMwebClient

        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
        import requests

        session = requests.Session()
        if dest.tls is not None:
            session.verify = str(dest.tls.ca) if dest.tls.ca else True
            if dest.tls.cert and dest.tls.key:
                session.cert = (str(dest.tls.cert), str(dest.tls.key))
        self.client = DICOMwebClient(dest.url, session=session, timeout=60)
        self.queue = queue

    def send(self, tickets: list[dict[str, Any]]) -> list[tuple[str, str]]:
        import pydicom
        import requests

        out: list[tuple[str, str] | None] = [None] * len(tickets)
        datasets, index = [], []
        for i, t in enumerate(tickets):
            try:
                datasets.append(pydicom.dcmread(self.queue.output_path(t["output"])))
                index.append(i)
            except Exception as exc:  # noqa: BLE001
                out[i] = (FAILED, f"de-identified output cannot be read ({type(exc).__name__})")
        if datasets:
            try:
                rsp = self.client.store_instances(datasets)
            except requests.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else 0
                if code in (408, 429) or code >= 500:
                    raise _Unreachable(f"HTTP {code}") from None
                if len(index) > 1:  # one bad instance must not take the batch with it: one by one
                    for i in index:
                        out[i] = self.send([tickets[i]])[0]
                    return [o or (FAILED, "refused") for o in out]
                for i in index:
                    out[i] = (FAILED, f"HTTP {code}")
                return [o or (FAILED, "refused") for o in out]
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise _Unreachable(type(exc).__name__) from None
            failed = set()
            for item in (rsp.get("FailedSOPSequence") or []) if rsp is not None else []:
                failed.add(str(item.get("ReferencedSOPInstanceUID", "")))
            for i, ds in zip(index, datasets, strict=True):
                out[i] = (FAILED, "listed as failed in the STOW-RS response") if str(ds.SOPInstanceUID) in failed \
                    else (DELIVERED, "stored")
        return [o if o is not None else (RETRY, "not sent") for o in out]


class FolderSender(Sender):
    """Copies the de-identified file to ``<folder>/<patient>/<study>/<series>/<instance>.dcm`` (atomic,
    synced; an existing file is replaced: the name is the SOP instance's pseudonym)."""

    def __init__(self, dest: Destination, queue: Queue) -> None:
        assert dest.path is not None
        self.root = dest.path
        self.queue = queue

    def send(self, tickets: list[dict[str, Any]]) -> list[tuple[str, str]]:
        out = []
        dirs: set[Path] = set()
        for t in tickets:
            src = self.queue.output_path(t["output"])
            if src is None or not src.exists():
                out.append((FAILED, "de-identified output is missing"))
                continue
            target = self.root / t["output"]
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(src, "rb") as fi:  # copied in 1 MiB pieces
                    atomic_write(target, iter(partial(fi.read, 1 << 20), b""), sync_dir=False)
                dirs.add(target.parent)
                out.append((DELIVERED, "written"))
            except OSError as exc:
                out.append((RETRY, f"cannot write ({type(exc).__name__})"))
        for d in dirs:
            fsync_dir(d)
        return out


def make_sender(dest: Destination, node_ae_title: str, queue: Queue) -> Sender:
    if dest.kind == "dicom":
        return DicomSender(dest, node_ae_title, queue)
    if dest.kind == "stow":
        return StowSender(dest, queue)
    return FolderSender(dest, queue)


class Deliverer(LoopThread):
    """One destination's thread: due tickets in batches, retries with backoff, quarantine at the limits."""

    def __init__(self, dest: Destination, queue: Queue, retry: RetryConfig, node_ae_title: str) -> None:
        super().__init__()
        self.thread_name = f"deidpipe-deliver-{dest.name}"
        self.dest = dest
        self.queue = queue
        self.retry = retry
        self.sender = make_sender(dest, node_ae_title, queue)
        self.pending: dict[str, dict[str, Any]] = {t["object_id"]: t for t in queue.tickets(dest.name)}
        #: Whether tickets arrive as files from another process (polled) rather than through :meth:`add`.
        self.poll_outbox = False
        self.stats = {"delivered": 0, "retries": 0, "quarantined": 0}
        #: Closed tickets whose output could not be released yet (a processing round held the output lock).
        self.unreleased: list[dict[str, Any]] = []
        #: Outbox file name -> the inode it had when :meth:`refresh` last read it. Tickets are renamed into place,
        #: so a new inode under a pending object's name is a ticket written since: a newer copy's, or a retry's.
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def reload(self) -> None:
        """Pending tickets read again from the outbox (at start, after :meth:`Queue.recover`)."""
        with self._lock:
            self.pending = {t["object_id"]: t for t in self.queue.tickets(self.dest.name)}

    def add(self, tickets: list[dict[str, Any]]) -> None:
        """Take up new tickets. One that replaces a pending ticket of another copy of the object supersedes it:
        the older ticket's output is released (it stays where the newer ticket names the same path)."""
        with self._lock:
            for t in tickets:
                old = self.pending.get(t["object_id"])
                if old is not None and old.get("copy") != t.get("copy"):
                    self.unreleased.append(old)
                self.pending[t["object_id"]] = t
        self.wake.set()

    def refresh(self) -> None:
        """Take up tickets another process (the processing stage) has left in this destination's outbox: new
        objects, and newer copies of pending ones (which then take the older ticket's place at once, rather than
        at its retry time). A file is read again only when its inode changed."""
        folder = self.queue.path("outbox", self.dest.name)
        try:
            with os.scandir(folder) as it:
                names = {e.name: e.inode() for e in it if e.name.endswith(".json")}
        except FileNotFoundError:
            return
        self._seen = {n: ino for n, ino in self._seen.items() if names.get(n) == ino}
        with self._lock:
            pending = set(self.pending)
        # Not pending: read whatever its inode (a closed ticket's inode may have been reused by a new one).
        changed = [n for n, ino in names.items() if n[:-5] not in pending or self._seen.get(n) != ino]
        found = []
        for n in changed:
            t = self.queue.read_ticket(folder / n)
            if t is None:
                continue  # just closed (tickets are renamed into place, never seen half written)
            self._seen[n] = names[n]
            with self._lock:
                current = self.pending.get(t.get("object_id"))
            if current is None or current.get("copy") != t.get("copy"):  # not this ticket's own retry update
                found.append(t)
        if found:
            self.add(found)

    def _due(self, now: float) -> list[dict[str, Any]]:
        with self._lock:
            due = [t for t in self.pending.values() if t["next_at"] <= now]
        due.sort(key=lambda t: t["queued_at"])
        return due[: self.dest.batch]

    def _release(self) -> None:
        """Let settled tickets' outputs go (:meth:`Queue.release_outputs`); while a processing round holds the
        output lock they stay in :attr:`unreleased` for the next step."""
        with self._lock:
            todo, self.unreleased = self.unreleased, []
        left = self.queue.release_outputs(todo)
        with self._lock:
            self.unreleased = left + self.unreleased

    def step(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        if self.unreleased:
            self._release()
        if self.poll_outbox:
            self.refresh()
        due = self._due(now)
        if not due:
            self.sender.idle()
            return 0
        try:
            outcomes = self.sender.send(due)
        except _Unreachable as exc:
            outcomes = [(RETRY, str(exc))] * len(due)
            ids = {t["object_id"] for t in due}
            with self._lock:  # the destination is down: every due ticket waits, not just this batch
                extra = [t for t in self.pending.values() if t["next_at"] <= now and t["object_id"] not in ids]
            due = due + extra
            outcomes += [(RETRY, str(exc))] * len(extra)
        audit = []
        for t, (kind, reason) in zip(due, outcomes, strict=True):
            audit.append(self._settle(t, kind, reason, now))
        self._release()
        # Neither the ticket's move to delivered/ nor the audit line is synced here: after a crash an object may be
        # delivered again (destinations are idempotent by SOP Instance UID); the node syncs the audit every 2 s.
        self.queue.audit(audit, sync=False)
        return len(due)

    def _settle(self, t: dict[str, Any], kind: str, reason: str, now: float) -> dict[str, Any]:
        """Close, retry or quarantine ``t`` after a send; returns its audit line. A ticket that a newer copy of
        the same object has superseded (received again and processed while ``t`` waited) is neither retried nor
        quarantined: the newer copy's ticket takes its place and is delivered in its turn."""
        oid, name = t["object_id"], self.dest.name
        record = {"object_id": oid, "event": "deliver", "destination": name, "status": kind, "reason": reason,
                  "attempts": t["attempts"] + 1, "time": now}
        if kind == DELIVERED:
            newer = self.queue.close_ticket(t, "delivered")
            self.stats["delivered"] += 1
            self._replace_pending(t, newer)
            return record
        newer = self.queue.newer_ticket(t)
        if newer is None and kind == FAILED and self.queue.replacing(t):
            kind, reason = RETRY, "de-identified output is being replaced by a newer copy"
        if newer is None:
            t = dict(t, attempts=t["attempts"] + 1, last_error=reason)
            too_old = now - t["queued_at"] >= self.retry.max_age_s
            if kind == RETRY and not too_old and t["attempts"] < self.retry.max_attempts:
                t["next_at"] = now + self.retry.delay(t["attempts"])
                newer = self.queue.update_ticket(t)
                if newer is None:
                    self.stats["retries"] += 1
                    self._replace_pending(t, t)
                    log.info("object %s to %s: %s; retry %d in %.1f s", oid[:12], name, reason, t["attempts"],
                             t["next_at"] - now)
                    return dict(record, status="retry")
            else:
                why = f"{reason} (gave up after {t['attempts']} attempt(s), {now - t['queued_at']:.0f} s)" \
                    if kind == RETRY else reason
                self.queue.quarantine(f"{oid}.{name}", {"object_id": oid, "input_path_hash": oid,
                                                        "destination": name, "stage": "deliver", "reason": why,
                                                        "attempts": t["attempts"], "out_hash": t.get("out_hash"),
                                                        "output": t.get("output"),
                                                        "content_hash": t.get("content_hash"), "time": now})
                newer = self.queue.close_ticket(t, "quarantine")
                if newer is None:
                    self.stats["quarantined"] += 1
                    if kind == RETRY:
                        log.error("ALERT: object %s not delivered to %s: %s; quarantined", oid[:12], name, why)
                    else:
                        log.error("object %s refused by %s (%s); quarantined", oid[:12], name, reason)
                    record["status"] = "quarantined"
                else:  # a newer copy came while the record was written: it is delivered in its turn
                    self.queue.path("quarantine", f"{oid}.{name}.json").unlink(missing_ok=True)
        if newer is not None:
            record.update(status="superseded", reason="a newer copy of the object took its place")
        self._replace_pending(t, newer)
        return record

    def _replace_pending(self, t: dict[str, Any], replacement: dict[str, Any] | None) -> None:
        """``t``'s place in :attr:`pending` goes to ``replacement`` (None: it leaves), unless :meth:`add` has
        already put a newer copy's ticket there. A ticket that is settled (not ``t`` again, for a retry) joins
        :attr:`unreleased` first, so that :meth:`Node.wait_idle` never sees it in neither."""
        oid = t["object_id"]
        with self._lock:
            if replacement is not t:  # settled (delivered, quarantined or superseded): its output may go now
                self.unreleased.append(t)
            current = self.pending.get(oid)
            if current is not None and current.get("copy") != t.get("copy"):
                return
            if replacement is None:
                self.pending.pop(oid, None)
            else:
                self.pending[oid] = replacement

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.step()
            except Exception as exc:  # noqa: BLE001 - e.g. the queue's disk: tickets stay, tried again
                log.error("delivery round to %s failed (%s)", self.dest.name, type(exc).__name__)
                n = 0
                self._stop.wait(1.0)
            if not n:
                with self._lock:
                    nxt = min((t["next_at"] for t in self.pending.values()), default=None)
                cap = 0.02 if self.poll_outbox or self.unreleased else 1.0
                wait = cap if nxt is None else max(0.01, min(cap, nxt - time.time()))
                self.wake.wait(wait)
                self.wake.clear()

    def stop(self, timeout: float = 60.0) -> None:
        super().stop(timeout)
        if self._thread is None or not self._thread.is_alive():  # never from under a send still running
            self.sender.close()
            self._release()  # processing has stopped by now; what it still refuses, the next start sweeps
