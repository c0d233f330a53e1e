"""The node's queue (deidpipe.serve.queue) and its delivery threads (deidpipe.serve.deliver) when a second copy of
an instance arrives while the first copy's tickets are open: a sender that sends again after a lost answer, or a
corrected object under the same SOP Instance UID.

Both copies are processed into the same output path. The first copy's delivery must neither close the second
copy's ticket (it would count as delivered unsent) nor remove its output (its delivery would then fail as
"output is missing" and be quarantined: a complete object set aside), whatever the order of events: a processing
round holds the queue's output lock from its writes to its tickets, and an output is released only under it.
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
    stamp = queue.stamp()
    tickets = [{"object_id": OID, "destination": d, "output": REL, "bytes": len(content), "out_hash": content.hex(),
                "queued_at": 0.0, "attempts": 0, "next_at": 0.0, **stamp} for d in dests]
    queue.add_tickets(tickets)
    return tickets


def test_first_copy_closed_after_second_leaves_the_second_ticket_and_output(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q", ["copy"])
    first = _process(queue, b"first")[0]
    second = _process(queue, b"second")[0]
    assert first["copy"] != second["copy"]

    newer = queue.close_ticket(first, "delivered")
    assert newer is not None and newer["copy"] == second["copy"]  # the second copy's ticket stays, unsent
    assert queue.tickets("copy") == [second]
    assert queue.release_output(first)
    assert queue.output_path(REL).read_bytes() == b"second"  # and so does its output
    assert not list(queue.path("delivered", "copy").iterdir())

    assert queue.close_ticket(second, "delivered") is None
    delivered = json.loads(queue.path("delivered", f"copy/{OID}.json").read_bytes())
    assert delivered["copy"] == second["copy"]
    assert queue.release_output(second)
    assert not queue.output_path(REL).exists() and not queue.tickets("copy")
    assert not list(queue.path("tmp").iterdir())


def test_output_of_a_round_in_progress_is_not_removed(tmp_path: Path) -> None:
    """The first copy's last ticket closes while a processing round holds the output lock: the second copy's
    output (the same bytes, which the sink keeps in place) is already there, its tickets not yet. The release
    waits for the round, and after it the second copy's tickets keep the output."""
    queue = Queue(tmp_path / "q", ["copy", "other"])
    first = _process(queue, b"same", ("copy", "other"))
    with queue.output_lock():  # the round: the sink finds the same file and keeps it; tickets come at its end
        assert queue.close_ticket(first[0], "delivered") is None
        assert queue.close_ticket(first[1], "quarantine") is None
        assert not queue.release_output(first[1])  # refused while the round runs
        second = _process(queue, b"same", ("copy", "other"))
    assert queue.release_output(first[1])
    assert queue.output_path(REL).read_bytes() == b"same" and len(queue.tickets("copy")) == 1
    for t in second:
        queue.close_ticket(t, "delivered")
    assert queue.release_output(second[0]) and not queue.output_path(REL).exists()


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
    """A queue left by an earlier version (tickets without ``copy``) delivers as before."""
    queue = Queue(tmp_path / "q", ["copy"])
    ticket = _process(queue, b"old")[0]
    del ticket["copy"]
    queue.add_tickets([ticket])
    assert queue.close_ticket(ticket, "delivered") is None and queue.release_output(ticket)
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


def test_deliverer_waits_for_the_round_to_release(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q", ["copy"])
    _process(queue, b"first")
    deliverer = _deliverer(queue, tmp_path)
    with queue.output_lock():
        assert deliverer.step(now=1e12) == 1
        assert not deliverer.pending and len(deliverer.unreleased) == 1 and queue.output_path(REL).exists()
    deliverer.step(now=1e12)
    assert not deliverer.unreleased and not queue.output_path(REL).exists()
