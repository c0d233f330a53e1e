"""What every network layer of the node shares: the errors of an association (raised by the DIMSE codecs,
:mod:`deidpipe.serve.dimse`, the framing, :mod:`deidpipe.serve.pdu`, and the association handling,
:mod:`deidpipe.serve.association`), ``TCP_NODELAY`` on a socket, and for starting peers beside a ``deidpipe
serve`` node (tests, benchmarks) a free port to give a peer and a wait until the node (or the peer) listens on
it."""

from __future__ import annotations

import socket
import time

__all__ = ["AssociationRejected", "NetworkTimeout", "PeerAborted", "PeerReleased", "ProtocolError", "free_port",
           "nodelay", "quickack", "wait_port"]


class ProtocolError(Exception):
    """The peer broke the protocol, or the connection ended; the message names no value."""


class NetworkTimeout(ProtocolError):
    """The peer sent nothing (or not enough) in time."""


class PeerAborted(ProtocolError):
    """The peer aborted the association (``abort_pdu``: it sent an A-ABORT) or the connection closed."""

    def __init__(self, message: str, *, abort_pdu: bool = False) -> None:
        super().__init__(message)
        self.abort_pdu = abort_pdu


class PeerReleased(Exception):
    """The peer asked for release (A-RELEASE-RQ)."""


class AssociationRejected(ProtocolError):
    """The acceptor refused the association (A-ASSOCIATE-RJ)."""


def nodelay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off: on loopback it holds each small PDU back by tens of milliseconds."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


#: Linux's TCP_QUICKACK (absent elsewhere: :func:`quickack` then does nothing).
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def quickack(sock: socket.socket) -> None:
    """Acknowledge what arrives next at once rather than up to 40 ms later (Linux ``TCP_QUICKACK``; the kernel
    drops back to delayed acknowledgements by itself, so this is asked before every read).

    Why: a peer that leaves Nagle's algorithm on (dcmtk's storescp and storescu do unless ``TCP_NODELAY`` is set
    in their environment; many archives too) holds the second small segment of a PDU until the first is
    acknowledged, and a delayed acknowledgement makes that a 40 ms stall per message. Measured, 200 objects of
    512x512 from the node to a storescp without TCP_NODELAY: 9.3 s without, 2.6 s with."""
    if _QUICKACK is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` right now, to start a peer or a node on."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Wait until something (the node, a peer just started) listens on ``host:port``; ``TimeoutError`` after
    ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")
