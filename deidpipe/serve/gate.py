"""The node's connections: pending ones (connected, no association yet) and association slots, counted apart.

A TCP connection that sends nothing costs the node little, but one that held an association slot would keep real
senders out: 80 silent connections used to fill every slot. Here:

* a connection is *pending* from its accept until its A-ASSOCIATE-RQ has been read and accepted; the ARTIM timer
  (PS3.8 section 9.1.2: set when a connection is accepted, closing it if no A-ASSOCIATE-RQ has come when it
  expires) bounds that time, the TLS handshake included;
* pending connections are bounded per peer address and in total. A new connection over a bound takes the place
  of the oldest pending one (of its own address first): a real requestor sends its request within milliseconds
  of connecting, so the oldest pending connection is the least likely to be one, and a flood of silent
  connections cannot keep a new caller from being heard;
* *association slots* count associations only; a request that finds none free is rejected as transient
  (A-ASSOCIATE-RJ, local limit exceeded), never dropped in silence.
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field


@dataclass(eq=False)
class Ticket:
    """One accepted connection: its peer address, its socket (replaced by the TLS one once wrapped), and whether
    it holds an association slot or was closed to make room for a newer connection."""

    address: str
    sock: socket.socket
    number: int = field(default_factory=itertools.count().__next__)
    associated: bool = False
    evicted: bool = False


class Gate:
    """Pending connections and association slots (thread-safe)."""

    def __init__(self, max_associations: int, max_pending: int, max_pending_per_address: int) -> None:
        self.max_associations = max_associations
        self.max_pending = max_pending
        self.max_pending_per_address = max_pending_per_address
        self.associations = 0
        self.evictions = 0
        self._pending: OrderedDict[int, Ticket] = OrderedDict()  # in order of arrival
        self._per_address: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def admit(self, sock: socket.socket, address: str) -> Ticket:
        """Count a new connection as pending; over a bound, the oldest pending connection (of the same address
        if that address is at its bound) is shut down to make room."""
        ticket = Ticket(address, sock)
        with self._lock:
            victim = None
            if self._per_address[address] >= self.max_pending_per_address:
                victim = next(t for t in self._pending.values() if t.address == address)
            elif len(self._pending) >= self.max_pending:
                victim = next(iter(self._pending.values()))
            if victim is not None:
                self._drop(victim)
                victim.evicted = True
                self.evictions += 1
            self._pending[ticket.number] = ticket
            self._per_address[address] += 1
        if victim is not None:  # its thread sees the connection end and finishes
            _shutdown(victim.sock)
        return ticket

    def rewrap(self, ticket: Ticket, sock: socket.socket) -> bool:
        """The connection now runs over ``sock`` (TLS); False if it was evicted meanwhile."""
        with self._lock:
            ticket.sock = sock
            return not ticket.evicted

    def take_slot(self, ticket: Ticket) -> bool:
        """Turn a pending connection into an association, if a slot is free (and it was not evicted)."""
        with self._lock:
            if ticket.evicted or self.associations >= self.max_associations:
                return False
            self._drop(ticket)
            ticket.associated = True
            self.associations += 1
            return True

    def leave(self, ticket: Ticket) -> None:
        """The connection is closed: its slot, or its place among the pending, is free."""
        with self._lock:
            if ticket.associated:
                ticket.associated = False
                self.associations -= 1
            elif not ticket.evicted:
                self._drop(ticket)

    def close_pending(self) -> None:
        """Shut every pending connection down (the node stops): their threads end at once, TLS handshakes too."""
        with self._lock:
            socks = [t.sock for t in self._pending.values()]
        for sock in socks:
            _shutdown(sock)

    def _drop(self, ticket: Ticket) -> None:
        if self._pending.pop(ticket.number, None) is not None:
            self._per_address[ticket.address] -= 1
            if not self._per_address[ticket.address]:
                del self._per_address[ticket.address]


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
