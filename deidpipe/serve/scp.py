"""The Storage SCP: C-ECHO, and C-STORE for every storage SOP class (private ones too), answered Success only
once the object is durably queued (:meth:`deidpipe.serve.queue.Queue.put`: data and name fsynced).

Statuses a sender may get:

* ``0x0000`` Success: the object is on disk in the queue and will be delivered (at least once) or quarantined.
* ``0xA700`` Out of resources: the queue could not store it (disk full, I/O error), or the node holds too many
  data sets in memory at once: the sender should retry.
* ``0xC000`` Cannot understand: the data set cannot be parsed (cut short, malformed), or its Pixel Data is
  shorter than its header declares (unless the policy's ``allow_incomplete_pixels``); a quarantine record names
  the reason.
* ``0xA900`` Data set does not match SOP class: it is not a storable object as ``run`` judges it (no SOP Instance
  or SOP Class UID, a DICOMDIR), or its SOP Instance UID is missing, empty or not the one the request names.
* ``0x0122`` SOP class not supported: the request's SOP class is not the one of its presentation context.

A failure status (0xA900, 0xC000) comes with an Error Comment (0000,0902) that names the reason in fixed words,
never a value. Every check that refuses an object for what it is runs before the answer (:func:`refusal`): what
can still be quarantined after Success is only what the processing stages find (a decoder, burned-in text,
defacing, the time budget).

A caller whose address is not allowed is disconnected before its association is read; one whose calling AE
title is not allowed gets an A-ASSOCIATE-RJ (calling AE title not recognised); one that finds every association
slot taken gets an A-ASSOCIATE-RJ (transient, local limit exceeded). A connection must bring its whole
A-ASSOCIATE-RQ within the ARTIM timer (``artim_timeout_s``), and connections not yet associated are bounded
apart from association slots (:mod:`deidpipe.serve.gate`); the request is checked as PS3.8 has it
(:mod:`deidpipe.serve.acceptor`). Every accepted socket has ``TCP_NODELAY`` set (Nagle's algorithm stalls each
small PDU by tens of milliseconds on loopback). Associations are served by :mod:`deidpipe.serve.association`
(states and transitions) on :mod:`deidpipe.serve.pdu`'s links, one thread each (that module's docstring says why
not pynetdicom's reactors).

Memory: the data sets being received, node-wide, are charged to one budget (``memory_budget_mb``): their bytes as
they arrive and, for Deflated Explicit VR Little Endian, their inflated bytes as they are inflated
(:func:`deidpipe.dicomio.deflate.charging`). One the budget cannot hold is answered 0xA700 and kept nowhere.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Any, NamedTuple

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import build_context

from deidpipe.dicomio.deflate import InflateBudgetExceeded, charging
from deidpipe.dicomio.write import file_meta_bytes
from deidpipe.errors import InputError
from deidpipe.keys import ProjectKey
from deidpipe.pipeline.index import received_object_id
from deidpipe.policy import Policy
from deidpipe.serve import pdu
from deidpipe.serve.acceptor import Accepted, Rejected, accept_association
from deidpipe.serve.association import Event, Machine, serve_requests
from deidpipe.serve.config import ServeConfig, TlsConfig
from deidpipe.serve.dimse import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    C_ECHO_RQ,
    C_STORE_RQ,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    STATUS_SUCCESS,
    VERIFICATION,
    Message,
    command_ui,
)
from deidpipe.serve.gate import Gate, Ticket
from deidpipe.serve.net import NetworkTimeout, ProtocolError, nodelay
from deidpipe.serve.queue import Queue

log = logging.getLogger("deidpipe.serve")

UID_MISMATCH = "SOP Instance UID of the data set differs from the request's"


class Answer(NamedTuple):
    """A C-STORE's status and, for a failure, its Error Comment (fixed words, never a value)."""

    status: int
    comment: str | None = None


#: Transfer syntaxes the SCP accepts, in its order of preference: the acceptor takes the first of its own list that
#: the sender proposes for a context (as ``storescp +xa`` does). Compressed image syntaxes come first, lossless
#: before lossy: a sender that proposes its object's compressed syntax beside uncompressed ones then sends the
#: object as it is, the same bytes ``run`` reads from the file, and one that cannot decompress still delivers
#: (the price, as with ``+xa``: a sender that would compress an uncompressed object on request, lossily when only
#: a lossy syntax is offered with it, is asked to). Then the uncompressed ones (Explicit VR Little Endian first),
#: Deflated after them (pynetdicom proposes it by default: preferred, every object would be deflated, inflated
#: under the memory budget and written deflated), then the rest (video, JPIP: the pixel stage cannot decode them,
#: so a sender that can send them uncompressed is asked to).
_COMPRESSED_FIRST = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
)
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")
TRANSFER_SYNTAXES = [ts for ts in (*_COMPRESSED_FIRST, *_UNCOMPRESSED) if ts in ALL_TRANSFER_SYNTAXES] + [
    ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _COMPRESSED_FIRST and ts not in _UNCOMPRESSED
]


def quiet_pynetdicom() -> None:
    """pynetdicom's own log lines quote UIDs and AE titles of the traffic: only its errors go through, and
    those are logged by this module in its own words."""
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def supported_contexts() -> list[Any]:
    """Every storage SOP class pynetdicom lists, with :data:`TRANSFER_SYNTAXES`, and Verification."""
    return [build_context(cx.abstract_syntax, TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts] + [
        build_context(VERIFICATION)]


@cache
def storage_context_for(sop_class: str) -> Any | None:
    """A context for a proposed SOP class that :func:`supported_contexts` lacks, or None to refuse it.

    A standard SOP class that pydicom's dictionary names and that is not a storage class (a query, a move, a
    worklist, storage commitment, a DICOMDIR's Media Storage Directory) is refused: C-STORE is all this node
    answers. Anything else (a private SOP class, such as a vendor's raw-data or non-image storage, or a storage
    class newer than pynetdicom's list) is accepted as storage, as ``storescp --promiscuous`` does: the object
    then goes through the same checks and stages as any other, and its private elements through the policy.
    Cached: a sender proposes the same classes on every association."""
    from pydicom.uid import UID_dictionary

    from deidpipe.header.actions import is_uid_text

    known = UID_dictionary.get(sop_class)
    if known is not None and (known[1] != "SOP Class" or "Storage" not in known[0]
                              or known[0].startswith(("Storage ", "Media Storage"))):
        return None
    if not is_uid_text(sop_class):
        return None
    return build_context(sop_class, TRANSFER_SYNTAXES)


def server_tls_context(tls: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert is None or tls.key is None:
        from deidpipe.serve.config import ConfigError

        raise ConfigError("tls needs cert and key files for the node")
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca is not None:
        ctx.load_verify_locations(str(tls.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else (
        ssl.CERT_OPTIONAL if tls.ca is not None else ssl.CERT_NONE)
    return ctx


def _uid(value: object) -> str:
    return str(value or "").strip().rstrip("\x00")


def refusal(ds: Any, request_uid: str, policy: Policy | None = None) -> Answer | None:
    """What the SCP answers, before Success, for a data set read whole (:func:`deidpipe.dicomio.read_dataset`,
    which refuses what is cut short or malformed): the checks ``run`` makes before its stages, on what the read
    holds (lengths and a few top-level attributes, nothing decoded but the UIDs), or None when it may be queued.

    * Pixel Data (7FE0,0010) missing or shorter than Rows (0028,0010), Columns (0028,0011), Bits Allocated
      (0028,0100) and the frames declare (:func:`deidpipe.dicomio.completeness.pixel_data_problem`): 0xC000, unless
      the policy's ``allow_incomplete_pixels`` (``run`` then writes it, the reason audited).
    * Not a storable object (:func:`deidpipe.header.engine.check_storable`: a DICOMDIR, no SOP Class UID
      (0008,0016), no SOP Instance UID (0008,0018), a class that is not a UID): 0xA900.
    * SOP Instance UID (0008,0018) of the data set missing, empty, or not the request's Affected SOP Instance UID
      (0000,1000): 0xA900. Stricter than ``check_storable``, whose File Meta fallback would name a data set
      without SOP Common module by the File Meta the SCP writes from the request: a C-STORE data set carries
      its own UID (PS3.4 B.4.1)."""
    # The header stage's own checks, in its order (imported once the node receives): what run refuses, refused.
    from deidpipe.header.engine import NO_SOP_INSTANCE_UID, check_pixels, check_storable

    try:
        check_storable(ds)
    except InputError as exc:
        return Answer(STATUS_MISMATCH, exc.reason)
    try:
        check_pixels(ds, policy or Policy.basic(), Counter())
    except InputError as exc:
        return Answer(STATUS_CANNOT_UNDERSTAND, exc.reason)
    inner = _uid(ds.get("SOPInstanceUID"))
    if not inner:
        return Answer(STATUS_MISMATCH, NO_SOP_INSTANCE_UID)
    if inner != _uid(request_uid):
        return Answer(STATUS_MISMATCH, UID_MISMATCH)
    return None


class StorageSCP:
    """The node's listening side; :meth:`start` binds, :meth:`stop` closes the port and every association."""

    def __init__(self, config: ServeConfig, queue: Queue, key: ProjectKey,
                 on_stored: Callable[[], None] = lambda: None, *, policy: Policy | None = None) -> None:
        self.config = config
        #: The node's policy (default the Basic Profile): refusals before the answer follow it as ``run`` does
        #: (``allow_incomplete_pixels``: an object with short Pixel Data is then queued, as ``run`` writes it).
        self.policy = policy if policy is not None else Policy.basic()  # built once, not per object
        self.queue = queue
        self.key = key
        self.on_stored = on_stored
        self.server: socket.socket | None = None
        self.stats = {"received": 0, "refused": 0, "failed": 0}
        self._lock = threading.Lock()
        self._links: set[pdu.Link] = set()
        self._threads: set[threading.Thread] = set()
        self._closing = False
        self._ssl: ssl.SSLContext | None = None
        self._supported: list[Any] = []
        #: Connections not yet associated, and association slots (one thread each: both bounded).
        self.gate = Gate(config.max_associations, config.max_pending, config.max_pending_per_address)
        #: Data sets being received and checked, node-wide, their inflated size included (default: a quarter of
        #: the machine's memory).
        self.budget = pdu.ByteBudget(config.memory_budget_bytes)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.getsockname()[1])

    def start(self) -> None:
        quiet_pynetdicom()
        self._ssl = server_tls_context(self.config.tls) if self.config.tls else None
        self._supported = supported_contexts()
        self._closing = False
        self.server = socket.create_server((self.config.host, self.config.port), backlog=128)
        threading.Thread(target=self._accept_loop, args=(self.server,), name="deidpipe-scp", daemon=True).start()
        log.info("listening as %s on %s:%d%s", self.config.ae_title, self.config.host, self.port,
                 " (TLS)" if self._ssl else "")

    def stop(self, timeout: float = 10.0) -> None:
        """Close the port, then every open association (an object not yet answered is not acknowledged: its
        sender must send it again), and wait for their threads. No association is served once this returns."""
        with self._lock:
            self._closing = True
            server, self.server = self.server, None
        if server is not None:
            try:
                server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            server.close()
        with self._lock:
            links, threads = list(self._links), list(self._threads)
        for link in links:
            try:
                link.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.gate.close_pending()
        end = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))

    # -- connections ---------------------------------------------------------------------------------------------
    def _accept_loop(self, server: socket.socket) -> None:
        while True:
            try:
                sock, address = server.accept()
            except OSError as exc:
                with self._lock:
                    if self._closing or self.server is not server:
                        return  # closed by stop()
                # A connection reset before it was taken, or no file descriptor left: the port stays open.
                log.warning("accepting a connection failed (%s)", type(exc).__name__)
                time.sleep(0.1)
                continue
            if not self.config.address_allowed(address[0]):
                log.warning("connection refused: address not on the allow-list")
                with self._lock:
                    self.stats["refused"] += 1
                sock.close()
                continue
            ticket = self.gate.admit(sock, address[0])  # over a bound, the oldest pending connection is closed
            t = threading.Thread(target=self._serve, args=(ticket, time.monotonic() + self.config.artim_timeout_s),
                                 name="deidpipe-assoc", daemon=True)
            with self._lock:
                if self._closing:
                    self.gate.leave(ticket)
                    sock.close()
                    return
                self._threads.add(t)
            try:
                t.start()
            except RuntimeError:  # no thread to be had: the connection is closed, the port stays open
                with self._lock:
                    self._threads.discard(t)
                self.gate.leave(ticket)
                sock.close()
                log.error("connection refused: no thread could be started")

    def _serve(self, ticket: Ticket, artim: float) -> None:
        """One connection, from accept to close; ``artim``: when the ARTIM timer expires (``time.monotonic()``).
        Its PS3.8 states: :mod:`deidpipe.serve.association`."""
        link: pdu.Link | None = None
        sock = ticket.sock
        machine = Machine()
        machine.on(Event.CONNECTION_ACCEPTED)
        try:
            nodelay(sock)
            if self._ssl is not None:
                sock.settimeout(max(artim - time.monotonic(), 0.001))  # the handshake is within the ARTIM timer
                try:
                    sock = self._ssl.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError):
                    log.warning("TLS handshake failed or took too long: connection closed")
                    machine.on(Event.CONNECTION_CLOSED)
                    return
                if not self.gate.rewrap(ticket, sock):
                    machine.on(Event.CONNECTION_CLOSED)
                    return
            link = pdu.Link(sock, self.config.network_timeout_s)
            with self._lock:
                if self._closing:
                    machine.on(Event.CONNECTION_CLOSED)
                    return
                self._links.add(link)
            self._associate_and_serve(link, machine, ticket, artim)
        except NetworkTimeout as exc:
            if not ticket.associated:  # the ARTIM timer expired (PS3.8 AA-2): the connection is closed, no A-ABORT
                log.warning("connection closed: no A-ASSOCIATE-RQ within the ARTIM timer")
                machine.end(Event.ARTIM_EXPIRED)
            else:
                log.warning("association ended: %s", exc)
                machine.end(Event.ABORT_REQUEST)
                if link is not None:
                    link.abort()
        except ProtocolError as exc:
            log.warning("association ended: %s", exc)
            machine.end(Event.INVALID_PDU)
            if link is not None:
                link.abort()
        except Exception as exc:  # noqa: BLE001 - a bug must not take the node down; the type only
            log.error("association failed (%s)", type(exc).__name__)
            machine.end(Event.ABORT_REQUEST)
            if link is not None:
                link.abort()
        finally:
            if link is not None:
                link.close()
            else:
                try:
                    sock.close()
                except OSError:
                    pass
            with self._lock:
                self._links.discard(link)  # type: ignore[arg-type]
                self._threads.discard(threading.current_thread())
            self.gate.leave(ticket)

    def _associate_and_serve(self, link: pdu.Link, machine: Machine, ticket: Ticket, artim: float) -> None:
        allowed = {a.strip() for a in self.config.allowed_ae_titles}
        accepted = accept_association(
            link, machine, self._supported, also_supported=storage_context_for,
            calling_allowed=(lambda aet: aet in allowed) if allowed else (lambda aet: True),
            deadline=artim, take_slot=lambda: self.gate.take_slot(ticket))
        if isinstance(accepted, Rejected):
            with self._lock:
                self.stats["refused"] += 1
            log.warning("association rejected: %s", accepted.reason)
            return
        serve_requests(link, machine, lambda msg: self._answer(accepted, msg), self.budget)

    def _answer(self, accepted: Accepted, msg: Message) -> Answer:
        """The status for one request: C-ECHO on the Verification context, C-STORE of the context's SOP class."""
        context = accepted.contexts.get(msg.context_id)
        if context is None:
            raise ProtocolError("message on a presentation context that was not accepted")
        sop_class = command_ui(msg.command, AFFECTED_SOP_CLASS_UID)
        if msg.command_field == C_ECHO_RQ and context[0] == VERIFICATION:
            return Answer(STATUS_SUCCESS)
        if msg.command_field != C_STORE_RQ or context[0] == VERIFICATION:
            raise ProtocolError("a request the node does not serve on that presentation context")
        if sop_class != context[0]:
            return Answer(STATUS_SOP_CLASS_NOT_SUPPORTED)  # PS3.7 C.4.2.1.4: the class is the context's
        if msg.dropped:
            with self._lock:
                self.stats["failed"] += 1
            log.error("object not stored: the node holds too many data sets in memory; answered out of resources")
            return Answer(STATUS_OUT_OF_RESOURCES)
        if msg.data is None:
            raise ProtocolError("C-STORE without a data set")
        return self.store(sop_class, command_ui(msg.command, AFFECTED_SOP_INSTANCE_UID), context[1], msg.data)

    # -- objects -------------------------------------------------------------------------------------------------
    def store(self, sop_class: str, sop_uid: str, transfer_syntax: str, body: bytes) -> Answer:
        """Check and queue one received data set; returns the C-STORE status (and Error Comment) to answer."""
        t0 = time.perf_counter()
        oid = received_object_id(self.key, sop_uid or f"no-uid/{time.time_ns()}")
        try:
            head = file_meta_bytes(sop_class, sop_uid, transfer_syntax)
        except Exception as exc:  # noqa: BLE001 - UIDs that cannot be written as File Meta
            return self._fail(oid, STATUS_CANNOT_UNDERSTAND, "receive", f"request cannot be read "
                              f"({type(exc).__name__})", b"")
        data = head + body
        refused = self._check(oid, sop_uid, data)
        if refused is not None:
            return refused
        try:
            self.queue.put(oid, [data])
        except OSError as exc:
            return self._out_of_resources(oid, exc)
        with self._lock:
            self.stats["received"] += 1
        log.debug("object %s queued in %.1f ms", oid[:12], (time.perf_counter() - t0) * 1e3)
        self.on_stored()
        return Answer(STATUS_SUCCESS)

    def _out_of_resources(self, oid: str, exc: BaseException) -> Answer:
        with self._lock:
            self.stats["failed"] += 1
        log.error("object %s not stored (%s): answered out of resources", oid[:12], type(exc).__name__)
        return Answer(STATUS_OUT_OF_RESOURCES)

    def _check(self, oid: str, sop_uid: str, data: bytes) -> Answer | None:
        """Read the whole object as the pipeline will (the same reader, whose answer for malformed input is the
        same; sequences the length walker accounts for are not parsed, nothing here reads them) and make the
        checks ``run`` makes before its stages (:func:`refusal`): what they refuse is refused now, while the
        sender can still be told. None: it may be queued."""
        from deidpipe.dicomio import read_dataset

        # A deflated data set is charged to the budget as it inflates, and inflates no further than the
        # processing processes will let it (so nothing answered Success fails there for its size).
        with charging(self.budget.take, self.config.max_inflated_bytes) as charge:
            try:
                ds = read_dataset(data, walk_sequences=True)  # top-level attributes only: the same answer
                refused = refusal(ds, sop_uid, self.policy)
                del ds
            except InflateBudgetExceeded:
                return self._out_of_resources(oid, MemoryError())
            except InputError as exc:
                return self._fail(oid, STATUS_CANNOT_UNDERSTAND, "receive", exc.reason, data)
            except Exception as exc:  # noqa: BLE001 - fail closed; the reason is the type only
                return self._fail(oid, STATUS_CANNOT_UNDERSTAND, "receive", f"cannot be read ({type(exc).__name__})",
                                  data)
            finally:
                self.budget.give(charge.taken)
        if refused is not None:
            return self._fail(oid, refused.status, "receive", refused.comment or "refused", data)
        return None

    def _fail(self, oid: str, status: int, stage: str, reason: str, data: bytes) -> Answer:
        from deidpipe.pipeline.index import content_hash

        with self._lock:
            self.stats["failed"] += 1
        record = {"object_id": oid, "input_path_hash": oid, "content_hash": content_hash(self.key, data) if data
                  else None, "stage": stage, "reason": reason, "status": f"0x{status:04X}", "time": time.time()}
        try:
            self.queue.quarantine(oid, record)
            self.queue.audit([{"object_id": oid, "status": "refused", "stage": stage, "reason": reason,
                               "content_hash": record["content_hash"], "time": record["time"]}])
        except OSError:
            pass
        log.warning("object %s refused with 0x%04X at %s: %s", oid[:12], status, stage, reason)
        return Answer(status, reason)

