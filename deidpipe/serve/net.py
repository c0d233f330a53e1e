"""Small network helpers: ``TCP_NODELAY`` on a socket, and for starting peers beside a ``deidpipe serve`` node
(tests, benchmarks) a free port to give a peer and a wait until the node (or the peer) listens on it."""

from __future__ import annotations

import socket
import time

__all__ = ["free_port", "nodelay", "wait_port"]


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
