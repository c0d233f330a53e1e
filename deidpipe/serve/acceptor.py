"""The acceptor side of association establishment (PS3.8 sections 7.1, 9.1.2 and 9.3.2 to 9.3.4): the
A-ASSOCIATE-RQ read within the ARTIM timer, checked as PS3.8 has it, and answered with an A-ASSOCIATE-AC or -RJ.

What PS3.8 prescribes, and what the node does:

* Protocol-version (table 9-11): version 1 is bit 0 set, and a receiver "shall only test that bit 0 is set". A
  request with bit 0 clear is rejected: permanent, source service-provider (ACSE related function), reason
  protocol-version-not-supported (table 9-21: 1, 2, 2).
* Items of unrecognized types (section 9.3.1: "shall be ignored and skipped"): items the node does not know,
  in the PDU's variable field, in a Presentation Context Item and in the User Information Item, are dropped before
  the request is decoded (pynetdicom's decoder raises on them), so the association goes on.
* Presentation context IDs (sections 7.1.1.13 and 9.3.2.2): the requestor assigns "an unused identifier for
  each proposed presentation context", odd, 1 to 255, and the result list answers each proposed context one to
  one. A request that repeats an ID (or proposes an even one) cannot be answered that way, and the association
  could not tell its contexts apart: the service-provider does not accept it (AE-6 of the state machine), and
  rejects it permanently, source service-provider (ACSE related function), reason no-reason-given (1, 2, 1).
* No association slot free: rejected transient, source service-provider (presentation related function), reason
  local-limit-exceeded (2, 3, 2); the caller may try again (section 9.1.4, note 1: reject, rather than
  disconnect, for a temporary lack of resources).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from deidpipe.serve.association import Event, Machine, send_last_pdu
from deidpipe.serve.net import ProtocolError
from deidpipe.serve.pdu import (
    APPLICATION_CONTEXT,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    Link,
    decode_associate,
    peer_max_pdu,
    user_information,
)

#: A-ASSOCIATE-RJ (result, source, reason), PS3.8 table 9-21.
REJECT_NOTHING_ACCEPTABLE = (1, 1, 1)  # service-user: no reason given
REJECT_APPLICATION_CONTEXT = (1, 1, 2)  # service-user: application context name not supported
REJECT_CALLING_AE = (1, 1, 3)  # service-user: calling AE title not recognized
REJECT_MALFORMED = (1, 2, 1)  # service-provider (ACSE): no reason given
REJECT_PROTOCOL_VERSION = (1, 2, 2)  # service-provider (ACSE): protocol version not supported
REJECT_LOCAL_LIMIT = (2, 3, 2)  # transient, service-provider (presentation): local limit exceeded

#: Item types the node reads (PS3.8 tables 9-11, 9-13 and D.1-1 ff.): in the variable field of the request, in
#: a Presentation Context Item, in the User Information Item. Any other is skipped.
_RQ_ITEMS = frozenset({0x10, 0x20, 0x50})
_CONTEXT_SUB_ITEMS = frozenset({0x30, 0x40})
_USER_SUB_ITEMS = frozenset(range(0x51, 0x59))
#: Bytes of an A-ASSOCIATE-RQ's fixed fields after the PDU header (protocol version to the reserved bytes 43-74).
_RQ_FIXED = 68


@dataclass
class Accepted:
    """An association the node accepted: who called, and the accepted contexts by id (abstract syntax, transfer
    syntax)."""

    calling_ae_title: str
    called_ae_title: str
    contexts: dict[int, tuple[str, str]]


@dataclass
class Rejected:
    """An association the node rejected: the A-ASSOCIATE-RJ's (result, source, reason), and why in words (no
    value of the request)."""

    rj: tuple[int, int, int]
    reason: str

    @property
    def transient(self) -> bool:
        return self.rj[0] == 2


@dataclass
class Request:
    """An A-ASSOCIATE-RQ's variable part with the items the node does not know left out, its protocol version and
    its presentation context IDs in the order proposed."""

    body: bytes
    protocol_version: int
    context_ids: list[int]


def _items(data: bytes | bytearray, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(item type, first byte, end) of each item in ``data[pos:end]`` (1-byte type, 1 reserved, 2-byte length)."""
    while pos < end:
        if pos + 4 > end:
            raise ProtocolError("A-ASSOCIATE-RQ item header cut short")
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if pos + 4 + length > end:
            raise ProtocolError("A-ASSOCIATE-RQ item runs past its end")
        yield data[pos], pos, pos + 4 + length
        pos += 4 + length


def _keep_known(data: bytes | bytearray, start: int, end: int, fixed: int, known: frozenset[int]) -> bytes:
    """The item at ``data[start:end]`` (``fixed`` bytes before its sub-items) with only its ``known`` sub-items."""
    if end - start < fixed:
        raise ProtocolError("A-ASSOCIATE-RQ item shorter than its fixed fields")
    kept = b"".join(bytes(data[a:b]) for kind, a, b in _items(data, start + fixed, end) if kind in known)
    head = bytes(data[start:start + fixed])
    return head[:2] + struct.pack(">H", fixed - 4 + len(kept)) + head[4:] + kept


def screen_request(body: bytes | bytearray) -> Request:
    """The request's variable part without the items of unrecognized types (PS3.8 section 9.3.1), with its
    protocol version and presentation context IDs; :class:`ProtocolError` when its items do not add up."""
    if len(body) < _RQ_FIXED:
        raise ProtocolError("A-ASSOCIATE-RQ shorter than its fixed fields")
    out = bytearray(body[:_RQ_FIXED])
    ids: list[int] = []
    for kind, start, end in _items(body, _RQ_FIXED, len(body)):
        if kind == 0x20:
            out += _keep_known(body, start, end, 8, _CONTEXT_SUB_ITEMS)
            ids.append(body[start + 4])
        elif kind == 0x50:
            out += _keep_known(body, start, end, 4, _USER_SUB_ITEMS)
        elif kind in _RQ_ITEMS:
            out += body[start:end]
    return Request(bytes(out), struct.unpack_from(">H", body, 0)[0], ids)


def reject(link: Link, machine: Machine, rj: tuple[int, int, int], reason: str) -> Rejected:
    """Send the A-ASSOCIATE-RJ and close (after the peer has had its chance to read it)."""
    send_last_pdu(link, machine, Event.REJECT, ASSOCIATE_RJ, bytes([0, *rj]))
    return Rejected(rj, reason)


def accept_association(link: Link, machine: Machine, supported: list[Any],
                       calling_allowed: Callable[[str], bool] = lambda aet: True, deadline: float | None = None,
                       take_slot: Callable[[], bool] = lambda: True,
                       also_supported: Callable[[str], Any | None] = lambda sop_class: None) -> Accepted | Rejected:
    """Read the A-ASSOCIATE-RQ (all of it by ``deadline``, the ARTIM timer), check it, negotiate against
    ``supported`` (pynetdicom ``PresentationContext`` items; for a proposed abstract syntax that ``supported``
    lacks, ``also_supported(uid)`` may give one) and answer AC, or RJ (the connection then closed).
    ``take_slot`` is asked last, for a request that would be accepted: False (no slot) rejects it as transient.
    :class:`ProtocolError` for a PDU that is not an A-ASSOCIATE-RQ or cannot be decoded (the caller aborts).
    ``machine`` goes from Sta2 to Sta6 (accepted) or through Sta13 to Sta1 (rejected)."""
    from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, SCP_SCU_RoleSelectionNegotiation
    from pynetdicom.presentation import negotiate_as_acceptor

    pdu_type, body = link.read_pdu(deadline=deadline)
    if pdu_type != ASSOCIATE_RQ:
        raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
    machine.on(Event.RQ_RECEIVED)
    request = screen_request(body)
    if not request.protocol_version & 0x0001:
        return reject(link, machine, REJECT_PROTOCOL_VERSION, "protocol version not supported")
    ids = request.context_ids
    if len(set(ids)) != len(ids) or any(i % 2 == 0 for i in ids):
        return reject(link, machine, REJECT_MALFORMED, "presentation context IDs repeated or not odd")
    prim = decode_associate(A_ASSOCIATE_RQ, ASSOCIATE_RQ, request.body)
    calling = str(prim.calling_ae_title or "").strip()
    if str(prim.application_context_name or "") != APPLICATION_CONTEXT:
        return reject(link, machine, REJECT_APPLICATION_CONTEXT, "application context not supported")
    if not calling_allowed(calling):
        return reject(link, machine, REJECT_CALLING_AE, "calling AE title not on the allow-list")
    link.peer_max_pdu = peer_max_pdu(prim.user_information)
    roles = {item.sop_class_uid: (item.scu_role, item.scp_role) for item in prim.user_information
             if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid}
    proposed = prim.presentation_context_definition_list
    known = {str(cx.abstract_syntax) for cx in supported}
    extra = {str(cx.abstract_syntax) for cx in proposed} - known
    more = [c for c in (also_supported(uid) for uid in sorted(extra)) if c is not None]
    results, reply_roles = negotiate_as_acceptor(proposed, supported + more if more else supported, roles or None)
    accepted = {cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in results if cx.result == 0x00}
    if not accepted:  # no context: PS3.8 lets us accept with none, but nothing could ever be sent
        return reject(link, machine, REJECT_NOTHING_ACCEPTABLE, "no presentation context acceptable")
    if not take_slot():
        return reject(link, machine, REJECT_LOCAL_LIMIT, "every association slot taken")
    ac = A_ASSOCIATE()
    ac.application_context_name = APPLICATION_CONTEXT
    ac.calling_ae_title = prim.calling_ae_title
    ac.called_ae_title = prim.called_ae_title
    ac.result, ac.result_source = 0x00, 0x01
    ac.presentation_context_definition_results_list = results
    ac.user_information = user_information() + list(reply_roles)
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(ac)
    machine.on(Event.ACCEPT)
    link.send(pdu.encode())
    return Accepted(calling, str(prim.called_ae_title or "").strip(), accepted)
