"""What the node refuses before Success (issue 21, item 1): every check that ``run`` makes on an object for what it
is runs before the C-STORE answer, so that nothing answered Success is then quarantined for it. A data set cut
short inside Pixel Data, or without a (non-empty) SOP Instance UID, gets 0xC000 or 0xA900 with an Error Comment
that names the reason and no value; nothing of it is queued or delivered, and the audit says refused. Sent with
pynetdicom on 127.0.0.1; every node is stopped after its test."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from deidpipe.dicomio.plainread import TRUNCATED_IN_HEADER, TRUNCATED_IN_VALUE, dataset_truncation
from deidpipe.keys import ProjectKey
from deidpipe.policy import Policy
from deidpipe.serve import association
from deidpipe.serve.config import Destination, ServeConfig
from deidpipe.serve.dimse import STATUS_CANNOT_UNDERSTAND, STATUS_MISMATCH
from deidpipe.serve.node import Node
from deidpipe.serve.queue import Queue
from deidpipe.serve.scp import StorageSCP, refusal
from tests.helpers import associate

KEY = ProjectKey(b"serve-refusals-test-key-0123456789abcdef")
HEADER_POLICY = Policy(pixels="off", deface="off")
CT_SMALL = get_testdata_file("CT_small.dcm")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ROOT = "1.2.826.0.1.3680043.10.999.21."
PIXEL_HEADER = b"\xe0\x7f\x10\x00OW\x00\x00"  # Pixel Data (7FE0,0010), OW, in CT_small's Explicit VR Little Endian
IMPLICIT, EXPLICIT, DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"


def _ct(path: Path, uid: str | None, meta_uid: str | None = None, *, cut_in_pixels: int | None = None,
        cut_at: int | None = None, drop: tuple[str, ...] = ()) -> Path:
    """CT_small with SOP Instance UID ``uid`` (None: no element; the File Meta's copy is ``meta_uid``, by default
    the same), without the attributes in ``drop``, its bytes cut ``cut_in_pixels`` bytes into the Pixel Data
    value or at byte ``cut_at`` of the file."""
    ds = pydicom.dcmread(CT_SMALL)
    if uid is None:
        del ds.SOPInstanceUID
    else:
        ds.SOPInstanceUID = uid
    for keyword in drop:
        delattr(ds, keyword)
    ds.file_meta.MediaStorageSOPInstanceUID = uid if meta_uid is None else meta_uid
    ds.save_as(path, enforce_file_format=False)
    data = path.read_bytes()
    if cut_in_pixels is not None:
        data = data[:data.index(PIXEL_HEADER) + 12 + cut_in_pixels]
    elif cut_at is not None:
        data = data[:cut_at]
    path.write_bytes(data)
    return path


def _send(port: int, files: list[Path]) -> list[tuple[int, str | None]]:
    """(status, Error Comment) for each file, sent with pynetdicom as it is (the bytes after the File Meta, the
    request's UIDs from the File Meta) on one association; -1: no answer."""
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="SENDER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(CT_IMAGE, ["1.2.840.10008.1.2.1"])
    assoc = associate(ae, "127.0.0.1", port, ae_title="DEIDPIPE")
    assert assoc.is_established
    answers = []
    try:
        for f in files:
            rsp = assoc.send_c_store(f)
            answers.append((int(rsp.Status), rsp.get("ErrorComment")) if rsp is not None and "Status" in rsp
                           else (-1, None))
    finally:
        assoc.release()
    return answers


def _node(tmp_path: Path, policy: Policy) -> Node:
    cfg = ServeConfig(queue=tmp_path / "queue", port=0, quiet_period_s=0.2, process_in_child=False, workers=1,
                      destinations=(Destination("copy", "folder", path=tmp_path / "copy"),))
    return Node(cfg, KEY, policy)


def test_objects_run_would_refuse_are_refused_before_success(tmp_path):
    """Cut 1,000 and 20,000 bytes into Pixel Data (with the last-fragment bit: pynetdicom sends what the file
    holds), cut inside the header, no SOP Instance UID anywhere, an empty one, one only in the request, no SOP
    Class UID: each a failure status with a value-free Error Comment, a quarantine record of stage receive and a
    refused audit line, nothing queued or delivered. The complete CT_small after them: Success, delivered."""
    original = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    bad = {
        "pixels-1000": (_ct(tmp_path / "p1.dcm", ROOT + "1", cut_in_pixels=1000), STATUS_CANNOT_UNDERSTAND,
                        "pixel data is shorter than its header declares"),
        "pixels-20000": (_ct(tmp_path / "p2.dcm", ROOT + "2", cut_in_pixels=20000), STATUS_CANNOT_UNDERSTAND,
                         "pixel data is shorter than its header declares"),
        "header-1000": (_ct(tmp_path / "h.dcm", ROOT + "3", cut_at=1000), STATUS_CANNOT_UNDERSTAND,
                        "file is truncated"),
        "no-uid": (_ct(tmp_path / "n.dcm", None, ""), STATUS_MISMATCH, "object has no SOP Instance UID"),
        "empty-uid": (_ct(tmp_path / "e.dcm", ""), STATUS_MISMATCH, "object has no SOP Instance UID"),
        "request-only-uid": (_ct(tmp_path / "r.dcm", None, ROOT + "4"), STATUS_MISMATCH,
                             "object has no SOP Instance UID"),
        "no-class": (_ct(tmp_path / "c.dcm", ROOT + "5", drop=("SOPClassUID",)), STATUS_MISMATCH,
                     "object has no SOP Class UID"),
    }
    good = _ct(tmp_path / "good.dcm", ROOT + "6")
    with _node(tmp_path, HEADER_POLICY) as node:
        answers = _send(node.port, [f for f, _, _ in bad.values()] + [good])
        assert node.wait_idle(30)
        cfg = node.config
    secrets = [str(original.PatientName), str(original.PatientID), str(original.SOPInstanceUID), ROOT]
    for (name, (_, status, reason)), (got, comment) in zip(bad.items(), answers, strict=False):
        assert got == status, (name, hex(got))
        assert comment and comment.startswith(reason), (name, comment)
        assert not any(s in comment for s in secrets), name
    assert answers[-1] == (0x0000, None)
    delivered = list((tmp_path / "copy").rglob("*.dcm"))
    assert len(delivered) == 1  # the complete one only, never a refused one
    assert pydicom.dcmread(delivered[0], stop_before_pixels=True).SOPClassUID == CT_IMAGE
    assert not list(cfg.queue.rglob("*.dcm")) or all("delivered" in p.parts for p in cfg.queue.rglob("*.dcm"))
    records = [json.loads(p.read_text()) for p in (cfg.queue / "quarantine").glob("*.json")]
    assert len(records) == len(bad) and {r["stage"] for r in records} == {"receive"}
    assert sorted(r["status"] for r in records) == sorted(f"0x{s:04X}" for _, s, _ in bad.values())
    audit = [json.loads(x) for x in (cfg.queue / "audit.jsonl").read_text().splitlines()]
    assert sum(a.get("status") == "refused" for a in audit) == len(bad)
    text = (cfg.queue / "audit.jsonl").read_text() + json.dumps(records)
    assert not any(s in text for s in secrets)
    assert node.scp.stats["failed"] == len(bad) and node.scp.stats["received"] == 1


def test_incomplete_pixels_accepted_where_the_policy_allows_them(tmp_path):
    """``allow_incomplete_pixels``: the object cut inside Pixel Data is answered Success and written as ``run``
    writes it (the reason audited); a UID-less one is still refused."""
    cut = _ct(tmp_path / "p.dcm", ROOT + "7", cut_in_pixels=1000)
    no_uid = _ct(tmp_path / "n.dcm", None, "")
    with _node(tmp_path, Policy(pixels="off", deface="off", allow_incomplete_pixels=True)) as node:
        answers = _send(node.port, [cut, no_uid])
        assert node.wait_idle(30)
    assert answers[0] == (0x0000, None) and answers[1][0] == STATUS_MISMATCH
    assert len(list((tmp_path / "copy").rglob("*.dcm"))) == 1
    audit = (tmp_path / "queue" / "audit.jsonl").read_text()
    assert "incomplete_pixels" in audit


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's, on setting the invalid UIDs below
@pytest.mark.parametrize(("change", "expected"), [
    ({}, None),
    ({"SOPInstanceUID": None}, STATUS_MISMATCH),  # only the File Meta names it: run would, a C-STORE may not
    ({"SOPInstanceUID": None, "SOPClassUID": None}, STATUS_MISMATCH),
    ({"SOPInstanceUID": "  "}, STATUS_MISMATCH),
    ({"SOPInstanceUID": ROOT + "9"}, STATUS_MISMATCH),  # not the request's
    ({"SOPClassUID": "not a uid"}, STATUS_MISMATCH),
    ({"Rows": 512}, STATUS_CANNOT_UNDERSTAND),  # the header declares more pixels than there are
])
def test_refusal_rules(change, expected):
    """:func:`refusal` on data sets read whole: the checks ``run`` makes, and the request's UID."""
    ds = pydicom.dcmread(CT_SMALL)
    request_uid = str(ds.SOPInstanceUID)
    for keyword, value in change.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    answer = refusal(ds, request_uid)
    assert (answer.status if answer else None) == expected
    if answer:
        assert answer.comment and request_uid not in answer.comment
    if "Rows" in change:
        assert refusal(ds, request_uid, Policy(allow_incomplete_pixels=True)) is None


def _bare(implicit: bool) -> bytes:
    """CT_small's data set, no File Meta, in Implicit or Explicit VR Little Endian (what a sender puts in P-DATA)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, pydicom.dcmread(CT_SMALL))
    return fp.getvalue()


def _cuts(body: bytes, implicit: bool) -> dict[str, int]:
    """Where to cut a bare data set: inside Pixel Data, inside an element header, inside a value."""
    pixels = body.index(b"\xe0\x7f\x10\x00") + (8 if implicit else 12)
    study = body.index(b"\x20\x00\x0d\x00")  # Study Instance UID (0020,000D)
    return {"pixels": pixels + 1000, "header": study + 4, "value": study + 12}


def test_bare_data_set_byte_accounting():
    """:func:`dataset_truncation` on the data set alone, as received or once inflated: a cut inside an element
    header or value is named; inside top-level Pixel Data it is the pixel check's; a whole one is whole."""
    for implicit in (True, False):
        body = _bare(implicit)
        cuts = _cuts(body, implicit)
        assert dataset_truncation(body, implicit) is None
        assert dataset_truncation(body[:cuts["pixels"]], implicit) is None  # pixelcheck names it
        assert dataset_truncation(body[:cuts["header"]], implicit) == TRUNCATED_IN_HEADER
        assert dataset_truncation(body[:cuts["value"]], implicit) == TRUNCATED_IN_VALUE


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, DEFLATED])
def test_cut_data_sets_refused_in_every_transfer_syntax(tmp_path, syntax):
    """Implicit, Explicit and Deflated Explicit VR Little Endian, sent by deidpipe's own requestor: cut inside
    Pixel Data, inside an element header, inside a value: 0xC000, nothing queued; whole: Success. Deflated, the
    bytes are accounted for once inflated (pydicom alone reads a data set cut inside an element header as one
    that ends before it)."""
    body = _bare(syntax == IMPLICIT)
    cuts = _cuts(body, syntax == IMPLICIT)

    def encode(data: bytes) -> bytes:
        if syntax != DEFLATED:
            return data
        deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        out = deflater.compress(data) + deflater.flush()
        return out + b"\x00" * (len(out) % 2)  # PS3.5 A.5: padded to even length

    cfg = ServeConfig(queue=tmp_path / "queue", port=0, workers=1, network_timeout_s=10)
    queue = Queue(cfg.queue)
    node_scp = StorageSCP(cfg, queue, KEY)
    node_scp.start()
    try:
        sender = association.Requestor("127.0.0.1", node_scp.port, "DEIDPIPE", "SENDER", timeout=20)
        sender.open([(CT_IMAGE, [syntax])])
        uid = str(pydicom.dcmread(CT_SMALL, stop_before_pixels=True).SOPInstanceUID)
        try:
            for where, cut in cuts.items():
                assert sender.store(CT_IMAGE, uid, syntax, encode(body[:cut])) == STATUS_CANNOT_UNDERSTAND, where
            assert not list(queue.path("incoming").glob("*.dcm"))
            assert sender.store(CT_IMAGE, uid, syntax, encode(body)) == 0x0000
        finally:
            sender.release()
    finally:
        node_scp.stop()
    assert len(list(queue.path("incoming").glob("*.dcm"))) == 1
