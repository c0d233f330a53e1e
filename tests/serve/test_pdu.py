"""The node's own network layers (:mod:`deidpipe.serve.dimse`, :mod:`deidpipe.serve.pdu`, its SCU
:class:`deidpipe.serve.association.Requestor`) against pynetdicom:
its command sets against pynetdicom's
encoder and decoder, pynetdicom's SCU against the node's Storage SCP, and the node's SCU against pynetdicom's SCP
(with a small PDU limit, so that every object goes in many fragments). dcmtk and Orthanc peers are in
``tests/serve/test_node.py``."""

from __future__ import annotations

import copy
import io
import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]

from deidpipe.dicomio.head import file_head, file_head_pydicom
from deidpipe.keys import ProjectKey
from deidpipe.serve import association, dimse, net, pdu
from deidpipe.serve.config import ServeConfig
from deidpipe.serve.net import free_port, wait_port
from deidpipe.serve.queue import Queue
from deidpipe.serve.scp import StorageSCP
from tests.helpers import associate

KEY = ProjectKey(b"serve-ul-test-key-0123456789abcdef")
FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm"]


def _pynetdicom_command(prim: C_STORE, message: type) -> bytes:
    msg = message()
    msg.primitive_to_message(prim)
    return encode(msg.command_set, True, True)  # type: ignore[return-value]


def test_command_sets_agree_with_pynetdicom():
    prim = C_STORE()
    prim.MessageID = 7
    prim.AffectedSOPClassUID = CTImageStorage
    prim.AffectedSOPInstanceUID = "1.2.3.4.5"
    prim.Priority = 2
    prim.DataSet = io.BytesIO(b"\x08\x00")  # a data set follows the command
    theirs = dimse.decode_command(_pynetdicom_command(prim, C_STORE_RQ))
    assert dimse.command_us(theirs, dimse.COMMAND_FIELD) == dimse.C_STORE_RQ
    assert dimse.command_us(theirs, dimse.MESSAGE_ID) == 7
    assert dimse.command_ui(theirs, dimse.AFFECTED_SOP_INSTANCE_UID) == "1.2.3.4.5"

    ours = dimse.encode_command([(dimse.AFFECTED_SOP_CLASS_UID, CTImageStorage),
                                 (dimse.COMMAND_FIELD, dimse.C_STORE_RQ), (dimse.MESSAGE_ID, 7), (dimse.PRIORITY, 2),
                                 (dimse.COMMAND_DATA_SET_TYPE, 0x0001), (dimse.AFFECTED_SOP_INSTANCE_UID, "1.2.3.4.5")])
    assert ours == _pynetdicom_command(prim, C_STORE_RQ)  # byte for byte
    ds = decode(io.BytesIO(ours), True, True)
    assert ds.CommandGroupLength == len(ours) - 12
    assert (ds.CommandField, ds.MessageID, ds.AffectedSOPInstanceUID) == (1, 7, "1.2.3.4.5")

    request = dimse.Message(1, dimse.decode_command(ours), b"")
    rsp = dimse.store_response(request, 0xA700)
    prim.Status = 0xA700
    prim.MessageIDBeingRespondedTo = 7
    prim.MessageID = None
    prim.DataSet = None
    assert rsp == _pynetdicom_command(prim, C_STORE_RSP)

    # A refusal's Error Comment (0000,0902), LO: padded with a space, as pynetdicom encodes it.
    rsp = dimse.store_response(request, 0xC000, "pixel data is shorter than its header declares")
    prim.Status = 0xC000
    prim.ErrorComment = "pixel data is shorter than its header declares"
    assert rsp == _pynetdicom_command(prim, C_STORE_RSP)
    assert len(decode(io.BytesIO(dimse.store_response(request, 0xC000, "x" * 80)), True, True).ErrorComment) == 64


def test_cut_command_set_is_a_protocol_error():
    good = dimse.encode_command([(dimse.COMMAND_FIELD, dimse.C_ECHO_RQ)])
    with pytest.raises(net.ProtocolError):
        dimse.decode_command(good[:-1])
    with pytest.raises(net.ProtocolError):
        dimse.decode_command(good[:5])


@pytest.fixture
def scp(tmp_path):
    # A long ARTIM timer: these tests are about the upper layer, not the timer (tests/serve/test_gate.py), and a
    # requestor thread starved by a parallel test (2 cores) must not have its connection closed under it.
    cfg = ServeConfig(queue=tmp_path / "queue", port=0, allowed_ae_titles=("SENDER",), network_timeout_s=5,
                      artim_timeout_s=30)
    queue = Queue(cfg.queue)
    node_scp = StorageSCP(cfg, queue, KEY)
    node_scp.start()
    try:
        yield node_scp, queue
    finally:
        node_scp.stop()


def _stored(queue: Queue) -> dict[str, bytes]:
    out = {}
    for p in queue.path("incoming").glob("*.dcm"):
        out[str(pydicom.dcmread(p).SOPInstanceUID)] = p.read_bytes()
    return out


def test_pynetdicom_scu_to_the_node(scp):
    node_scp, queue = scp
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    for name in FILES:
        ds = pydicom.dcmread(get_testdata_file(name))
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = associate(ae, "127.0.0.1", node_scp.port, ae_title="DEIDPIPE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    sent = {}
    for name in FILES:
        ds = pydicom.dcmread(get_testdata_file(name))
        assert assoc.send_c_store(ds).Status == 0, name
        sent[str(ds.SOPInstanceUID)] = ds
    assoc.release()
    stored = _stored(queue)
    assert set(stored) == set(sent)
    for uid, ds in sent.items():
        got = pydicom.dcmread(io.BytesIO(stored[uid]))
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert got.PixelData == ds.PixelData
        assert got.PatientName == ds.PatientName
    assert node_scp.stats["received"] == len(FILES)


def test_calling_ae_title_not_allowed_is_rejected(scp):
    """The node answers A-ASSOCIATE-RJ: permanent, service-user, calling AE title not recognised (1, 1, 3). The PDU
    the peer received is checked, not ``assoc.is_rejected``: pynetdicom's requestor thread, starved on a loaded
    machine, sometimes ends such an association as aborted though the reject had arrived (1 in about 75 with
    the cores busy, checked with the node's log: it had sent the reject every time)."""
    node_scp, _ = scp
    got: list[tuple[int, int, int]] = []

    def on_pdu(event):
        if event.pdu.pdu_type == 0x03:  # A-ASSOCIATE-RJ
            got.append((event.pdu.result, event.pdu.source, event.pdu.reason_diagnostic))

    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = associate(ae, "127.0.0.1", node_scp.port, ae_title="DEIDPIPE", evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    assert not assoc.is_established and got == [(1, 1, 3)]
    end = time.monotonic() + 5  # counted by the node's thread just after it answered
    while node_scp.stats["refused"] != 1 and time.monotonic() < end:
        time.sleep(0.01)
    assert node_scp.stats["refused"] == 1


def test_garbage_is_dropped_and_the_node_serves_on(scp):
    node_scp, _ = scp
    for junk in (b"\x01\x00\xff\xff\xff\xff", b"\x04\x00\x00\x00\x00\x08" + b"\x00" * 8, b"GET / HTTP/1.0\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", node_scp.port), timeout=5) as s:
            end = time.monotonic() + 10
            try:  # the node answers with A-ABORT and closes, maybe before all is sent (a reset is as good)
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                while time.monotonic() < end and s.recv(4096):
                    pass
            except OSError:
                pass
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    assoc = associate(ae, "127.0.0.1", node_scp.port, ae_title="DEIDPIPE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_node_scu_to_pynetdicom_in_small_fragments(tmp_path):
    received: dict[tuple[str, str], bytes] = {}  # (SOP instance, transfer syntax): pydicom's MR_small files share one
    answer = {"status": 0x0000}

    def on_store(event):
        ds = event.dataset
        received[(str(ds.SOPInstanceUID), str(event.context.transfer_syntax))] = ds.PixelData
        return answer["status"]

    ae = AE(ae_title="PEER")
    ae.maximum_pdu_size = 4096  # every object in many P-DATA-TF PDUs
    for name in FILES:
        ds = pydicom.dcmread(get_testdata_file(name))
        ae.add_supported_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        wait_port(port)
        heads = {name: file_head(Path(get_testdata_file(name))) for name in FILES}
        sender = association.Requestor("127.0.0.1", port, "PEER", "NODE", timeout=10)
        sender.open([(sop, [ts]) for sop, ts in sorted({(h[0], h[2]) for h in heads.values()})])
        assert sender.link is not None and sender.link.peer_max_pdu == 4096
        for name, (sop, inst, ts, offset) in heads.items():
            with open(get_testdata_file(name), "rb") as fh:
                fh.seek(offset)
                assert sender.store(sop, inst, ts, fh) == 0
        answer["status"] = 0xA700
        sop, inst, ts, offset = heads["CT_small.dcm"]
        data = Path(get_testdata_file("CT_small.dcm")).read_bytes()[offset:]
        assert sender.store(sop, inst, ts, data) == 0xA700  # bytes too, and the peer's status comes back
        with pytest.raises(KeyError):
            sender.store(MRImageStorage, "1.2.3", "1.2.840.10008.1.2.4.50", b"")
        sender.release()
    finally:
        server.shutdown()
    for name in FILES:
        ds = pydicom.dcmread(get_testdata_file(name))
        assert received[(str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID))] == ds.PixelData


def test_node_scu_rejected_and_unreachable():
    ae = AE(ae_title="PEER")
    ae.add_supported_context(CTImageStorage)
    ae.require_calling_aet = ["SOMEONE"]
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        wait_port(port)
        with pytest.raises(net.AssociationRejected):
            association.Requestor("127.0.0.1", port, "PEER", "NODE", timeout=5).open([(CTImageStorage,
                                                                                       ["1.2.840.10008.1.2"])])
    finally:
        server.shutdown()
    with pytest.raises(net.PeerAborted):
        association.Requestor("127.0.0.1", free_port(), "PEER", "NODE", timeout=5).open([(CTImageStorage,
                                                                                  ["1.2.840.10008.1.2"])])


def test_many_concurrent_associations(scp):
    """Eight senders at once, each on its own association: every object is answered Success and queued."""
    node_scp, queue = scp
    ds0 = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    errors: list[str] = []

    def send(k: int) -> None:
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(CTImageStorage, ds0.file_meta.TransferSyntaxUID)
        assoc = associate(ae, "127.0.0.1", node_scp.port, ae_title="DEIDPIPE")
        if not assoc.is_established:
            errors.append("not established")
            return
        for i in range(5):
            ds = copy.deepcopy(ds0)  # not ds0.copy(): a shallow copy shares its elements among the threads
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.999.{k}.{i}"
            if assoc.send_c_store(ds).Status != 0:
                errors.append("status")
        assoc.release()

    threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not [t for t in threads if t.is_alive()], "a sender did not finish"
    assert not errors
    assert len(_stored(queue)) == 40


@pytest.mark.parametrize("name", FILES + ["rtplan.dcm", "ExplVR_BigEnd.dcm"])
def test_file_head_agrees_with_pydicom(name):
    path = Path(get_testdata_file(name))
    assert file_head(path) == file_head_pydicom(path)


def test_messages_in_fragments_and_limits():
    """A message written by :meth:`Link.send_message` in many small PDUs reads back whole; a data set over the
    reader's limit, or a command set that never ends, is a protocol error (not a full memory)."""
    a, b = socket.socketpair()
    sender, reader = pdu.Link(a, 5), pdu.Link(b, 5)
    sender.peer_max_pdu = 64
    command = dimse.encode_command([(dimse.AFFECTED_SOP_CLASS_UID, CTImageStorage),
                                    (dimse.COMMAND_FIELD, dimse.C_STORE_RQ), (dimse.MESSAGE_ID, 1), (dimse.PRIORITY, 0),
                                    (dimse.COMMAND_DATA_SET_TYPE, 0), (dimse.AFFECTED_SOP_INSTANCE_UID, "1.2.3")])
    data = bytes(range(256)) * 10
    t = threading.Thread(target=lambda: (sender.send_message(3, command, io.BytesIO(data)),
                                         sender.send_message(3, command, data)))
    t.start()
    for _ in range(2):
        msg = reader.read_message()
        assert (msg.context_id, msg.command_field, msg.data) == (3, dimse.C_STORE_RQ, data)
    t.join(5)
    t = threading.Thread(target=sender.send_message, args=(3, command, data))
    t.start()
    with pytest.raises(net.ProtocolError):
        reader.read_message(max_data=1000)
    t.join(5)
    a.close()
    b.close()
    a, b = socket.socketpair()
    sender, reader = pdu.Link(a, 5), pdu.Link(b, 5)
    def send_endless_command() -> None:
        try:
            for _ in range(100):
                sender._send_pdv(1, 0x01, b"\x00" * 1000)  # command fragments, none the last
        except net.ProtocolError:
            pass  # the reader gave up and closed: as it should

    endless = threading.Thread(target=send_endless_command)
    endless.start()
    with pytest.raises(net.ProtocolError):
        reader.read_message()
    b.close()
    endless.join(5)
    a.close()


def test_budget_and_context_checks(scp):
    """Over the node's memory budget: 0xA700 (out of resources) and the association goes on; a C-STORE whose SOP
    class is not its context's: 0x0122."""
    node_scp, queue = scp
    path = Path(get_testdata_file("CT_small.dcm"))
    sop, inst, ts, offset = file_head(path)
    data = path.read_bytes()[offset:]
    sender = association.Requestor("127.0.0.1", node_scp.port, "DEIDPIPE", "SENDER", timeout=10)
    sender.open([(sop, [ts])])
    node_scp.budget.limit = 1000  # the association thread already waits with this budget
    assert sender.store(sop, inst, ts, data) == 0xA700
    assert node_scp.budget.used == 0
    node_scp.budget.limit = 1 << 30
    assert sender.link is not None
    command = dimse.encode_command([(dimse.AFFECTED_SOP_CLASS_UID, MRImageStorage),
                                    (dimse.COMMAND_FIELD, dimse.C_STORE_RQ), (dimse.MESSAGE_ID, 99),
                                    (dimse.PRIORITY, 0), (dimse.COMMAND_DATA_SET_TYPE, 1),
                                    (dimse.AFFECTED_SOP_INSTANCE_UID, inst)])
    sender.link.send_message(sender.contexts[(sop, ts)], command, data)
    assert dimse.command_us(sender.link.read_message().command, dimse.STATUS) == 0x0122
    assert sender.store(sop, inst, ts, data) == 0
    sender.release()
    assert len(_stored(queue)) == 1 and node_scp.budget.used == 0


def test_sender_one_sop_class_in_three_transfer_syntaxes(tmp_path):
    """Secondary Capture objects in three JPEG syntaxes on one association: one context each, all delivered (one
    context listing the three would have one of them accepted, and the others refused)."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES
    from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]

    from deidpipe.serve.config import parse_dicom_dest
    from deidpipe.serve.deliver import DELIVERED, DicomSender

    names = ["JPEG2000.dcm", "JPEG-lossy.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
    queue = Queue(tmp_path / "queue", ["pacs"])
    tickets = []
    for name in names:
        target = queue.path("out") / "p" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(get_testdata_file(name)).read_bytes())
        tickets.append({"object_id": name, "destination": "pacs", "output": f"p/{name}"})
    got: list[str] = []

    def on_store(event):
        got.append(str(event.context.transfer_syntax))
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(SecondaryCaptureImageStorage, ALL_TRANSFER_SYNTAXES)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        wait_port(port)
        sender = DicomSender(parse_dicom_dest(f"PACS@127.0.0.1:{port}", "pacs"), "NODE", queue)
        assert [kind for kind, _ in sender.send(tickets)] == [DELIVERED] * 3
        sender.close()
    finally:
        server.shutdown()
    assert sorted(got) == sorted(str(pydicom.dcmread(get_testdata_file(n)).file_meta.TransferSyntaxUID)
                                 for n in names)


@pytest.mark.parametrize("uids", [("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),
                                  ("1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.10.999.1", "1.2.840.10008.1.2")])
def test_file_meta_bytes_agree_with_pydicom(uids):
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    from deidpipe.dicomio.write import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, file_meta_bytes

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = uids
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    assert file_meta_bytes(*uids) == buf.getvalue()


def test_quickack_is_asked_on_tcp_and_harmless_elsewhere() -> None:
    """``net.quickack``, which every Link read asks for (a peer with Nagle on would otherwise wait up to 40 ms per
    message for our acknowledgement: benchmarks/serve.py --nagle): set on a TCP socket, passed over where the
    option does not exist (a Unix socket pair)."""
    import socket

    from deidpipe.serve.net import quickack

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    with srv, socket.create_connection(srv.getsockname()) as client:
        conn, _ = srv.accept()
        with conn:
            quickack(conn)
            if hasattr(socket, "TCP_QUICKACK"):
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
            client.sendall(b"x")
            assert conn.recv(1) == b"x"
    a, b = socket.socketpair()
    with a, b:
        quickack(a)  # no TCP here: nothing happens, nothing raises
