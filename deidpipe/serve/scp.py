"""The Storage SCP: C-ECHO, and C-STORE for every storage SOP class, answered Success only once the object is
durably queued (:meth:`deidpipe.serve.queue.Queue.put`: data and name fsynced).

Statuses a sender may get:

* ``0x0000`` Success: the object is on disk in the queue and will be delivered (at least once) or quarantined.
* ``0xA700`` Out of resources: the queue could not store it (disk full, I/O error): the sender should retry.
* ``0xC000`` Cannot understand: the data set cannot be parsed; a quarantine record names the reason.
* ``0xA900`` Data set does not match SOP class: its SOP Instance UID is not the one the request names.

A caller whose address is not allowed is disconnected before its association is read; one whose calling AE
title is not allowed gets an A-ASSOCIATE-RJ (calling AE title not recognised). Every accepted socket has
``TCP_NODELAY`` set (Nagle's algorithm stalls each small PDU by tens of milliseconds on loopback).
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from deidpipe.errors import InputError
from deidpipe.keys import ProjectKey
from deidpipe.serve.config import ServeConfig, TlsConfig
from deidpipe.serve.queue import Queue, object_id

log = logging.getLogger("deidpipe.serve")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


#: Transfer syntaxes the SCP accepts, in its order of preference (pynetdicom's acceptor takes the first of its
#: own list that the sender proposes): Explicit VR Little Endian first, so that a sender proposing several for
#: one context sends what ``run`` would read from its file; compressed ones next (proposed for compressed files).
_UNCOMPRESSED_LAST = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1"] + [
    ts for ts in ALL_TRANSFER_SYNTAXES if ts != "1.2.840.10008.1.2.1" and ts not in _UNCOMPRESSED_LAST
] + list(_UNCOMPRESSED_LAST)


def quiet_pynetdicom() -> None:
    """pynetdicom's own log lines quote UIDs and AE titles of the traffic: only its errors go through, and
    those are logged by this module in its own words."""
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def nodelay(sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


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


class _Server(ThreadedAssociationServer):
    """pynetdicom's server with an address allow-list and TCP_NODELAY on every accepted socket."""

    allowed: Callable[[str], bool] = staticmethod(lambda address: True)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()  # type: ignore[union-attr]
        nodelay(client)
        if self.ssl_context:
            client.settimeout(30)  # a handshake that never comes must not hold the accept loop
            try:
                client = self.ssl_context.wrap_socket(client, server_side=True)
            except (OSError, ssl.SSLError):
                log.warning("TLS handshake failed: connection closed")
                client.close()
                raise
            client.settimeout(None)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        ok = self.allowed(client_address[0])
        if not ok:
            log.warning("connection refused: address not on the allow-list")
        return ok


class StorageSCP:
    """The node's listening side; :meth:`start` binds, :meth:`stop` closes."""

    def __init__(self, config: ServeConfig, queue: Queue, key: ProjectKey,
                 on_stored: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.queue = queue
        self.key = key
        self.on_stored = on_stored
        self.server: _Server | None = None
        self.stats = {"received": 0, "refused": 0, "failed": 0}
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def _ae(self) -> AE:
        quiet_pynetdicom()
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs
        ae.network_timeout = self.config.network_timeout_s
        ae.acse_timeout = 30
        ae.dimse_timeout = self.config.network_timeout_s
        ae.maximum_associations = 64
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.config.allowed_ae_titles:
            ae.require_calling_aet = list(self.config.allowed_ae_titles)
        return ae

    def start(self) -> None:
        ae = self._ae()
        ssl_context = server_tls_context(self.config.tls) if self.config.tls else None
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
                    (evt.EVT_REJECTED, self._on_rejected)]
        server = ae.make_server((self.config.host, self.config.port), ssl_context=ssl_context,
                                evt_handlers=handlers, server_class=_Server)
        server.allowed = self.config.address_allowed  # type: ignore[method-assign]
        thread = threading.Thread(target=server.serve_forever, name="deidpipe-scp", daemon=True)
        thread.start()
        ae._servers.append(server)
        self.ae, self.server = ae, server
        log.info("listening as %s on %s:%d%s", self.config.ae_title, self.config.host, self.port,
                 " (TLS)" if ssl_context else "")

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def _on_rejected(self, event: Any) -> None:
        with self._lock:
            self.stats["refused"] += 1
        log.warning("association rejected: calling AE title not on the allow-list")

    def _on_store(self, event: Any) -> int:
        t0 = time.perf_counter()
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID or "")
        oid = object_id(self.key, sop_uid or f"no-uid/{time.time_ns()}")
        try:
            buf = io.BytesIO()
            buf.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(buf, event.file_meta, enforce_standard=True)
            head = buf.getvalue()
            body = req.DataSet.getvalue()
        except Exception as exc:  # noqa: BLE001 - a request pynetdicom could not describe
            return self._fail(oid, STATUS_CANNOT_UNDERSTAND, "receive", f"request cannot be read "
                              f"({type(exc).__name__})", b"")
        data = head + body
        status = self._check(oid, sop_uid, data)
        if status != STATUS_SUCCESS:
            return status
        try:
            self.queue.put(oid, [data])
        except OSError as exc:
            with self._lock:
                self.stats["failed"] += 1
            log.error("object %s not stored (%s): answered out of resources", oid[:12], type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        with self._lock:
            self.stats["received"] += 1
        log.debug("object %s queued in %.1f ms", oid[:12], (time.perf_counter() - t0) * 1e3)
        self.on_stored()
        return STATUS_SUCCESS

    def _check(self, oid: str, sop_uid: str, data: bytes) -> int:
        """Parse the whole object as the pipeline will (the same reader): what it cannot read is refused now,
        while the sender can still be told."""
        from deidpipe.dicomio import read_dataset

        try:
            ds = read_dataset(data)
            inner = str(ds.get("SOPInstanceUID", "") or "")
        except InputError as exc:
            return self._fail(oid, STATUS_CANNOT_UNDERSTAND, "receive", exc.reason, data)
        except Exception as exc:  # noqa: BLE001 - fail closed; the reason is the type only
            return self._fail(oid, STATUS_CANNOT_UNDERSTAND, "receive", f"cannot be read ({type(exc).__name__})",
                              data)
        if inner.strip().rstrip("\x00") != sop_uid.strip().rstrip("\x00"):
            return self._fail(oid, STATUS_MISMATCH, "receive",
                              "SOP Instance UID of the data set differs from the request's", data)
        return STATUS_SUCCESS

    def _fail(self, oid: str, status: int, stage: str, reason: str, data: bytes) -> int:
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
        return status
