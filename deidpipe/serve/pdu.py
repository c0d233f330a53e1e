"""Upper-layer PDUs (PS3.8 section 9.3) and their framing on a blocking socket: the node's half of the DICOM
upper layer below the association (:mod:`deidpipe.serve.association`) and above TCP or TLS.

Why not pynetdicom's own association machinery: it is built on polling loops. Its DUL and association reactors
sleep 1 ms between checks, every association runs three threads, and every PDU passes through queues between
them. Measured on this project's benchmark (200 objects of 512x512, storescu to the node to storescp, 2 cores),
the node spent 17.7 ms of CPU per object, most of it in those loops. It reached 6-7% of storescu to storescp.
Here one thread per association reads each PDU with a blocking ``recv_into`` and answers at once.

What is still pynetdicom's: the A-ASSOCIATE-RQ/AC codecs (:mod:`pynetdicom.pdu`, wrapped by
:func:`decode_associate` and :func:`user_information`) and presentation context negotiation, which run once per
association. Written here: reading and writing whole PDUs within a timeout (:class:`Link`), P-DATA-TF framing and
PDV fragmentation of DIMSE messages (PS3.8 section 9.3.5 and annex E; the command sets are
:mod:`deidpipe.serve.dimse`), and the release and abort PDUs. ``tests/serve/test_pdu.py`` checks them against
pynetdicom's encoders and against pynetdicom and dcmtk peers.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from typing import Any, BinaryIO

from deidpipe.serve.dimse import COMMAND_DATA_SET_TYPE, NO_DATA_SET, Message, command_us, decode_command
from deidpipe.serve.net import NetworkTimeout, PeerAborted, PeerReleased, ProtocolError, quickack

# PDU types, PS3.8 table 9-1
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

#: The largest P-DATA-TF the node says it receives (Maximum Length Received). Larger PDUs mean fewer trips
#: through Python per object than dcmtk's 16 KiB default.
MAX_PDU_RECEIVE = 1 << 20
#: The largest PDU sent to a peer that sets no limit (Maximum Length Received 0).
MAX_PDU_SEND_UNLIMITED = 1 << 20
#: Any PDU longer than this is refused (abort) before memory is taken for it: a P-DATA-TF longer than the node
#: said it receives, or an association PDU over 1 MiB.
PDU_HARD_LIMIT = MAX_PDU_RECEIVE
#: A command set longer than this, or a data set longer than the pipeline takes (2 GiB), is refused (abort): a
#: peer that never ends a message must not fill the node's memory.
MAX_COMMAND_BYTES = 1 << 16
#: The variable part of A-RELEASE-RQ and A-RELEASE-RP: four reserved bytes (PS3.8 tables 9-24 and 9-25).
RELEASE_BODY = b"\x00" * 4


def implementation() -> tuple[str, str]:
    """The node's Implementation Class UID and Version Name (those of the files it writes)."""
    from deidpipe.dicomio.write import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

    return IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


class Link:
    """A connected socket (TCP or TLS) carrying one association: PDUs in and out, DIMSE messages in and out."""

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self.sock = sock
        self.timeout = timeout
        self.sock.settimeout(timeout)
        #: The largest P-DATA-TF PDU the peer receives (0 until negotiated: no limit).
        self.peer_max_pdu = 0
        #: Set once a send failed part-way: nothing more may go out on this connection, not even an A-ABORT.
        self.broken = False

    # PDUs
    def _recv_exactly(self, n: int, deadline: float | None) -> bytearray:
        """``n`` bytes (at most a PDU the node accepts), all within ``deadline``: a peer that trickles a byte at a
        time must not hold a thread for ever."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NetworkTimeout("network timeout")
                self.sock.settimeout(left)
            try:
                quickack(self.sock)  # a peer with Nagle on waits for our acknowledgement: give it at once
                k = self.sock.recv_into(view[got:], n - got)
            except TimeoutError:
                raise NetworkTimeout("network timeout") from None
            except (OSError, ssl.SSLError) as exc:
                raise PeerAborted(f"connection lost ({type(exc).__name__})") from None
            if k == 0:
                raise PeerAborted("connection closed by the peer")
            got += k
        return buf

    def read_pdu(self, timeout: float | None = None, deadline: float | None = None) -> tuple[int, bytearray]:
        """The next PDU's type and its variable part (after the 6-byte header); the whole PDU within ``timeout``
        (default: the link's) once its first byte is there, or, given a ``deadline`` (``time.monotonic()``), all
        of it, its first byte included, by then (the ARTIM timer: a peer that trickles gains nothing)."""
        limit = self.timeout if timeout is None else timeout
        if deadline is None:
            self.sock.settimeout(limit)
            head = self._recv_exactly(6, None)  # waiting for a PDU to begin: one timeout
            deadline = None if limit is None else time.monotonic() + limit
        else:
            head = self._recv_exactly(6, deadline)
        pdu_type, length = head[0], struct.unpack_from(">I", head, 2)[0]
        if length > PDU_HARD_LIMIT + 6:
            raise ProtocolError("PDU longer than the node accepts")
        body = self._recv_exactly(length, deadline)
        self.sock.settimeout(self.timeout)
        return pdu_type, body

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            raise PeerAborted("connection broken by an earlier failed send")
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self.broken = True
            raise NetworkTimeout("network timeout") from None
        except (OSError, ssl.SSLError) as exc:
            self.broken = True
            raise PeerAborted(f"connection lost ({type(exc).__name__})") from None

    def send_pdu(self, pdu_type: int, body: bytes) -> None:
        self.send(struct.pack(">BBI", pdu_type, 0, len(body)) + body)

    def abort(self, source: int = 0x02, reason: int = 0x00) -> None:
        """Send A-ABORT (source 0: service user, 2: service provider) and close; errors are ignored. After a
        send that failed part-way the connection is only closed (an A-ABORT would land inside a cut PDU)."""
        if not self.broken:
            try:
                self.sock.settimeout(min(self.timeout or 5.0, 5.0))
                self.send_pdu(ABORT, bytes([0, 0, source, reason]))
            except (ProtocolError, OSError):
                pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def finish(self, linger_s: float = 2.0) -> bool:
        """Close after a last PDU (A-ASSOCIATE-RJ, A-RELEASE-RP): the peer closes first, as PS3.8 has it (the
        ARTIM timer bounds the wait, ``linger_s`` in all). Closing at once can reset the connection before the
        peer has read the PDU. True if the peer closed (or the connection failed) within ``linger_s``."""
        deadline = time.monotonic() + linger_s
        closed = False
        try:
            if not isinstance(self.sock, ssl.SSLSocket):
                self.sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(4096):
                    closed = True
                    break
        except (OSError, ValueError):
            closed = True
        self.close()
        return closed

    # DIMSE messages
    def send_message(self, context_id: int, command: bytes, data: bytes | memoryview | BinaryIO | None = None) -> None:
        """Send a command set and its data set (bytes, or a file positioned at the data set's first byte, read in
        PDU-sized pieces) as P-DATA-TF PDUs no longer than the peer accepts."""
        # Never more than 1 MiB a PDU, whatever the peer takes (smaller PDUs are always allowed).
        limit = min(self.peer_max_pdu or MAX_PDU_SEND_UNLIMITED, MAX_PDU_SEND_UNLIMITED)
        step = max(limit - 6, 1)  # one PDV item per PDU: 4 bytes of length and 2 of header take part of it
        self._send_fragments(context_id, 0x01, memoryview(command), step)
        if data is None:
            return
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._send_fragments(context_id, 0x00, memoryview(data), step)
            return
        chunk = data.read(step)
        while True:
            nxt = data.read(step) if len(chunk) == step else b""
            last = not nxt
            self._send_pdv(context_id, 0x02 if last else 0x00, chunk)
            if last:
                return
            chunk = nxt

    def _send_fragments(self, context_id: int, kind: int, view: memoryview, step: int) -> None:
        if not len(view):
            self._send_pdv(context_id, kind | 0x02, b"")
            return
        for pos in range(0, len(view), step):
            piece = view[pos:pos + step]
            self._send_pdv(context_id, kind | (0x02 if pos + step >= len(view) else 0x00), piece)

    def _send_pdv(self, context_id: int, control: int, piece: bytes | memoryview) -> None:
        n = len(piece)
        self.send(struct.pack(">BBIIBB", P_DATA_TF, 0, n + 6, n + 2, context_id, control) + bytes(piece))

    def read_message(self, max_data: int = 2 * 1024**3, budget: ByteBudget | None = None) -> Message:
        """The next whole DIMSE message (a data set of at most ``max_data`` bytes). With a ``budget``, the data
        set's bytes are taken from it as they arrive (the caller gives them back, :attr:`Message.reserved`); a
        data set the budget cannot hold is read to its end and dropped (:attr:`Message.dropped`: answer
        out of resources). Raises :class:`PeerReleased` on A-RELEASE-RQ, :class:`PeerAborted` on A-ABORT or a
        closed connection, :class:`ProtocolError` on anything else out of place."""
        command = bytearray()
        data_parts: list[memoryview] = []
        data_size = 0
        reserved = 0
        dropped = False
        context_id = -1
        cmd: dict[int, bytes] | None = None
        try:
            while True:
                pdu_type, body = self.read_pdu()
                if pdu_type == RELEASE_RQ:
                    raise PeerReleased()
                if pdu_type == ABORT:
                    raise PeerAborted("aborted by the peer", abort_pdu=True)
                if pdu_type != P_DATA_TF:
                    raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}")
                view = memoryview(body)
                pos = 0
                while pos < len(view):
                    if pos + 6 > len(view):
                        raise ProtocolError("PDV item cut short")
                    length = struct.unpack_from(">I", view, pos)[0]
                    if length < 2 or pos + 4 + length > len(view):
                        raise ProtocolError("PDV item length out of range")
                    ctx, control = view[pos + 4], view[pos + 5]
                    piece = view[pos + 6:pos + 4 + length]
                    pos += 4 + length
                    if context_id == -1:
                        context_id = ctx
                    elif ctx != context_id:
                        raise ProtocolError("PDVs of one message on two presentation contexts")
                    if control & 0x01:  # command fragment
                        if cmd is not None:
                            raise ProtocolError("command fragment after the command set ended")
                        command += piece
                        if len(command) > MAX_COMMAND_BYTES:
                            raise ProtocolError("command set longer than the node accepts")
                        if control & 0x02:
                            cmd = decode_command(command)
                            if command_us(cmd, COMMAND_DATA_SET_TYPE) == NO_DATA_SET:
                                if pos != len(view):
                                    raise ProtocolError("data after a message without a data set")
                                return Message(context_id, cmd, None)
                        continue
                    if cmd is None:
                        raise ProtocolError("data set fragment before the command set")
                    data_size += len(piece)
                    if data_size > max_data:
                        raise ProtocolError("data set longer than the node accepts")
                    if not dropped and budget is not None:
                        if budget.take(len(piece)):
                            reserved += len(piece)
                        else:  # read on to the end, keep nothing
                            dropped = True
                            budget.give(reserved)
                            reserved = 0
                            data_parts.clear()
                    if not dropped:
                        data_parts.append(piece)
                    if control & 0x02:
                        if pos != len(view):
                            raise ProtocolError("data after the last fragment of a message")
                        msg = Message(context_id, cmd, None if dropped else b"".join(data_parts), reserved,
                                      dropped)
                        reserved = 0
                        return msg
        finally:
            if reserved and budget is not None:
                budget.give(reserved)


class ByteBudget:
    """Bytes of data sets being received, node-wide (:meth:`Link.read_message`): what many associations hold
    in memory at once is bounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


# -- A-ASSOCIATE PDUs (both sides: :mod:`deidpipe.serve.acceptor`, :mod:`deidpipe.serve.association`) -----------
def user_information() -> list[Any]:
    """The node's A-ASSOCIATE user information, as requestor and as acceptor: the largest PDU it receives
    (:data:`MAX_PDU_RECEIVE`) and its implementation class UID and version name."""
    from pynetdicom.pdu_primitives import (
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
    )

    max_len = MaximumLengthNotification()
    max_len.maximum_length_received = MAX_PDU_RECEIVE
    uid = ImplementationClassUIDNotification()
    name = ImplementationVersionNameNotification()
    uid.implementation_class_uid, name.implementation_version_name = implementation()
    return [max_len, uid, name]


def decode_associate(pdu_class: Any, pdu_type: int, body: bytes | bytearray) -> Any:
    """An A-ASSOCIATE-RQ or -AC PDU's variable part decoded by pynetdicom (``pdu_class``), as its primitive;
    :class:`ProtocolError` naming the exception type only when it cannot be decoded."""
    pdu = pdu_class()
    try:
        pdu.decode(struct.pack(">BBI", pdu_type, 0, len(body)) + bytes(body))
        return pdu.to_primitive()
    except Exception as exc:  # noqa: BLE001 - a malformed PDU: abort, naming the type only
        raise ProtocolError(f"A-ASSOCIATE PDU cannot be decoded ({type(exc).__name__})") from None


def peer_max_pdu(info: list[Any]) -> int:
    """The Maximum Length Received in a peer's user information (0: no limit)."""
    from pynetdicom.pdu_primitives import MaximumLengthNotification

    for item in info:
        if isinstance(item, MaximumLengthNotification):
            return int(item.maximum_length_received or 0)
    return 0

