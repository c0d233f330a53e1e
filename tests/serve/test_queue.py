"""The node's queue (deidpipe.serve.queue) and its delivery threads (deidpipe.serve.deliver) when a second copy of
an instance arrives while the first copy's tickets are open: a sender that sends again after a lost answer, or a
corrected object under the same SOP Instance UID.

A resent copy is processed into the same output path, where the pipeline's sink keeps the file that holds the
same bytes. The first copy's delivery must neither close the second copy's ticket (it would count as delivered
unsent) nor remove its output (its delivery would then fail as "output is missing" and be quarantined: a complete
object set aside), whatever the order of events: a processing round holds the queue's output lock from its writes
to its tickets, and outputs are released only under it, and only where no ticket names them. A crash in between
loses no ticket and leaves no output behind for ever.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from deidpipe.pipeline.sink import OutputConflictError, publish, stage_output
from deidpipe.serve.config import Destination, RetryConfig
from deidpipe.serve.deliver import Deliverer
from deidpipe.serve.queue import ASIDE, Queue

OID = "ab" * 32
REL = "P/ST/SE/instance.dcm"
REL2 = "P2/ST/SE/instance.dcm"  # a corrected copy whose de-identified patient differs: another output path


def _process(queue: Queue, content: bytes = b"same", dests: tuple[str, ...] = ("copy",), rel: str = REL) -> list[dict]:
    """What the processing stage does for one object: the pipeline's sink publishes the output (keeps the file
    where the same bytes are there already, refuses different bytes), then one ticket per destination, stamped
    with this copy."""
    out_root = queue.path("out")
    publish(out_root, rel, stage_output(out_root, content, uuid.uuid4().hex))
    tickets = [{"object_id": OID, "destination": d, "output": rel, "bytes": len(content), "out_hash": content.hex(),
                "content_hash": f"in-{content.hex()}",
                "queued_at": 0.0, "attempts": 0, "next_at": 0.0, **queue.stamp()} for d in dests]
    queue.add_tickets(tickets)
    return tickets


def test_first_copy_closed_after_second_leaves_the_second_ticket_and_output(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q", ["copy"])
    first = _process(queue)[0]
    second = _process(queue)[0]
    assert first["copy"] != second["copy"]

    newer = queue.close_ticket(first, "delivered")
    assert newer is not None and newer["copy"] == second["copy"]  # the second copy's ticket stays, unsent
    assert queue.tickets("copy") == [second]
    assert queue.release_outputs([first]) == []
    assert queue.output_path(REL).exists()  # and so does its output
    assert not list(queue.path("delivered", "copy").iterdir())

    assert queue.close_ticket(second, "delivered") is None
    delivered = json.loads(queue.path("delivered", f"copy/{OID}.json").read_bytes())
    assert delivered["copy"] == second["copy"]
    assert queue.release_outputs([second]) == []
    assert not queue.output_path(REL).exists() and not queue.tickets("copy")
    assert not list(queue.path("tmp").iterdir())


def test_output_of_a_round_in_progress_is_not_removed(tmp_path: Path) -> None:
    """The first copy's last ticket closes while a processing round holds the output lock: the second copy's
    output (the same bytes, which the sink keeps in place) is already there, its tickets not yet. The release
    waits for the round, and after it the second copy's tickets keep the output."""
    queue = Queue(tmp_path / "q", ["copy", "other"])
    first = _process(queue, dests=("copy", "other"))
    with queue.output_lock():  # the round: the sink finds the same file and keeps it; tickets come at its end
        assert queue.close_ticket(first[0], "delivered") is None
        assert queue.close_ticket(first[1], "quarantine") is None
        assert queue.release_outputs(first) == first  # refused while the round runs
        second = _process(queue, dests=("copy", "other"))
    assert queue.release_outputs(first) == []
    assert queue.output_path(REL).exists() and len(queue.tickets("copy")) == 1
    for t in second:
        queue.close_ticket(t, "delivered")
    assert queue.release_outputs([second[0]]) == [] and not queue.output_path(REL).exists()


def test_superseded_copy_with_another_output_path_releases_its_own(tmp_path: Path) -> None:
    """A corrected copy whose output path differs: the first copy's output goes once its ticket is settled (no
    ticket names it), the second copy's stays for its own delivery."""
    queue = Queue(tmp_path / "q", ["copy"])
    first = _process(queue, b"first")[0]
    second = _process(queue, b"second", rel=REL2)[0]
    assert queue.close_ticket(first, "delivered")["copy"] == second["copy"]
    assert queue.release_outputs([first]) == []
    assert not queue.output_path(REL).exists() and queue.output_path(REL2).read_bytes() == b"second"


def test_update_of_a_superseded_ticket_is_not_written_back(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q", ["copy"])
    first = _process(queue)[0]
    second = _process(queue)[0]
    newer = queue.update_ticket(dict(first, attempts=1))
    assert newer is not None and newer["copy"] == second["copy"]
    assert queue.tickets("copy") == [second]
    assert queue.update_ticket(dict(second, attempts=1)) is None
    assert queue.tickets("copy")[0]["attempts"] == 1


def test_ticket_written_before_copies_were_stamped_still_closes(tmp_path: Path) -> None:
    """A queue left by an earlier version (tickets without ``copy``) delivers as before."""
    queue = Queue(tmp_path / "q", ["copy"])
    ticket = _process(queue)[0]
    del ticket["copy"]
    queue.add_tickets([ticket])
    assert queue.close_ticket(ticket, "delivered") is None and queue.release_outputs([ticket]) == []
    assert not queue.output_path(REL).exists() and not queue.tickets("copy")


@pytest.mark.parametrize("newer_in_place", [False, True])
def test_ticket_set_aside_when_a_crash_came_is_put_back(tmp_path: Path, newer_in_place: bool) -> None:
    """A crash while ``close_ticket`` holds a ticket aside: at start the ticket is back in the outbox (or, where a
    newer copy's took its place, the aside one goes), and its output stays."""
    queue = Queue(tmp_path / "q", ["copy"])
    ticket = _process(queue)[0]
    os.replace(queue.path("outbox", f"copy/{OID}.json"), queue.path("tmp", f"{OID}.0123{ASIDE}"))
    newer = _process(queue)[0] if newer_in_place else None
    restarted = Queue(tmp_path / "q", ["copy"])
    restarted.recover()
    assert [t["copy"] for t in restarted.tickets("copy")] == [(newer or ticket)["copy"]]
    assert restarted.output_path(REL).exists() and not list(restarted.path("tmp").iterdir())


def test_start_removes_outputs_no_ticket_names(tmp_path: Path) -> None:
    """An output whose release a stop or a crash cut short goes at the next start; one a ticket names stays, and
    so do the sink's own folders."""
    queue = Queue(tmp_path / "q", ["copy"])
    _process(queue)
    orphan = queue.output_path(REL2)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    own = queue.path("out") / "_deidpipe" / "state.dcm"
    own.parent.mkdir(exist_ok=True)
    own.write_bytes(b"x")
    queue.recover()
    assert not orphan.exists() and queue.output_path(REL).exists() and own.exists()


def _deliverer(queue: Queue, tmp_path: Path, name: str = "copy") -> Deliverer:
    dest = Destination(name, "folder", path=tmp_path / "dest")
    return Deliverer(dest, queue, RetryConfig(initial_s=0.01, max_interval_s=0.01, max_attempts=3, max_age_s=60),
                     "DEIDPIPE")


@pytest.mark.parametrize("announce", [False, True])
def test_delivery_of_the_first_copy_then_the_second(tmp_path: Path, announce: bool) -> None:
    """The deliverer holds the first copy's ticket; the second copy arrives (on disk only, as from the processing
    process, or also through ``add``): both are settled, the second is delivered, nothing is quarantined."""
    queue = Queue(tmp_path / "q", ["copy"])
    first = _process(queue, b"first")
    deliverer = _deliverer(queue, tmp_path)
    deliverer.poll_outbox = not announce
    assert deliverer.pending[OID]["copy"] == first[0]["copy"]
    second = _process(queue, b"second", rel=REL2)
    if announce:
        deliverer.add(second)
    while deliverer.pending:
        assert deliverer.step(now=1e12) > 0
    assert (tmp_path / "dest" / REL2).read_bytes() == b"second"
    assert not list(queue.path("quarantine").iterdir()) and not queue.tickets("copy")
    assert json.loads(queue.path("delivered", f"copy/{OID}.json").read_bytes())["copy"] == second[0]["copy"]
    assert not queue.output_path(REL).exists() and not queue.output_path(REL2).exists()


def test_copy_that_arrives_while_the_first_is_quarantined_is_delivered(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first copy's delivery fails for good (its output is missing); the second copy is processed while the
    quarantine record is written. The record goes again, the audit line says superseded, the second is
    delivered."""
    queue = Queue(tmp_path / "q", ["copy"])
    first = _process(queue, b"first")[0]
    queue.output_path(REL).unlink()
    deliverer = _deliverer(queue, tmp_path)
    write_record = queue.quarantine

    def record_then_second_copy(name: str, record: dict) -> Path:
        path = write_record(name, record)
        _process(queue, b"second", rel=REL2)
        return path

    monkeypatch.setattr(queue, "quarantine", record_then_second_copy)
    assert deliverer.step(now=1e12) == 1
    monkeypatch.setattr(queue, "quarantine", write_record)
    assert not list(queue.path("quarantine").iterdir()) and deliverer.stats["quarantined"] == 0
    audit = [json.loads(x) for x in (queue.root / "audit.jsonl").read_text().splitlines()]
    assert [(a["status"], a["attempts"]) for a in audit] == [("superseded", 1)]
    assert deliverer.pending[OID]["copy"] != first["copy"]
    assert deliverer.step(now=1e12) == 1
    assert (tmp_path / "dest" / REL2).read_bytes() == b"second" and not deliverer.pending


def test_deliverer_waits_for_the_round_to_release_and_releases_at_stop(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q", ["copy"])
    _process(queue)
    deliverer = _deliverer(queue, tmp_path)
    with queue.output_lock():
        assert deliverer.step(now=1e12) == 1
        assert not deliverer.pending and len(deliverer.unreleased) == 1 and queue.output_path(REL).exists()
    deliverer.step(now=1e12)
    assert not deliverer.unreleased and not queue.output_path(REL).exists()

    deliverer.add(_process(queue))
    with queue.output_lock():
        assert deliverer.step(now=1e12) == 1 and deliverer.unreleased
    deliverer.stop()  # the loop never ran: stop releases what is left
    assert not deliverer.unreleased and not queue.output_path(REL).exists()


def test_corrected_copy_takes_the_place_of_one_waiting(tmp_path: Path) -> None:
    """A corrected copy (other bytes, same path) while the first copy's ticket waits: the round makes way (the
    first output goes, so the sink writes the new one rather than refusing it as a different object); a
    delivery of the first copy during the round is retried, not quarantined, and then finds the newer ticket."""
    queue = Queue(tmp_path / "q", ["copy"])
    first = _process(queue, b"first")
    deliverer = _deliverer(queue, tmp_path)
    with queue.output_lock():  # the round
        assert queue.make_way([OID, "cd" * 32]) == 1 and not queue.output_path(REL).exists()
        assert deliverer.step(now=1.0) == 1  # the first copy's send finds no output while the round runs
        assert deliverer.pending[OID]["attempts"] == 1 and not list(queue.path("quarantine").iterdir())
        second = _process(queue, b"second")
        deliverer.add(second)
    while deliverer.pending:
        assert deliverer.step(now=2.0) > 0
    assert (tmp_path / "dest" / REL).read_bytes() == b"second"
    assert json.loads(queue.path("delivered", f"copy/{OID}.json").read_bytes())["copy"] == second[0]["copy"]
    assert not list(queue.path("quarantine").iterdir()) and first[0]["copy"] != second[0]["copy"]


def test_corrected_copy_after_a_release_was_refused(tmp_path: Path) -> None:
    """The first copy is delivered while a round holds the lock, so its output stays (unreleased); a corrected
    copy in the next round still takes the path: make_way removes what the delivered ticket names."""
    queue = Queue(tmp_path / "q", ["copy"])
    first = _process(queue, b"first")
    deliverer = _deliverer(queue, tmp_path)
    with queue.output_lock():
        assert deliverer.step(now=1.0) == 1 and deliverer.unreleased
    with pytest.raises(OutputConflictError):  # what the sink does without make_way
        _process(queue, b"second")
    with queue.output_lock():
        assert queue.make_way([OID]) == 1
        second = _process(queue, b"second")
    assert first[0]["copy"] != second[0]["copy"] and queue.output_path(REL).read_bytes() == b"second"


def test_claimed_copy_goes_back_only_where_no_newer_copy_waits(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q", ["copy"])
    queue.put(OID, [b"A"])
    assert queue.claim([OID]) == [OID]
    queue.put(OID, [b"A-corrected"])  # received while A is being processed
    queue.recover()  # a crash (or a failed round: Processor._requeue) sends the claimed copy back
    assert queue.path("incoming", f"{OID}.dcm").read_bytes() == b"A-corrected"
    assert not list(queue.path("processing").iterdir())
    assert queue.claim([OID]) == [OID]
    queue.unclaim(OID)
    assert queue.path("incoming", f"{OID}.dcm").read_bytes() == b"A-corrected"


def test_make_way_finds_outputs_named_by_quarantine_records_and_set_aside_tickets(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q", ["copy", "other"])
    _process(queue, b"first", ("copy", "other"))
    queue.quarantine(f"{OID}.copy", {"object_id": OID, "output": REL})
    os.replace(queue.path("outbox", f"copy/{OID}.json"), queue.path("tmp", f"{OID}.0123{ASIDE}"))
    queue.path("outbox", f"other/{OID}.json").unlink()  # only the record and the set-aside ticket name it
    with queue.output_lock():
        assert queue.make_way([OID]) == 1 and not queue.output_path(REL).exists()
    queue.path("tmp", f"{OID}.0123{ASIDE}").unlink()
    publish(queue.path("out"), REL, stage_output(queue.path("out"), b"first", "t"))
    with queue.output_lock():
        assert queue.make_way([OID]) == 1  # named by the quarantine record alone


def test_claimed_copy_left_in_both_places_by_a_crash(tmp_path: Path) -> None:
    """A crash between the link into incoming/ and the unlink from processing/ (Queue.unclaim): at start the
    object is in incoming/ once, as it was."""
    queue = Queue(tmp_path / "q", ["copy"])
    queue.put(OID, [b"A"])
    queue.claim([OID])
    os.link(queue.path("processing", f"{OID}.dcm"), queue.path("incoming", f"{OID}.dcm"))
    assert queue.recover() == 1
    assert queue.incoming() == [OID] and not list(queue.path("processing").iterdir())
    assert queue.path("incoming", f"{OID}.dcm").read_bytes() == b"A"


def test_delivery_retries_while_a_newer_copy_waits_to_be_processed(tmp_path: Path) -> None:
    """A round made way for a newer copy and then failed (the copy went back to incoming/): the older copy's
    delivery, which finds no output, is retried rather than quarantined; with no newer copy on its way it is
    quarantined as before."""
    queue = Queue(tmp_path / "q", ["copy"])
    _process(queue, b"first")
    deliverer = _deliverer(queue, tmp_path)
    with queue.output_lock():
        queue.make_way([OID])
    queue.put(OID, [b"the newer copy, received"])
    assert deliverer.step(now=1.0) == 1
    assert deliverer.pending[OID]["attempts"] == 1 and not list(queue.path("quarantine").iterdir())
    queue.path("incoming", f"{OID}.dcm").unlink()  # the newer copy is gone after all (say, quarantined)
    deliverer.step(now=2.0)
    assert not deliverer.pending and len(list(queue.path("quarantine").iterdir())) == 1


def test_plain_resend_keeps_its_output(tmp_path: Path) -> None:
    """The same input again (the same content hash as every earlier copy's record): the round keeps the output
    (the sink finds the same bytes in place), so the waiting copy's delivery is not sent into a retry; other
    input makes way."""
    queue = Queue(tmp_path / "q", ["copy"])
    _process(queue, b"first")
    with queue.output_lock():
        assert queue.make_way([OID], {OID: f"in-{b'first'.hex()}"}) == 0 and queue.output_path(REL).exists()
        assert queue.make_way([OID], {OID: "in-other"}) == 1 and not queue.output_path(REL).exists()


def test_polled_newer_copy_takes_the_place_of_a_ticket_waiting_to_retry(tmp_path: Path) -> None:
    """Child-process mode (tickets polled from the outbox): the first copy's ticket waits for its retry time when
    a corrected copy's ticket replaces it on disk. The deliverer takes up the newer ticket at once, not at the
    older one's retry time, and delivers the newer copy; the older one's output goes."""
    queue = Queue(tmp_path / "q", ["copy"])
    first = _process(queue, b"first")[0]
    deliverer = _deliverer(queue, tmp_path)
    deliverer.poll_outbox = True
    waiting = dict(first, attempts=1, next_at=1e12, last_error="destination down")
    assert queue.update_ticket(waiting) is None
    deliverer._replace_pending(waiting, waiting)  # as _settle leaves a retry
    deliverer.refresh()  # its own retry update, read back: nothing changes
    assert deliverer.pending[OID] is waiting and not deliverer.unreleased
    second = _process(queue, b"second", rel=REL2)[0]
    assert deliverer.step(now=1.0) == 1  # due now: the newer ticket, not the retry a long way off
    assert (tmp_path / "dest" / REL2).read_bytes() == b"second" and not deliverer.pending
    assert json.loads(queue.path("delivered", f"copy/{OID}.json").read_bytes())["copy"] == second["copy"]
    assert not queue.output_path(REL).exists() and not queue.output_path(REL2).exists()
    assert not list(queue.path("quarantine").iterdir())


def test_polled_ticket_of_an_object_delivered_before_is_taken_up(tmp_path: Path) -> None:
    """An object delivered, then sent again later: its new ticket has the name of the closed one (and may have
    its inode, reused by the file system); it is taken up all the same."""
    queue = Queue(tmp_path / "q", ["copy"])
    deliverer = _deliverer(queue, tmp_path)
    deliverer.poll_outbox = True
    _process(queue, b"first")
    assert deliverer.step(now=1.0) == 1 and not deliverer.pending
    second = _process(queue, b"again", rel=REL2)[0]
    deliverer._seen[f"{OID}.json"] = queue.path("outbox", f"copy/{OID}.json").stat().st_ino  # as if reused
    assert deliverer.step(now=1.0) == 1
    assert (tmp_path / "dest" / REL2).read_bytes() == b"again"
    assert json.loads(queue.path("delivered", f"copy/{OID}.json").read_bytes())["copy"] == second["copy"]
