"""The node's queue (deidpipe.serve.queue) and its delivery threads (deidpipe.serve.deliver) when a second copy of
an instance arrives while the first copy's tickets are open: a sender that sends again after a lost answer, or a
corrected object under the same SOP Instance UID.

Both copies are processed into the same output path. The first copy's delivery must neither close the second
copy's ticket (it would count as delivered unsent) nor remove its output (its delivery would then fail as
"output is missing" and be quarantined: a complete object set aside), whatever the order of events.
"""

from __future__ import annotations

import json
from pathlib import Path

from deidpipe.durable import atomic_write
from deidpipe.serve.config import Destination, RetryConfig
from deidpipe.serve.deliver import Deliverer
from deidpipe.serve.queue import Queue

OID = "ab" * 32
REL = "P/ST/SE/instance.dcm"


def _process(queue: Queue, content: bytes, dests: tuple[str, ...] = ("copy",)) -> list[dict]:
    """What the processing stage does for one object: the sink writes the output (a rename into place), then
    one ticket per destination, stamped with this copy."""
    out = queue.output_path(REL)
    assert out is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, [content])
    stamp = queue.stamp(REL)
    tickets = [{"object_id": OID, "destination": d, "output": REL, "bytes": len(content), "out_hash": content.hex(),
                "queued_at": 0.0, "attempts": 0, "next_at": 0.0, **stamp} for d in dests]
    queue.add_tickets(tickets)
    return tickets


def test_first_copy_closed_after_second_leaves_the_second_ticket_and_output(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q", ["copy"])
    first = _process(queue, b"first")[0]
    second = _process(queue, b"second")[0]
    assert first["copy"] != second["copy"] and first["file"] != second["file"]

    newer = queue.close_ticket(first, "delivered")
    assert newer is not None and newer["copy"] == second["copy"]  # the second copy's ticket stays, unsent
    assert queue.tickets("copy") == [second]
    assert queue.output_path(REL).read_bytes() == b"second"  # and so does its output
    assert not list(queue.path("delivered", "copy").iterdir())

    assert queue.close_ticket(second, "delivered") is None
    delivered = json.loads(queue.path("delivered", f"copy/{OID}.json").read_bytes())
    assert delivered["copy"] == second["copy"]
    assert not queue.output_path(REL).exists() and not queue.tickets("copy")
    assert not list(queue.path("tmp").iterdir())


def test_output_written_before_its_tickets_is_not_removed(tmp_path: Path) -> None:
    """The second copy's output is in place but its tickets are not yet: closing the first copy (the last ticket
    of the object) must not remove it."""
    queue = Queue(tmp_path / "q", ["copy", "other"])
    first = _process(queue, b"first", ("copy", "other"))
    out = queue.output_path(REL)
    atomic_write(out, [b"second"])  # the sink's write of the second copy; its tickets come after
    queue.close_ticket(first[0], "delivered")
    queue.close_ticket(first[1], "quarantine")
    assert out.read_bytes() == b"second"


def test_update_of_a_superseded_ticket_is_not_written_back(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q", ["copy"])
    first = _process(queue, b"first")[0]
    second = _process(queue, b"second")[0]
    newer = queue.update_ticket(dict(first, attempts=1))
    assert newer is not None and newer["copy"] == second["copy"]
    assert queue.tickets("copy") == [second]
    assert queue.update_ticket(dict(second, attempts=1)) is None
    assert queue.tickets("copy")[0]["attempts"] == 1


def test_ticket_written_before_copies_were_stamped_still_closes(tmp_path: Path) -> None:
    """A queue left by an earlier version (tickets with neither ``copy`` nor ``file``) delivers as before."""
    queue = Queue(tmp_path / "q", ["copy"])
    ticket = _process(queue, b"old")[0]
    for key in ("copy", "file"):
        del ticket[key]
    queue.add_tickets([ticket])
    assert queue.close_ticket(ticket, "delivered") is None
    assert not queue.output_path(REL).exists() and not queue.tickets("copy")


def _deliverer(queue: Queue, tmp_path: Path) -> Deliverer:
    dest = Destination("copy", "folder", path=tmp_path / "dest")
    return Deliverer(dest, queue, RetryConfig(initial_s=0.01, max_interval_s=0.01, max_attempts=3, max_age_s=60),
                     "DEIDPIPE")


def test_delivery_of_the_first_copy_then_the_second(tmp_path: Path) -> None:
    """The deliverer holds the first copy's ticket; the second copy arrives (on disk only, as from the processing
    process, and through ``add``): both are settled, the second is delivered, nothing is quarantined."""
    for announce in (False, True):
        root = tmp_path / str(announce)
        queue = Queue(root / "q", ["copy"])
        first = _process(queue, b"first")
        deliverer = _deliverer(queue, root)
        deliverer.poll_outbox = not announce
        assert deliverer.pending[OID]["copy"] == first[0]["copy"]
        second = _process(queue, b"second")
        if announce:
            deliverer.add(second)
        while deliverer.pending:
            assert deliverer.step(now=1e12) > 0
        assert (root / "dest" / REL).read_bytes() == b"second"
        assert not list(queue.path("quarantine").iterdir()) and not queue.tickets("copy")
        assert json.loads(queue.path("delivered", f"copy/{OID}.json").read_bytes())["copy"] == second[0]["copy"]
        assert not queue.output_path(REL).exists()
