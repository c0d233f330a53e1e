"""The node's Storage SCP under a hostile sender (issue 21): idle and trickling connections, association slots,
deflated data sets against the memory budget, and A-ASSOCIATE-RQs that PS3.8 answers in a set way. Raw sockets,
pynetdicom and dcmtk's storescu, all on 127.0.0.1; every SCP is stopped after its test."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from deidpipe.keys import ProjectKey
from deidpipe.serve import association, dimse
from deidpipe.serve.config import ServeConfig
from deidpipe.serve.pdu import (
    APPLICATION_CONTEXT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    RELEASE_RP,
    RELEASE_RQ,
    Link,
)
from deidpipe.serve.queue import Queue
from deidpipe.serve.scp import StorageSCP
from tests.helpers import associate

KEY = ProjectKey(b"serve-limits-test-key-0123456789abcdef")
DEFLATED = "1.2.840.10008.1.2.1.99"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
IMPLICIT = "1.2.840.10008.1.2"


def _start(tmp_path: Path, **kw) -> tuple[StorageSCP, Queue]:
    kw.setdefault("network_timeout_s", 10)
    cfg = ServeConfig(queue=tmp_path / "queue", port=0, workers=1, **kw)
    queue = Queue(cfg.queue)
    node_scp = StorageSCP(cfg, queue, KEY)
    node_scp.start()
    return node_scp, queue


@pytest.fixture
def scp_factory(tmp_path):
    started: list[StorageSCP] = []

    def make(**kw) -> tuple[StorageSCP, Queue]:
        node_scp, queue = _start(tmp_path / str(len(started)), **kw)
        started.append(node_scp)
        return node_scp, queue

    yield make
    for node_scp in started:
        node_scp.stop()


# -- raw A-ASSOCIATE-RQ ------------------------------------------------------------------------------------------
def _item(kind: int, payload: bytes) -> bytes:
    return bytes([kind, 0]) + struct.pack(">H", len(payload)) + payload


def associate_rq(version: int = 1, contexts=((1, Verification, (IMPLICIT,)),), extra_top: bytes = b"",
                 extra_context: bytes = b"", extra_user: bytes = b"", calling: bytes = b"SENDER") -> bytes:
    """An A-ASSOCIATE-RQ PDU written byte by byte (PS3.8 section 9.3.2), with room for what pynetdicom's encoder
    would never write."""
    var = _item(0x10, APPLICATION_CONTEXT.encode())
    for cid, abstract, syntaxes in contexts:
        subs = _item(0x30, str(abstract).encode()) + b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        var += _item(0x20, bytes([cid, 0, 0, 0]) + subs + extra_context)
    var += _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.10.999")
                 + extra_user)
    var += extra_top
    body = struct.pack(">HH", version, 0) + b"DEIDPIPE".ljust(16) + calling.ljust(16) + b"\x00" * 32 + var
    return struct.pack(">BBI", ASSOCIATE_RQ, 0, len(body)) + body


def _answer(port: int, pdu: bytes) -> tuple[int, bytes, socket.socket]:
    """Send ``pdu`` on a new connection; the type and body of the node's answer, and the socket (open)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(pdu)
    link = Link(s, 10)
    kind, body = link.read_pdu()
    return kind, bytes(body), s


def test_protocol_version_bit_0_clear_is_rejected(scp_factory):
    """PS3.8 table 9-11: version 1 is bit 0; table 9-21: rejected-permanent, service-provider (ACSE),
    protocol-version-not-supported. Other bits are not tested."""
    node_scp, _ = scp_factory()
    for version, expected in ((0x0000, (ASSOCIATE_RJ, bytes([0, 1, 2, 2]))),
                              (0x0002, (ASSOCIATE_RJ, bytes([0, 1, 2, 2]))),
                              (0x0003, (ASSOCIATE_AC, None))):
        kind, body, s = _answer(node_scp.port, associate_rq(version=version))
        s.close()
        assert kind == expected[0], version
        if expected[1] is not None:
            assert body == expected[1]


def test_duplicate_presentation_context_ids_are_rejected(scp_factory):
    """PS3.8 7.1.1.13: the requestor assigns an unused ID to each context, and the AC answers each one to one; a
    request that repeats one is not acceptable to the service-provider (rejected-permanent, ACSE, no reason)."""
    node_scp, _ = scp_factory()
    twice = ((1, Verification, (IMPLICIT,)), (1, SECONDARY_CAPTURE, (IMPLICIT,)))
    kind, body, s = _answer(node_scp.port, associate_rq(contexts=twice))
    s.close()
    assert (kind, body) == (ASSOCIATE_RJ, bytes([0, 1, 2, 1]))
    kind, body, s = _answer(node_scp.port, associate_rq(contexts=((2, Verification, (IMPLICIT,)),)))  # even
    s.close()
    assert (kind, body) == (ASSOCIATE_RJ, bytes([0, 1, 2, 1]))


def test_unknown_items_are_skipped_not_aborted(scp_factory):
    """PS3.8 9.3.1: "Items of unrecognized types shall be ignored and skipped": in the variable field, in a
    presentation context, in the user information; the association is accepted and serves a C-ECHO."""
    node_scp, _ = scp_factory()
    pdu = associate_rq(extra_top=_item(0x60, b"future"), extra_context=_item(0x4F, b"?"),
                       extra_user=_item(0x5F, b"vendor-specific"))
    kind, body, s = _answer(node_scp.port, pdu)
    try:
        assert kind == ASSOCIATE_AC
        link = Link(s, 10)
        echo = dimse.encode_command([(dimse.AFFECTED_SOP_CLASS_UID, Verification),
                                     (dimse.COMMAND_FIELD, dimse.C_ECHO_RQ), (dimse.MESSAGE_ID, 1),
                                     (dimse.COMMAND_DATA_SET_TYPE, dimse.NO_DATA_SET)])
        link.send_message(1, echo)
        assert dimse.command_us(link.read_message().command, dimse.STATUS) == 0x0000
        link.send_pdu(RELEASE_RQ, b"\x00" * 4)
        assert link.read_pdu()[0] == RELEASE_RP
    finally:
        s.close()


# -- connections and slots ---------------------------------------------------------------------------------------
def test_trickling_sender_is_closed_by_the_artim_timer(scp_factory):
    """A request sent a byte at a time never completes within the ARTIM timer: the node closes the connection
    (no A-ABORT: PS3.8 action AA-2) when it expires, however steadily the bytes come."""
    node_scp, _ = scp_factory(artim_timeout_s=1.0)
    pdu = associate_rq()
    s = socket.create_connection(("127.0.0.1", node_scp.port), timeout=10)
    t0 = time.monotonic()
    closed_after = None
    try:
        for b in pdu:
            try:
                s.sendall(bytes([b]))
            except OSError:
                closed_after = time.monotonic() - t0
                break
            s.settimeout(0.3)  # one byte every 0.3 s; the node's close shows as EOF (or a reset) in between
            try:
                answer = s.recv(64)
                assert answer == b"", "PS3.8 AA-2: the connection is closed, nothing sent"
                closed_after = time.monotonic() - t0
                break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - t0
                break
    finally:
        s.close()
    assert closed_after is not None and 0.8 < closed_after < 10.0  # 1 s, and slack for a loaded machine


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")
def test_idle_connections_do_not_keep_storescu_out(scp_factory):
    """80 connections that send nothing (more than the 64 association slots) do not keep a real sender out:
    storescu's C-STORE succeeds within 10 s."""
    node_scp, queue = scp_factory()
    idle = [socket.create_connection(("127.0.0.1", node_scp.port), timeout=5) for _ in range(80)]
    try:
        time.sleep(0.3)  # every idle connection accepted
        t0 = time.monotonic()
        done = subprocess.run(["storescu", "-aet", "SENDER", "-aec", "DEIDPIPE", "-to", "10", "-ta", "10",
                               "127.0.0.1", str(node_scp.port), get_testdata_file("CT_small.dcm")],
                              capture_output=True, timeout=30, env=dict(os.environ, TCP_NODELAY="1"))
        elapsed = time.monotonic() - t0
    finally:
        for s in idle:
            s.close()
    assert done.returncode == 0, done.stderr[-500:]
    assert elapsed < 10
    assert len(list(queue.path("incoming").glob("*.dcm"))) == 1
    assert node_scp.gate.pending <= node_scp.config.max_pending


def test_no_free_slot_gives_transient_rejection(scp_factory):
    """Every association slot taken by real associations: the next caller gets A-ASSOCIATE-RJ (transient,
    service-provider presentation related, local limit exceeded), read by pynetdicom; a slot freed is usable."""
    node_scp, _ = scp_factory(max_associations=2)
    held = []
    for _ in range(2):
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(Verification)
        assoc = associate(ae, "127.0.0.1", node_scp.port, ae_title="DEIDPIPE")
        assert assoc.is_established
        held.append(assoc)
    got: list[tuple[int, int, int]] = []

    def on_pdu(event):
        if event.pdu.pdu_type == ASSOCIATE_RJ:
            got.append((event.pdu.result, event.pdu.source, event.pdu.reason_diagnostic))

    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    third = associate(ae, "127.0.0.1", node_scp.port, ae_title="DEIDPIPE", evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    # the PDU the peer read, not third.is_rejected: see test_pdu.test_calling_ae_title_not_allowed_is_rejected
    assert not third.is_established and got == [(2, 3, 2)]
    held.pop().release()
    end = time.monotonic() + 5
    while node_scp.gate.associations > 1 and time.monotonic() < end:
        time.sleep(0.02)
    again = associate(ae, "127.0.0.1", node_scp.port, ae_title="DEIDPIPE")
    assert again.is_established and again.send_c_echo().Status == 0
    again.release()
    held.pop().release()


# -- deflated data sets and the memory budget ----------------------------------------------------------------------
def deflated_object(uid: str, inflated_mb: int) -> bytes:
    """A Secondary Capture data set, Deflated Explicit VR Little Endian, whose 8-bit Pixel Data of
    ``inflated_mb`` MB deflates about 40:1 (40 random bytes in each 1,600). Built in pieces: the test process
    never holds the inflated bytes."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, uid
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Deflate", "DEFLATE-1", "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = inflated_mb * 100, 10000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    n = ds.Rows * ds.Columns
    deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(fp.getvalue() + struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OB", n))]
    block = 1600
    zeros = bytes(block - 40)
    for _ in range(n // block):
        parts.append(deflater.compress(os.urandom(40) + zeros))
    parts.append(deflater.compress(bytes(n % block)) + deflater.flush())
    return b"".join(parts)


def _peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return int(re.search(r"VmHWM:\s+(\d+)", fh.read()).group(1)) / 1024  # type: ignore[union-attr]


def test_deflated_object_is_charged_inflated(scp_factory):
    """A 2 MB deflated object that inflates 40x (80 MB) against a 64 MiB budget: refused with 0xA700 while it
    inflates, the node's peak memory rising by less than the budget; nothing queued, the budget given back. One
    that fits (20 MB inflated) is stored; over ``max_inflated_mb`` it is refused for good (0xC000)."""
    node_scp, queue = scp_factory(memory_budget_mb=64, max_inflated_mb=256)
    big = deflated_object("1.2.826.0.1.3680043.10.999.81", 80)
    small = deflated_object("1.2.826.0.1.3680043.10.999.82", 20)
    assert 1.5e6 < len(big) < 3e6
    sender = association.Requestor("127.0.0.1", node_scp.port, "DEIDPIPE", "SENDER", timeout=30)
    sender.open([(SECONDARY_CAPTURE, [DEFLATED])])
    try:
        before = _peak_rss_mb()
        _peak_rss_reset()
        assert sender.store(SECONDARY_CAPTURE, "1.2.826.0.1.3680043.10.999.81", DEFLATED, big) == 0xA700
        rise = _peak_rss_mb() - min(before, _peak_rss_mb())
        assert rise < 64 + 16, rise  # the budget, and a chunk or two of slack
        assert node_scp.budget.used == 0 and not list(queue.path("incoming").glob("*.dcm"))
        assert sender.store(SECONDARY_CAPTURE, "1.2.826.0.1.3680043.10.999.82", DEFLATED, small) == 0x0000
        assert node_scp.budget.used == 0 and len(list(queue.path("incoming").glob("*.dcm"))) == 1
        node_scp.config = replace(node_scp.config, max_inflated_mb=16)
        assert sender.store(SECONDARY_CAPTURE, "1.2.826.0.1.3680043.10.999.82", DEFLATED, small) == 0xC000
        assert node_scp.budget.used == 0
    finally:
        sender.release()
    stored = pydicom.dcmread(next(queue.path("incoming").glob("*.dcm")), stop_before_pixels=True)
    assert stored.file_meta.TransferSyntaxUID == DEFLATED


def test_processing_processes_inflate_no_more_than_the_node_checked(monkeypatch):
    """The cap the node sets for its processing processes (``DEIDPIPE_INFLATE_MAX_BYTES``) is the one its SCP
    checks with: budget / (2 x workers) by default; a data set over it is refused there as it is here."""
    from deidpipe.dicomio import deflate

    cfg = ServeConfig(queue=Path("q"), memory_budget_mb=128, workers=2)
    assert cfg.max_inflated_bytes == 32 << 20
    assert replace(cfg, max_inflated_mb=100).max_inflated_bytes == 100 << 20
    deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(bytes(40 << 20)) + deflater.flush()
    assert deflate.inflate_limit(len(stream)) == 64 << 20  # the floor, without a cap
    monkeypatch.setenv(deflate.CAP_ENV, str(cfg.max_inflated_bytes))
    assert deflate.inflate_limit(len(stream)) == 32 << 20
    with pytest.raises(deflate.InflateLimitError):
        deflate.inflate_bounded(stream)
    taken: list[int] = []
    monkeypatch.delenv(deflate.CAP_ENV)
    with deflate.charging(lambda n: taken.append(n) or sum(taken) <= 10 << 20) as charge:
        with pytest.raises(deflate.InflateBudgetExceeded):
            deflate.inflate_bounded(stream)
    assert charge.taken <= 10 << 20 and sum(taken) > 10 << 20
