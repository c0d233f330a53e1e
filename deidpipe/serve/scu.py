"""The node's C-STORE SCU: one association to a destination, on :mod:`deidpipe.serve.ul`'s blocking links.

:class:`Requestor` opens the association (A-ASSOCIATE-RQ built and the answer decoded by pynetdicom, contexts
negotiated by :func:`pynetdicom.presentation.negotiate_as_requestor`), sends data sets as they are on disk and
returns each C-STORE-RSP status; :mod:`deidpipe.serve.deliver` decides what a status means.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable
from typing import Any, BinaryIO

from deidpipe.serve.ul import (
    ABORT,
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    APPLICATION_CONTEXT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    C_STORE_RQ,
    C_STORE_RSP,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    PRIORITY,
    RELEASE_RP,
    RELEASE_RQ,
    STATUS,
    AssociationRejected,
    Link,
    PeerAborted,
    PeerReleased,
    ProtocolError,
    command_us,
    decode_associate,
    encode_command,
    peer_max_pdu,
    user_information,
)


def _requested_contexts(contexts: Iterable[tuple[str, list[str]]]) -> list[Any]:
    """pynetdicom presentation contexts with odd ids 1, 3, 5...; at most 128 (PS3.8 9.3.2.2)."""
    from pynetdicom.presentation import build_context

    out = []
    for i, (sop_class, syntaxes) in enumerate(contexts):
        cx = build_context(sop_class, list(syntaxes))
        cx.context_id = 2 * i + 1
        out.append(cx)
    if len(out) > 128:
        raise ProtocolError("more than 128 presentation contexts asked for")
    return out


class Requestor:
    """A C-STORE SCU association: :meth:`open` negotiates the ``contexts`` asked for (``(SOP class, [transfer
    syntaxes])``), :meth:`store` sends one data set and returns the peer's status, :meth:`release` ends it."""

    def __init__(self, host: str, port: int, called: str, calling: str, *, timeout: float = 30.0,
                 tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> None:
        self.host, self.port, self.called, self.calling = host, port, called, calling
        self.timeout, self.tls, self.server_hostname = timeout, tls, server_hostname
        self.link: Link | None = None
        #: Accepted contexts: (SOP class, transfer syntax) -> context id.
        self.contexts: dict[tuple[str, str], int] = {}
        self._message_id = 0

    @property
    def is_established(self) -> bool:
        """An association that can carry a C-STORE now: open, no send has failed on it, and the peer has sent
        nothing unasked (an A-ABORT, or its side closed while the association sat idle)."""
        if self.link is None or self.link.broken:
            return False
        import select

        try:
            readable, _, _ = select.select([self.link.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def open(self, contexts: Iterable[tuple[str, list[str]]]) -> None:
        """Connect and associate; raises :class:`AssociationRejected` or :class:`ProtocolError` (the connection
        closed)."""
        from deidpipe.serve.net import nodelay

        rq_contexts = _requested_contexts(contexts)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise PeerAborted(f"cannot connect ({type(exc).__name__})") from None
        nodelay(sock)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.server_hostname or self.host)
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise PeerAborted(f"TLS handshake failed ({type(exc).__name__})") from None
        link = Link(sock, self.timeout)
        try:
            self.contexts = self._associate(link, rq_contexts)
        except AssociationRejected:  # the acceptor ends it: nothing more to say
            link.close()
            raise
        except BaseException:
            link.abort(source=0x00)
            raise
        self.link = link

    def _associate(self, link: Link, rq_contexts: list[Any]) -> dict[tuple[str, str], int]:
        """A-ASSOCIATE-RQ out, the answer in: the accepted contexts."""
        from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
        from pynetdicom.pdu_primitives import A_ASSOCIATE
        from pynetdicom.presentation import negotiate_as_requestor

        prim = A_ASSOCIATE()
        prim.application_context_name = APPLICATION_CONTEXT
        prim.calling_ae_title, prim.called_ae_title = self.calling, self.called
        prim.presentation_context_definition_list = rq_contexts
        prim.user_information = user_information()
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(prim)
        link.send(pdu.encode())
        pdu_type, body = link.read_pdu()
        if pdu_type == ASSOCIATE_RJ:
            raise AssociationRejected("association rejected")
        if pdu_type != ASSOCIATE_AC:
            raise PeerAborted("association aborted")
        reply = decode_associate(A_ASSOCIATE_AC, ASSOCIATE_AC, body)
        link.peer_max_pdu = peer_max_pdu(reply.user_information)
        results = negotiate_as_requestor(rq_contexts, reply.presentation_context_definition_results_list)
        return {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])): int(cx.context_id)
                for cx in results if cx.result == 0x00 and cx.transfer_syntax}

    def store(self, sop_class: str, sop_instance: str, transfer_syntax: str, data: bytes | memoryview | BinaryIO,
              priority: int = 0) -> int:
        """Send one C-STORE-RQ with ``data`` (the data set encoded in ``transfer_syntax``); returns the status.
        Raises ``KeyError`` if no accepted context carries it, :class:`ProtocolError` if the link fails."""
        if self.link is None:
            raise ProtocolError("no association")
        context_id = self.contexts[(sop_class, transfer_syntax)]
        self._message_id = self._message_id % 0xFFFF + 1
        command = encode_command([(AFFECTED_SOP_CLASS_UID, sop_class), (COMMAND_FIELD, C_STORE_RQ),
                                  (MESSAGE_ID, self._message_id), (PRIORITY, priority),
                                  (COMMAND_DATA_SET_TYPE, 0x0000), (AFFECTED_SOP_INSTANCE_UID, sop_instance)])
        try:
            self.link.send_message(context_id, command, data)
            while True:
                rsp = self.link.read_message(max_data=1 << 16)  # a C-STORE-RSP carries no data set
                if rsp.command_field == C_STORE_RSP and \
                        command_us(rsp.command, MESSAGE_ID_BEING_RESPONDED_TO) == self._message_id:
                    status = command_us(rsp.command, STATUS)
                    if status is None:
                        raise ProtocolError("C-STORE-RSP without a status")
                    return status
        except PeerReleased:
            self.abort()
            raise ProtocolError("the peer asked for release during a C-STORE") from None
        except ProtocolError:
            self.abort()
            raise

    def release(self) -> None:
        """A-RELEASE-RQ, then wait (up to the timeout) for A-RELEASE-RP; the connection is closed either way."""
        link, self.link = self.link, None
        if link is None:
            return
        try:
            link.send_pdu(RELEASE_RQ, b"\x00" * 4)
            while link.read_pdu()[0] not in (RELEASE_RP, ABORT):
                pass
        except ProtocolError:
            pass
        link.close()

    def abort(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            link.abort(source=0x00)
