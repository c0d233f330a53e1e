"""The PS3.8 state table of :mod:`deidpipe.serve.association`: its rows, the walks the acceptor and requestor make
through it, and a real association (the node's SCU to the node's SCP on 127.0.0.1) that follows it on both sides
with no :class:`StateError`."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from deidpipe.dicomio.head import file_head
from deidpipe.keys import ProjectKey
from deidpipe.serve.association import TRANSITIONS, Event, Machine, Requestor, State, StateError
from deidpipe.serve.config import ServeConfig
from deidpipe.serve.net import AssociationRejected, PeerAborted, free_port
from deidpipe.serve.queue import Queue
from deidpipe.serve.scp import StorageSCP

KEY = ProjectKey(b"serve-association-test-key-0123456789")


def _walk(events: list[Event]) -> list[str]:
    machine = Machine()
    return [(machine.on(e), machine.state.value)[1] for e in events]


def test_table_names_and_walks():
    assert {s for s, _ in TRANSITIONS} == set(State)  # every state the node uses has a way on
    assert all(re.fullmatch(r"(AE|DT|AR|AA)-\d|-", action) for action, _ in TRANSITIONS.values())
    assert all(re.fullmatch(r"Sta\d+", s.value) for s in State) and all(re.fullmatch(r"Evt\d+", e.value)
                                                                        for e in Event)
    acceptor = [Event.CONNECTION_ACCEPTED, Event.RQ_RECEIVED, Event.ACCEPT, Event.MESSAGE_RECEIVED,
                Event.SEND_MESSAGE, Event.RELEASE_RQ_RECEIVED, Event.RELEASE_RESPONSE, Event.CONNECTION_CLOSED]
    assert _walk(acceptor) == ["Sta2", "Sta3", "Sta6", "Sta6", "Sta6", "Sta8", "Sta13", "Sta1"]
    requestor = [Event.ASSOCIATE_REQUEST, Event.CONNECTED, Event.AC_RECEIVED, Event.SEND_MESSAGE,
                 Event.MESSAGE_RECEIVED, Event.RELEASE_REQUEST, Event.MESSAGE_RECEIVED, Event.RELEASE_RP_RECEIVED]
    assert _walk(requestor) == ["Sta4", "Sta5", "Sta6", "Sta6", "Sta6", "Sta7", "Sta7", "Sta1"]
    # The node can abort from any state with a connection, and ends idle.
    for state in State:
        if state is not State.IDLE:
            assert TRANSITIONS[(state, Event.ABORT_REQUEST)] == ("AA-1", State.IDLE)
    with pytest.raises(StateError):
        Machine().on(Event.RELEASE_REQUEST)  # no release without an association


def test_real_association_follows_the_table(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    cfg = ServeConfig(queue=tmp_path / "queue", port=0, allowed_ae_titles=("SENDER",), network_timeout_s=5,
                      artim_timeout_s=30)
    node_scp = StorageSCP(cfg, Queue(cfg.queue), KEY)
    node_scp.start()
    path = Path(get_testdata_file("CT_small.dcm"))
    sop, inst, ts, offset = file_head(path)
    try:
        with caplog.at_level(logging.WARNING, logger="deidpipe.serve"):
            sender = Requestor("127.0.0.1", node_scp.port, "DEIDPIPE", "SENDER", timeout=10)
            sender.open([(sop, [ts])])
            assert sender.machine.state is State.ESTABLISHED
            assert sender.store(sop, inst, ts, path.read_bytes()[offset:]) == 0
            sender.release()
            assert sender.machine.state is State.IDLE
            stranger = Requestor("127.0.0.1", node_scp.port, "DEIDPIPE", "STRANGER", timeout=10)
            with pytest.raises(AssociationRejected):
                stranger.open([(sop, [ts])])
            assert stranger.machine.state is State.IDLE
            nobody = Requestor("127.0.0.1", free_port(), "DEIDPIPE", "SENDER", timeout=5)
            with pytest.raises(PeerAborted):
                nobody.open([(sop, [ts])])
            assert nobody.machine.state is State.IDLE
    finally:
        node_scp.stop()
    assert node_scp.stats["received"] == 1
    # The acceptor's side: a transition missing from the table would have ended an association with this error.
    messages = [r.getMessage() for r in caplog.records]
    assert "association rejected: calling AE title not on the allow-list" in messages  # the log is seen
    assert not [m for m in messages if "StateError" in m or "failed" in m]
