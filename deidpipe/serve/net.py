"""What every network layer of the node shares: the errors of an association (raised by the DIMSE codecs,
:mod:`deidpipe.serve.dimse`, the framing, :mod:`deidpipe.serve.pdu`, and the association handling,
:mod:`deidpipe.serve.association`), ``TCP_NODELAY`` on a socket, and for starting peers beside a ``deidpipe
serve`` node (tests, benchmarks) a free port to give a peer and a wait until the node (or the peer) listens on
it."""

from __future__ import annotations

import socket
import time

__all__ = ["AssociationRejected", "NetworkTimeout", "PeerAborted", "PeerReleased", "ProtocolError", "free_port",
           "nodelay", "wait_port"]


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
