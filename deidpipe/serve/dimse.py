"""DIMSE command sets (PS3.7 section 9.3 and annex E): the C-ECHO and C-STORE requests and responses the node
sends and reads, and the statuses it answers with.

A command set is group 0000 in Implicit VR Little Endian, Command Group Length (0000,0000) first. Encoded and
decoded here, not by pydicom (a command set per object, on the path every sender waits on);
``tests/serve/test_pdu.py`` checks the bytes against pynetdicom's encoder. How a message travels in P-DATA-TF PDUs
is :mod:`deidpipe.serve.pdu`; which association it travels on, :mod:`deidpipe.serve.association`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from deidpipe.serve.net import ProtocolError

#: The Verification SOP Class (C-ECHO).
VERIFICATION = "1.2.840.10008.1.1"

# Command Set elements, PS3.7 annex E
AFFECTED_SOP_CLASS_UID = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
PRIORITY = 0x00000700
COMMAND_DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
#: Error Comment (LO, at most 64 characters): the node's reason for a failure status, fixed words, never a value.
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE_UID = 0x00001000

C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
#: Command Data Set Type (0000,0800) of a message without a data set; any other value: one follows.
NO_DATA_SET = 0x0101

# Statuses the node's Storage SCP answers (PS3.4 annex B.2.3, PS3.7 annex C); what each means to a sender is
# in :mod:`deidpipe.serve.scp`'s docstring, how the node's SCU reads a destination's in :mod:`.deliver`.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_MISMATCH = 0xA900
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_CANNOT_UNDERSTAND = 0xC000

_US_TAGS = frozenset({COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_BEING_RESPONDED_TO, PRIORITY, COMMAND_DATA_SET_TYPE,
                      STATUS})


def encode_command(elements: Iterable[tuple[int, int | str]]) -> bytes:
    """A command set from ``(tag, value)`` pairs in ascending tag order: unsigned shorts for the US elements,
    the Error Comment as text (padded with a space), UIDs (padded with NUL to even length) for the rest; Command
    Group Length (0000,0000) first."""
    body = bytearray()
    for tag, value in elements:
        if tag in _US_TAGS:
            raw = struct.pack("<H", int(value))
        else:
            raw = str(value).encode("latin-1", "replace")
            if len(raw) % 2:
                raw += b" " if tag == ERROR_COMMENT else b"\x00"
        body += struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(raw)) + raw
    return struct.pack("<HHII", 0, 0, 4, len(body)) + bytes(body)


def decode_command(data: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """The elements of a command set, raw, by tag. Raises :class:`ProtocolError` if it is cut short."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise ProtocolError("command set ends inside an element header")
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if pos + length > end:
            raise ProtocolError("command set element runs past the end")
        out[(group << 16) | elem] = bytes(data[pos:pos + length])
        pos += length
    return out


def command_us(cmd: dict[int, bytes], tag: int) -> int | None:
    raw = cmd.get(tag)
    return struct.unpack("<H", raw[:2])[0] if raw is not None and len(raw) >= 2 else None


def command_ui(cmd: dict[int, bytes], tag: int) -> str:
    return cmd.get(tag, b"").decode("latin-1").rstrip("\x00 ")


@dataclass
class Message:
    """One DIMSE message: its presentation context, its command set (raw elements by tag) and its data set's
    bytes as they arrived (``None`` when the command says there is none)."""

    context_id: int
    command: dict[int, bytes]
    data: bytes | None
    #: Bytes of a :class:`deidpipe.serve.pdu.ByteBudget` this message holds (given back by whoever handles it).
    reserved: int = 0
    #: The data set was read and dropped: the budget could not hold it.
    dropped: bool = False

    @property
    def command_field(self) -> int | None:
        return command_us(self.command, COMMAND_FIELD)


def store_request(message_id: int, sop_class: str, sop_instance: str, priority: int = 0) -> bytes:
    """The C-STORE-RQ command set for one data set (which follows it: Command Data Set Type 0000)."""
    return encode_command([(AFFECTED_SOP_CLASS_UID, sop_class), (COMMAND_FIELD, C_STORE_RQ),
                           (MESSAGE_ID, message_id), (PRIORITY, priority),
                           (COMMAND_DATA_SET_TYPE, 0x0000), (AFFECTED_SOP_INSTANCE_UID, sop_instance)])


def store_status(response: Message, message_id: int) -> int | None:
    """The Status (0000,0900) of ``response`` if it is the C-STORE-RSP to request ``message_id``, else None;
    :class:`ProtocolError` for that response without a status."""
    if response.command_field != C_STORE_RSP or \
            command_us(response.command, MESSAGE_ID_BEING_RESPONDED_TO) != message_id:
        return None
    status = command_us(response.command, STATUS)
    if status is None:
        raise ProtocolError("C-STORE-RSP without a status")
    return status


def store_response(request: Message, status: int, comment: str | None = None) -> bytes:
    """The C-STORE-RSP (or C-ECHO-RSP) command set answering ``request`` with ``status``, and for a C-STORE
    ``comment`` as its Error Comment (0000,0902; PS3.7 C.4.2: a related field of the failure statuses), cut to
    the 64 ASCII characters of an LO."""
    cmd = request.command
    message_id = command_us(cmd, MESSAGE_ID) or 0
    if request.command_field == C_ECHO_RQ:
        return encode_command([(AFFECTED_SOP_CLASS_UID, command_ui(cmd, AFFECTED_SOP_CLASS_UID) or VERIFICATION),
                               (COMMAND_FIELD, C_ECHO_RSP), (MESSAGE_ID_BEING_RESPONDED_TO, message_id),
                               (COMMAND_DATA_SET_TYPE, NO_DATA_SET), (STATUS, status)])
    error = [(ERROR_COMMENT, comment.encode("ascii", "replace").decode()[:64].rstrip())] if comment else []
    return encode_command([(AFFECTED_SOP_CLASS_UID, command_ui(cmd, AFFECTED_SOP_CLASS_UID)),
                           (COMMAND_FIELD, C_STORE_RSP), (MESSAGE_ID_BEING_RESPONDED_TO, message_id),
                           (COMMAND_DATA_SET_TYPE, NO_DATA_SET), (STATUS, status), *error,
                           (AFFECTED_SOP_INSTANCE_UID, command_ui(cmd, AFFECTED_SOP_INSTANCE_UID))])
