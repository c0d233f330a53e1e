"""Associations, as acceptor and as requestor, and the PS3.8 upper-layer states they go through.

The states (:class:`State`, PS3.8 table 9-2), the events (:class:`Event`, table 9-10) and every transition the
node makes (:data:`TRANSITIONS`, after table 9-10's state table) are written down here, once. Each association
carries a :class:`Machine`; the code calls ``machine.on(event)`` where the event happens, and a transition the
table does not list raises :class:`StateError`, so the table is what the code does, not a comment beside it.
Actions are named as PS3.8 names them (AE-n establishment, DT-n data transfer, AR-n release, AA-n abort).

Where the node differs from PS3.8's table, on purpose and as it always has:

* After an A-ABORT it sends, it closes the connection at once (PS3.8: Sta13 until the peer closes or the ARTIM
  timer expires). After an A-ASSOCIATE-RJ or A-RELEASE-RP it does wait in Sta13, up to 2 s
  (:meth:`deidpipe.serve.pdu.Link.finish`).
* AE-6's rejections by the service-provider (protocol version, presentation context IDs) are sent from Sta3 like
  the others (AE-8): same A-ASSOCIATE-RJ, same bytes.
* Sta9 to Sta12 (release collision) never arise: the acceptor never asks for release, and the requestor reads
  past whatever comes while it waits for A-RELEASE-RP.
* Anything out of place aborts: a requestor sends A-ABORT (service-user), the acceptor A-ABORT
  (service-provider), where PS3.8 would sometimes only close.

The acceptor: :class:`deidpipe.serve.scp.StorageSCP` accepts the connection (Sta1 to Sta2, the ARTIM timer
started), :func:`deidpipe.serve.acceptor.accept_association` reads and checks the A-ASSOCIATE-RQ (Sta2, Sta3)
and answers it, :func:`serve_requests` serves the association (Sta6) until it is released (Sta8, Sta13) or
aborted. The requestor: :class:`Requestor`, the node's C-STORE SCU (Sta4, Sta5, Sta6, Sta7), on which
:mod:`deidpipe.serve.deliver` decides what a status means. Both run on :class:`deidpipe.serve.pdu.Link`.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any, BinaryIO

from deidpipe.serve.dimse import Message, store_request, store_response, store_status
from deidpipe.serve.net import AssociationRejected, PeerAborted, PeerReleased, ProtocolError, nodelay
from deidpipe.serve.pdu import (
    ABORT,
    APPLICATION_CONTEXT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    P_DATA_TF,
    RELEASE_BODY,
    RELEASE_RP,
    RELEASE_RQ,
    ByteBudget,
    Link,
    decode_associate,
    peer_max_pdu,
    user_information,
)


class State(Enum):
    """The PS3.8 states (table 9-2) the node's associations go through; the value is the standard's name."""

    IDLE = "Sta1"  #: no connection
    AWAITING_RQ = "Sta2"  #: acceptor: connection open, awaiting A-ASSOCIATE-RQ (the ARTIM timer runs)
    AWAITING_LOCAL_ASSOCIATE = "Sta3"  #: acceptor: the request read, the node deciding (AC or RJ)
    CONNECTING = "Sta4"  #: requestor: awaiting the transport connection (and TLS handshake)
    AWAITING_AC = "Sta5"  #: requestor: A-ASSOCIATE-RQ sent, awaiting A-ASSOCIATE-AC or -RJ
    ESTABLISHED = "Sta6"  #: association established, ready for data transfer
    AWAITING_RELEASE_RP = "Sta7"  #: requestor: A-RELEASE-RQ sent, awaiting A-RELEASE-RP
    AWAITING_LOCAL_RELEASE = "Sta8"  #: acceptor: A-RELEASE-RQ read, the node answering
    AWAITING_CLOSE = "Sta13"  #: the last PDU sent (A-ASSOCIATE-RJ, A-RELEASE-RP): awaiting the peer's close


class Event(Enum):
    """The PS3.8 events (table 9-10) the node acts on; the value is the standard's name."""

    ASSOCIATE_REQUEST = "Evt1"  #: requestor: A-ASSOCIATE request (open a connection)
    CONNECTED = "Evt2"  #: requestor: transport connection confirmed (TLS handshake done)
    AC_RECEIVED = "Evt3"  #: A-ASSOCIATE-AC PDU read
    RJ_RECEIVED = "Evt4"  #: A-ASSOCIATE-RJ PDU read
    CONNECTION_ACCEPTED = "Evt5"  #: acceptor: transport connection indication (a connection accepted)
    RQ_RECEIVED = "Evt6"  #: A-ASSOCIATE-RQ PDU read
    ACCEPT = "Evt7"  #: acceptor: A-ASSOCIATE response, accept
    REJECT = "Evt8"  #: acceptor: A-ASSOCIATE response, reject
    SEND_MESSAGE = "Evt9"  #: P-DATA request: a DIMSE message to send
    MESSAGE_RECEIVED = "Evt10"  #: P-DATA-TF PDU(s) read: a whole DIMSE message
    RELEASE_REQUEST = "Evt11"  #: requestor: A-RELEASE request
    RELEASE_RQ_RECEIVED = "Evt12"  #: A-RELEASE-RQ PDU read
    RELEASE_RP_RECEIVED = "Evt13"  #: A-RELEASE-RP PDU read
    RELEASE_RESPONSE = "Evt14"  #: acceptor: A-RELEASE response
    ABORT_REQUEST = "Evt15"  #: the node aborts (a timeout, a failure, a requestor's failed C-STORE)
    ABORT_RECEIVED = "Evt16"  #: A-ABORT PDU read
    CONNECTION_CLOSED = "Evt17"  #: the connection closed or was lost (or could not be opened)
    ARTIM_EXPIRED = "Evt18"  #: the ARTIM timer (or a network timeout before any association) expired
    INVALID_PDU = "Evt19"  #: a PDU out of place, unrecognized or invalid (acceptor: any protocol error)


S, E = State, Event
#: (state, event, action, next state, what happens). Actions as PS3.8 names them; "-": none (read past).
_ROWS: tuple[tuple[State, Event, str, State, str], ...] = (
    # acceptor: establishment (scp.StorageSCP, acceptor.accept_association)
    (S.IDLE, E.CONNECTION_ACCEPTED, "AE-5", S.AWAITING_RQ, "connection accepted, ARTIM timer started"),
    (S.AWAITING_RQ, E.RQ_RECEIVED, "AE-6", S.AWAITING_LOCAL_ASSOCIATE, "A-ASSOCIATE-RQ read whole in time"),
    (S.AWAITING_RQ, E.ARTIM_EXPIRED, "AA-2", S.IDLE, "no whole A-ASSOCIATE-RQ in time: closed, no A-ABORT"),
    (S.AWAITING_RQ, E.CONNECTION_CLOSED, "AA-5", S.IDLE, "TLS handshake failed, evicted, or node stopping"),
    (S.AWAITING_LOCAL_ASSOCIATE, E.ACCEPT, "AE-7", S.ESTABLISHED, "A-ASSOCIATE-AC sent"),
    (S.AWAITING_LOCAL_ASSOCIATE, E.REJECT, "AE-8", S.AWAITING_CLOSE, "A-ASSOCIATE-RJ sent"),
    (S.AWAITING_LOCAL_ASSOCIATE, E.ARTIM_EXPIRED, "AA-2", S.IDLE, "a send timed out: closed, no A-ABORT"),
    # acceptor: data transfer and release (serve_requests)
    (S.ESTABLISHED, E.MESSAGE_RECEIVED, "DT-2", S.ESTABLISHED, "a whole request (or response) read"),
    (S.ESTABLISHED, E.SEND_MESSAGE, "DT-1", S.ESTABLISHED, "a response (or C-STORE-RQ) sent"),
    (S.ESTABLISHED, E.RELEASE_RQ_RECEIVED, "AR-2", S.AWAITING_LOCAL_RELEASE, "A-RELEASE-RQ read"),
    (S.AWAITING_LOCAL_RELEASE, E.RELEASE_RESPONSE, "AR-4", S.AWAITING_CLOSE, "A-RELEASE-RP sent"),
    (S.ESTABLISHED, E.ABORT_RECEIVED, "AA-3", S.IDLE, "A-ABORT read: closed"),
    (S.ESTABLISHED, E.CONNECTION_CLOSED, "AA-4", S.IDLE, "connection lost (or node stopping): closed"),
    (S.AWAITING_CLOSE, E.CONNECTION_CLOSED, "AR-5", S.IDLE, "the peer closed: closed"),
    (S.AWAITING_CLOSE, E.ARTIM_EXPIRED, "AA-2", S.IDLE, "the peer did not close within 2 s: closed"),
    # requestor (Requestor)
    (S.IDLE, E.ASSOCIATE_REQUEST, "AE-1", S.CONNECTING, "connecting (TCP, then TLS)"),
    (S.CONNECTING, E.CONNECTED, "AE-2", S.AWAITING_AC, "A-ASSOCIATE-RQ sent"),
    (S.CONNECTING, E.CONNECTION_CLOSED, "AA-4", S.IDLE, "cannot connect, or TLS handshake failed"),
    (S.AWAITING_AC, E.AC_RECEIVED, "AE-3", S.ESTABLISHED, "A-ASSOCIATE-AC read, contexts negotiated"),
    (S.AWAITING_AC, E.RJ_RECEIVED, "AE-4", S.IDLE, "A-ASSOCIATE-RJ read: closed"),
    (S.ESTABLISHED, E.RELEASE_REQUEST, "AR-1", S.AWAITING_RELEASE_RP, "A-RELEASE-RQ sent"),
    (S.AWAITING_RELEASE_RP, E.RELEASE_RP_RECEIVED, "AR-3", S.IDLE, "A-RELEASE-RP read: closed"),
    (S.AWAITING_RELEASE_RP, E.ABORT_RECEIVED, "AA-3", S.IDLE, "A-ABORT read: closed"),
    (S.AWAITING_RELEASE_RP, E.CONNECTION_CLOSED, "AA-4", S.IDLE, "no A-RELEASE-RP in time, or lost: closed"),
    (S.AWAITING_RELEASE_RP, E.MESSAGE_RECEIVED, "AR-6", S.AWAITING_RELEASE_RP, "a late P-DATA-TF: read past"),
    *((S.AWAITING_RELEASE_RP, e, "-", S.AWAITING_RELEASE_RP, "read past (no release collision, Sta9-12)")
      for e in (E.RELEASE_RQ_RECEIVED, E.RQ_RECEIVED, E.AC_RECEIVED, E.RJ_RECEIVED, E.INVALID_PDU)),
    # aborts: the acceptor's on a protocol error; either side's on a timeout or failure (from any state with a
    # connection). The node sends A-ABORT (where the connection still takes it) and closes at once.
    *((s, E.INVALID_PDU, "AA-8", S.IDLE, "protocol error: A-ABORT (service-provider), closed")
      for s in (S.AWAITING_RQ, S.AWAITING_LOCAL_ASSOCIATE, S.ESTABLISHED, S.AWAITING_LOCAL_RELEASE,
                S.AWAITING_CLOSE)),
    *((s, E.ABORT_REQUEST, "AA-1", S.IDLE, "the node aborts: A-ABORT, closed") for s in State if s is not S.IDLE),
)
del S, E
#: (state, event) -> (action, next state): what :meth:`Machine.on` follows.
TRANSITIONS: dict[tuple[State, Event], tuple[str, State]] = {
    (_state, _event): (_action, _next) for _state, _event, _action, _next, _ in _ROWS}
assert len(TRANSITIONS) == len(_ROWS), "a (state, event) pair has two rows in the table"


class StateError(RuntimeError):
    """An event in a state where :data:`TRANSITIONS` lists no transition: a bug in the node, not the peer."""


class Machine:
    """One association's PS3.8 state; :meth:`on` moves it as :data:`TRANSITIONS` says."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.IDLE

    def on(self, event: Event) -> str:
        """Move on ``event``; returns the action (PS3.8's name) the caller performs. :class:`StateError` when the
        table has no such transition."""
        try:
            action, self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise StateError(f"{event.value} in {self.state.value}: no transition") from None
        return action

    def end(self, event: Event) -> None:
        """On an error path: take ``event`` where the table has it, and be idle in any case. An error handler
        must not raise (the error it handles may itself be a :class:`StateError`, the machine then already idle)."""
        self.state = TRANSITIONS.get((self.state, event), ("", State.IDLE))[1]


#: The event each PDU type is, read (PS3.8 table 9-10); any other type: :attr:`Event.INVALID_PDU`.
PDU_EVENTS = {ASSOCIATE_RQ: Event.RQ_RECEIVED, ASSOCIATE_AC: Event.AC_RECEIVED, ASSOCIATE_RJ: Event.RJ_RECEIVED,
              P_DATA_TF: Event.MESSAGE_RECEIVED, RELEASE_RQ: Event.RELEASE_RQ_RECEIVED,
              RELEASE_RP: Event.RELEASE_RP_RECEIVED, ABORT: Event.ABORT_RECEIVED}


def send_last_pdu(link: Link, machine: Machine, event: Event, pdu_type: int, body: bytes) -> None:
    """The association's last PDU (A-ASSOCIATE-RJ on :attr:`Event.REJECT`, A-RELEASE-RP on
    :attr:`Event.RELEASE_RESPONSE`), then Sta13 until the peer closes (at most 2 s), then closed."""
    machine.on(event)
    link.send_pdu(pdu_type, body)
    machine.on(Event.CONNECTION_CLOSED if link.finish() else Event.ARTIM_EXPIRED)


# -- acceptor ----------------------------------------------------------------------------------------------------
def serve_requests(link: Link, machine: Machine, answer: Callable[[Message], tuple[int, str | None]],
                   budget: ByteBudget) -> None:
    """An accepted association (Sta6) to its end: each request read whole (its data set charged to ``budget``
    as it arrives, given back once answered) and answered with ``answer``'s status and Error Comment, until the
    peer releases it (answered A-RELEASE-RP) or aborts it, or the connection ends."""
    while True:
        try:
            msg = link.read_message(budget=budget)
        except PeerReleased:
            machine.on(Event.RELEASE_RQ_RECEIVED)
            send_last_pdu(link, machine, Event.RELEASE_RESPONSE, RELEASE_RP, RELEASE_BODY)
            return
        except PeerAborted as exc:
            machine.on(Event.ABORT_RECEIVED if exc.abort_pdu else Event.CONNECTION_CLOSED)
            return
        machine.on(Event.MESSAGE_RECEIVED)
        try:
            status, comment = answer(msg)
        finally:
            budget.give(msg.reserved)
        machine.on(Event.SEND_MESSAGE)
        link.send_message(msg.context_id, store_response(msg, status, comment))


# -- requestor ---------------------------------------------------------------------------------------------------
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
        #: The link while the association is established (Sta6), else None.
        self.link: Link | None = None
        self.machine = Machine()
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
        rq_contexts = _requested_contexts(contexts)
        self.machine.on(Event.ASSOCIATE_REQUEST)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            self.machine.on(Event.CONNECTION_CLOSED)
            raise PeerAborted(f"cannot connect ({type(exc).__name__})") from None
        nodelay(sock)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.server_hostname or self.host)
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                self.machine.on(Event.CONNECTION_CLOSED)
                raise PeerAborted(f"TLS handshake failed ({type(exc).__name__})") from None
        link = Link(sock, self.timeout)
        try:
            self.contexts = self._associate(link, rq_contexts)
        except AssociationRejected:  # the acceptor ends it: nothing more to say
            link.close()
            raise
        except BaseException:
            self.machine.on(Event.ABORT_REQUEST)
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
        self.machine.on(Event.CONNECTED)
        link.send(pdu.encode())
        pdu_type, body = link.read_pdu()
        if pdu_type == ASSOCIATE_RJ:
            self.machine.on(Event.RJ_RECEIVED)
            raise AssociationRejected("association rejected")
        if pdu_type != ASSOCIATE_AC:
            raise PeerAborted("association aborted")
        reply = decode_associate(A_ASSOCIATE_AC, ASSOCIATE_AC, body)
        link.peer_max_pdu = peer_max_pdu(reply.user_information)
        results = negotiate_as_requestor(rq_contexts, reply.presentation_context_definition_results_list)
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])): int(cx.context_id)
                    for cx in results if cx.result == 0x00 and cx.transfer_syntax}
        self.machine.on(Event.AC_RECEIVED)
        return accepted

    def store(self, sop_class: str, sop_instance: str, transfer_syntax: str, data: bytes | memoryview | BinaryIO,
              priority: int = 0) -> int:
        """Send one C-STORE-RQ with ``data`` (the data set encoded in ``transfer_syntax``); returns the status.
        Raises ``KeyError`` if no accepted context carries it, :class:`ProtocolError` if the link fails."""
        if self.link is None:
            raise ProtocolError("no association")
        context_id = self.contexts[(sop_class, transfer_syntax)]
        self._message_id = self._message_id % 0xFFFF + 1
        command = store_request(self._message_id, sop_class, sop_instance, priority)
        try:
            self.machine.on(Event.SEND_MESSAGE)
            self.link.send_message(context_id, command, data)
            while True:
                rsp = self.link.read_message(max_data=1 << 16)  # a C-STORE-RSP carries no data set
                self.machine.on(Event.MESSAGE_RECEIVED)
                status = store_status(rsp, self._message_id)
                if status is not None:
                    return status
        except PeerReleased:  # not AR-2: a release asked for in the middle of a C-STORE ends it
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
            self.machine.on(Event.RELEASE_REQUEST)
            link.send_pdu(RELEASE_RQ, RELEASE_BODY)
            while self.machine.state is State.AWAITING_RELEASE_RP:
                self.machine.on(PDU_EVENTS.get(link.read_pdu()[0], Event.INVALID_PDU))
        except ProtocolError:
            self.machine.on(Event.CONNECTION_CLOSED)
        link.close()

    def abort(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            self.machine.on(Event.ABORT_REQUEST)
            link.abort(source=0x00)
