"""``deidpipe serve`` against real peers: dcmtk's storescu / storescp / echoscu and Orthanc (C-STORE and STOW-RS
through its DICOMweb plugin), all started here on 127.0.0.1 with free ports, bounded in time and stopped after.

The default bulk test sends 200 objects; ``DEIDPIPE_SERVE_OBJECTS=1000`` runs the issue's 1,000.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import ssl
import struct
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from deidpipe.keys import ProjectKey
from deidpipe.policy import Policy
from deidpipe.serve.config import Destination, RetryConfig, ServeConfig, TlsConfig, parse_dicom_dest
from deidpipe.serve.net import free_port, wait_port
from deidpipe.serve.node import Node
from deidpipe.serve.status import queue_status
from deidpipe.synth import generate_archive
from tests.helpers import associate, cli_command, run_cli

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None or shutil.which("storescp") is None,
                                reason="dcmtk is not installed")

ENV = dict(os.environ, TCP_NODELAY="1")
SECRET = b"serve-test-key-0123456789abcdef0123"
KEY = ProjectKey(SECRET)
HEADER_POLICY = Policy(pixels="off", deface="off")
BULK = int(os.environ.get("DEIDPIPE_SERVE_OBJECTS", "200"))
ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


# -- helpers ----------------------------------------------------------------------------------------------------
def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@contextmanager
def storescp(out: Path, port: int | None = None, aet: str = "DEST", limit_s: int = 600):
    """dcmtk's storescp on 127.0.0.1 (``+B``: the data set written exactly as received), stopped after."""
    port = port or free_port()
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["timeout", str(limit_s), "storescp", "-aet", aet, "-od", str(out), "+B",
                             str(port)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        stop(proc)


def storescu(port: int, paths: list[Path] | Path, aec: str = "DEIDPIPE", aet: str = "SENDER",
             timeout: int = 300) -> subprocess.CompletedProcess:
    files = [str(paths)] if isinstance(paths, Path) else [str(p) for p in paths]
    cmd = ["storescu", "-aet", aet, "-aec", aec, "+sd", "+r", "+sp", "*.dcm", "127.0.0.1", str(port), *files]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def dataset_part(data: bytes) -> bytes:
    """The bytes after the File Meta Information (which every receiver writes its own way)."""
    assert data[128:132] == b"DICM"
    (length,) = struct.unpack("<I", data[140:144])
    return data[144 + length:]


def received(folder: Path) -> dict[str, bytes]:
    """SOP Instance UID -> file bytes, for every file a receiver wrote."""
    import pydicom

    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            data = p.read_bytes()
            try:
                uid = str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            except (pydicom.errors.InvalidDicomError, EOFError, OSError, AttributeError):
                continue  # being written, or cut short by a sender that was killed: not received
            out[uid] = data
    return out


def reference(archive: Path, tmp: Path, policy: Policy) -> dict[str, bytes]:
    """What ``deidpipe run`` writes for the archive with the same key and policy, by (pseudonymous) SOP UID."""
    from deidpipe.pipeline import run

    out = tmp / "run-out"
    report = run(archive, out, policy, key=KEY, workers=1)
    assert report.quarantined == 0
    return {p.name[:-4]: p.read_bytes() for p in out.rglob("*.dcm") if "_deidpipe" not in p.parts}


def config(tmp: Path, *dests: Destination, **kw) -> ServeConfig:
    kw.setdefault("retry", RetryConfig(initial_s=0.2, max_interval_s=1.0, max_attempts=1000, max_age_s=600))
    return ServeConfig(queue=tmp / "queue", port=0, destinations=dests, quiet_period_s=1.0, **kw)


def pynetdicom_store(port: int, files: list[Path], aet: str = "SENDER", tls_args=None, on_status=None) -> list[int]:
    """Send files with pynetdicom (raw: the bytes after the File Meta as they are) and return each status (-1:
    no answer)."""
    import pydicom
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    native = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    contexts = set()
    for f in files:
        meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
        ts = str(meta.TransferSyntaxUID)  # a compressed file is sent as it is, on a context of its own syntax
        contexts.add((str(meta.MediaStorageSOPClassUID), native if ts in native else (ts,)))
    for sop, syntaxes in sorted(contexts):
        ae.add_requested_context(sop, list(syntaxes))
    assoc = associate(ae, "127.0.0.1", port, ae_title="DEIDPIPE", tls_args=tls_args)
    statuses = []
    try:
        if not assoc.is_established:
            return [-1] * len(files)
        for f in files:
            try:
                rsp = assoc.send_c_store(f)
                status = int(rsp.Status) if rsp is not None and "Status" in rsp else -1
            except Exception:  # noqa: BLE001 - the node went away
                status = -1
            statuses.append(status)
            if on_status:
                on_status(f, status)
            if status == -1:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses + [-1] * (len(files) - len(statuses))


# -- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 2-patient synth archive (20 objects), its answer key and ``run``'s output for both policies."""
    root = tmp_path_factory.mktemp("small")
    answer = generate_archive(root / "archive", patients=2, real_world=False)
    (root / "archive" / "answer_key.json").unlink(missing_ok=True)
    return root / "archive", answer, reference(root / "archive", root / "hdr", HEADER_POLICY)


@pytest.fixture(autouse=True)
def no_planted_value_in_logs(request, caplog):
    """Every test: the node logs at DEBUG, and nothing it logs holds a planted value of the archive."""
    caplog.set_level(logging.DEBUG, logger="deidpipe")
    yield
    if "small" in request.fixturenames:
        answer = request.getfixturevalue("small")[1]
        text = caplog.text.encode("utf-8")
        leaked = [p for p in answer.search_patterns() if len(p) >= 4 and p in text]
        assert not leaked, f"{len(leaked)} planted value(s) in the logs"


# -- tests ---------------------------------------------------------------------------------------------------------
def test_storescu_to_storescp_and_folder_same_bytes_as_run(tmp_path, small):
    archive, _, expected = small
    with storescp(tmp_path / "scp") as dport:
        cfg = config(tmp_path, parse_dicom_dest(f"DEST@127.0.0.1:{dport}", "pacs"),
                     Destination("copy", "folder", path=tmp_path / "copy"))
        with Node(cfg, KEY, HEADER_POLICY) as node:
            r = storescu(node.port, archive)
            assert r.returncode == 0, r.stderr[-400:]
            assert node.wait_idle(120)
            st = queue_status(cfg.queue)
    copy = {p.name[:-4]: p.read_bytes() for p in (tmp_path / "copy").rglob("*.dcm")}
    assert copy == expected  # the folder destination: exactly the files deidpipe run writes
    got = received(tmp_path / "scp")
    assert set(got) == set(expected)
    for uid, data in got.items():  # over the network: the same data set, under storescp's own meta header
        assert dataset_part(data) == dataset_part(expected[uid])
    assert st["depth"] == 0 and st["quarantined"] == 0
    assert st["destinations"]["pacs"]["delivered"] == len(expected)
    audit = [json.loads(line) for line in (cfg.queue / "audit.jsonl").read_text().splitlines()]
    assert sum(a.get("event") == "processed" for a in audit) == len(expected)
    assert not list((cfg.queue / "out").rglob("*.dcm"))  # delivered everywhere: the queue let it go


@pytest.mark.parametrize("in_child,workers", [(False, 1), (True, 3)])
def test_worker_layouts_same_bytes_as_run(tmp_path, small, in_child, workers):
    """The processing stage in the node's process doing the work itself, and in a child with a pool of three
    workers: the folder destination gets exactly what ``run`` writes, every object once."""
    archive, _, expected = small
    cfg = config(tmp_path, Destination("copy", "folder", path=tmp_path / "copy"), process_in_child=in_child,
                 workers=workers)
    with Node(cfg, KEY, HEADER_POLICY) as node:
        assert node.processor.workers == workers
        assert storescu(node.port, archive).returncode == 0
        assert node.wait_idle(120)
    copy = {p.name[:-4]: p.read_bytes() for p in (tmp_path / "copy").rglob("*.dcm")}
    assert copy == expected
    audit = [json.loads(line) for line in (cfg.queue / "audit.jsonl").read_text().splitlines()]
    assert sorted(a["object_id"] for a in audit if a.get("event") == "processed") == sorted(
        {a["object_id"] for a in audit if a.get("event") == "processed"})


def test_library_entry_points(tmp_path):
    """``deidpipe.serve(config, key, policy)``, as the issue names it, and ``deidpipe.serve.serve``."""
    import deidpipe

    cfg = config(tmp_path, Destination("copy", "folder", path=tmp_path / "copy"))
    node = deidpipe.serve(cfg, KEY, HEADER_POLICY)
    try:
        assert isinstance(node, Node) and node.port > 0
    finally:
        node.stop()
    assert deidpipe.serve.serve is not None and deidpipe.serve.ServeConfig is ServeConfig


def test_default_policy_pixel_stage_same_bytes_as_run(tmp_path, small):
    """The default policy (pixel-text stage on every image) through the node equals ``run`` with it."""
    archive, _, _ = small
    expected = reference(archive, tmp_path / "ref", Policy.basic())
    cfg = config(tmp_path, Destination("copy", "folder", path=tmp_path / "copy"))
    with Node(cfg, KEY, Policy.basic()) as node:
        assert storescu(node.port, archive).returncode == 0
        assert node.wait_idle(300)
    assert {p.name[:-4]: p.read_bytes() for p in (tmp_path / "copy").rglob("*.dcm")} == expected


def test_bulk_objects_all_arrive(tmp_path):
    """The issue's volume: BULK objects (default 200; DEIDPIPE_SERVE_OBJECTS=1000) from storescu to storescp."""
    archive = tmp_path / "archive"
    generate_archive(archive, patients=max(1, BULK // 10), real_world=False)
    (archive / "answer_key.json").unlink(missing_ok=True)
    expected = reference(archive, tmp_path, HEADER_POLICY)
    assert len(expected) == BULK
    with storescp(tmp_path / "scp") as dport:
        cfg = config(tmp_path, parse_dicom_dest(f"DEST@127.0.0.1:{dport}", "pacs"))
        with Node(cfg, KEY, HEADER_POLICY) as node:
            t0 = time.monotonic()
            r = storescu(node.port, archive, timeout=600)
            assert r.returncode == 0, r.stderr[-400:]
            assert node.wait_idle(600)
            elapsed = time.monotonic() - t0
    got = received(tmp_path / "scp")
    assert set(got) == set(expected)
    assert all(dataset_part(got[u]) == dataset_part(expected[u]) for u in expected)
    print(f"{BULK} objects through the node in {elapsed:.1f} s")


def test_destination_down_then_up_delivers_everything_once(tmp_path, small):
    archive, _, expected = small
    dport = free_port()  # nothing listens yet
    cfg = config(tmp_path, parse_dicom_dest(f"DEST@127.0.0.1:{dport}", "pacs"))
    with Node(cfg, KEY, HEADER_POLICY) as node:
        assert storescu(node.port, archive).returncode == 0  # accepted while the destination is down
        end = time.monotonic() + 60
        while time.monotonic() < end and not (queue_status(cfg.queue)["retries"] > 0 and queue_status(
                cfg.queue)["destinations"]["pacs"]["pending"] == len(expected)):
            time.sleep(0.1)
        st = queue_status(cfg.queue)
        assert st["retries"] > 0 and st["destinations"]["pacs"]["pending"] == len(expected)
        assert st["oldest_age_s"] is not None
        with storescp(tmp_path / "scp", port=dport):
            assert node.wait_idle(120)
            time.sleep(0.5)
    got = received(tmp_path / "scp")
    assert set(got) == set(expected)
    assert len(list((tmp_path / "scp").iterdir())) == len(expected)  # once each
    audit = [json.loads(x) for x in (cfg.queue / "audit.jsonl").read_text().splitlines()]
    delivered = [a["object_id"] for a in audit if a.get("event") == "deliver" and a["status"] == "delivered"]
    assert len(delivered) == len(set(delivered)) == len(expected)
    assert queue_status(cfg.queue)["quarantined"] == 0


def test_corrected_copy_replaces_one_waiting_for_its_destination(tmp_path):
    """A corrected object (other pixels, the same SOP Instance UID) arrives while the first copy waits for a
    destination that is down: the corrected one takes its place (docs/serve.md, queue), rather than being refused
    as "the output path already holds a different object"; once the destination is up, it is what arrives."""
    import pydicom
    from pydicom.data import get_testdata_file

    src = tmp_path / "src"
    src.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.save_as(src / "first.dcm")
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 7
    ds.PixelData = pixels.tobytes()
    corrected = tmp_path / "corrected"
    corrected.mkdir()
    ds.save_as(corrected / "corrected.dcm")
    expected = reference(corrected, tmp_path, HEADER_POLICY)
    dport = free_port()  # nothing listens yet
    cfg = config(tmp_path, parse_dicom_dest(f"DEST@127.0.0.1:{dport}", "pacs"))

    def ticket() -> dict | None:
        tickets = list((cfg.queue / "outbox" / "pacs").glob("*.json"))
        return json.loads(tickets[0].read_bytes()) if tickets else None

    with Node(cfg, KEY, HEADER_POLICY) as node:
        assert storescu(node.port, src).returncode == 0
        end = time.monotonic() + 60
        while time.monotonic() < end and ticket() is None:
            time.sleep(0.05)
        first = ticket()
        assert first is not None
        assert storescu(node.port, corrected).returncode == 0
        while time.monotonic() < end and ticket()["copy"] == first["copy"]:
            time.sleep(0.05)
        assert ticket()["out_hash"] != first["out_hash"]
        with storescp(tmp_path / "scp", port=dport):
            assert node.wait_idle(120)
            time.sleep(0.5)
    got = received(tmp_path / "scp")
    assert set(got) == set(expected) and dataset_part(got[next(iter(got))]) == dataset_part(
        next(iter(expected.values())))
    assert queue_status(cfg.queue)["quarantined"] == 0


def test_sender_sends_only_the_file_whose_head_it_read(tmp_path, small, monkeypatch):
    """The C-STORE sender reads each output's head (SOP, syntax, data set offset) for a batch, then opens it to
    send: an output a newer copy replaced in between is not sent with the older head, it is tried again."""
    from deidpipe.serve import deliver
    from deidpipe.serve.queue import Queue

    _, _, expected = small
    queue = Queue(tmp_path / "queue", ["pacs"])
    out = queue.path("out") / "P" / "o.dcm"
    out.parent.mkdir(parents=True)
    first, other = list(expected.values())[:2]
    out.write_bytes(first)
    real_head = deliver.file_head

    def head_then_replaced(path):
        head = real_head(path)
        tmp = path.with_name("newer.tmp")
        tmp.write_bytes(other)
        tmp.replace(path)  # a newer copy takes the path (Queue.make_way, then the sink)
        return head

    monkeypatch.setattr(deliver, "file_head", head_then_replaced)
    with storescp(tmp_path / "scp") as port:
        sender = deliver.DicomSender(parse_dicom_dest(f"DEST@127.0.0.1:{port}", "pacs"), "DEIDPIPE", queue)
        try:
            outcome = sender.send([{"object_id": "x", "destination": "pacs", "output": "P/o.dcm"}])
        finally:
            sender.close()
    assert outcome == [(deliver.RETRY, "de-identified output replaced by a newer copy")]
    assert not received(tmp_path / "scp")


def test_retry_limit_quarantines_with_alert(tmp_path, small, caplog):
    archive, _, expected = small
    cfg = config(tmp_path, parse_dicom_dest(f"DEST@127.0.0.1:{free_port()}", "pacs"),
                 retry=RetryConfig(initial_s=0.05, max_interval_s=0.1, max_attempts=3, max_age_s=600))
    with Node(cfg, KEY, HEADER_POLICY) as node:
        assert storescu(node.port, archive).returncode == 0
        assert node.wait_idle(120)
    st = queue_status(cfg.queue)
    assert st["quarantined"] == len(expected) and st["quarantined_by_stage"] == {"deliver": len(expected)}
    assert "ALERT" in caplog.text
    rec = json.loads(next((cfg.queue / "quarantine").glob("*.pacs.json")).read_text())
    assert rec["stage"] == "deliver" and rec["attempts"] == 3


def test_statuses_from_destination(tmp_path, small):
    """Warnings (0xB000) count as delivered; 0xA700 is retried; any other failure is quarantined at once."""
    import pydicom
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    archive, _, expected = small
    answers: dict[str, list[int]] = {}
    plan = {}

    def on_store(event):
        uid = str(event.request.AffectedSOPInstanceUID)
        status = plan[uid].pop(0) if plan.get(uid) else 0x0000
        answers.setdefault(uid, []).append(status)
        return status

    uids = sorted(expected)
    plan.update({uids[0]: [0xB000], uids[1]: [0xA700, 0xA700], uids[2]: [0xC000], uids[3]: [0xA900]})
    ae = AE("DEST")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        cfg = config(tmp_path, parse_dicom_dest(f"DEST@127.0.0.1:{server.server_address[1]}", "pacs"))
        with Node(cfg, KEY, HEADER_POLICY) as node:
            assert storescu(node.port, archive).returncode == 0
            assert node.wait_idle(120)
    finally:
        server.shutdown()
    assert answers[uids[0]] == [0xB000] and answers[uids[1]] == [0xA700, 0xA700, 0x0000]
    st = queue_status(cfg.queue)
    assert st["destinations"]["pacs"]["delivered"] == len(expected) - 2
    assert st["quarantined"] == 2
    reasons = sorted(json.loads(p.read_text())["reason"] for p in (cfg.queue / "quarantine").glob("*.json"))
    assert reasons == ["status 0xA900", "status 0xC000"]
    assert pydicom  # imported for the SCP's datasets


def test_sigkill_mid_stream_then_restart_delivers_every_acknowledged_object(tmp_path):
    archive = tmp_path / "archive"
    answer = generate_archive(archive, patients=8, real_world=False)
    (archive / "answer_key.json").unlink(missing_ok=True)
    files = sorted(archive.rglob("*.dcm"))
    keyfile = tmp_path / "key"
    keyfile.write_bytes(SECRET)
    policy = tmp_path / "policy.yaml"
    policy.write_text("pixels: off\ndeface: off\n")
    port = free_port()
    with storescp(tmp_path / "scp") as dport:
        cmd = cli_command("serve", "--queue", str(tmp_path / "queue"), "--port", str(port), "--dest-dicom",
                          f"DEST@127.0.0.1:{dport}", "--policy", str(policy))
        env = dict(ENV, DEIDPIPE_KEY_FILE=str(keyfile))
        log1 = open(tmp_path / "node1.log", "wb")  # noqa: SIM115
        node = subprocess.Popen(cmd, env=env, stdout=log1, stderr=log1)
        acked: list[Path] = []
        try:
            wait_port(port)

            def on_status(f, status):
                if status == 0:
                    acked.append(f)
                    if len(acked) == 25:
                        os.kill(node.pid, signal.SIGKILL)

            statuses = pynetdicom_store(port, files, on_status=on_status)
            assert node.wait(timeout=30) == -signal.SIGKILL
            assert 25 <= len(acked) < len(files), statuses
            log2 = open(tmp_path / "node2.log", "wb")  # noqa: SIM115
            node = subprocess.Popen(cmd, env=env, stdout=log2, stderr=log2)
            wait_port(port)
            want = {KEY.uid(str(__import__("pydicom").dcmread(f, stop_before_pixels=True).SOPInstanceUID))
                    for f in acked}
            end = time.monotonic() + 180
            while time.monotonic() < end and not want <= set(received(tmp_path / "scp")):
                time.sleep(0.5)
            assert want <= set(received(tmp_path / "scp"))
        finally:
            stop(node)
    logs = (tmp_path / "node1.log").read_bytes() + (tmp_path / "node2.log").read_bytes()
    assert b"taken up again" in logs or b"listening" in logs
    assert not [p for p in answer.search_patterns() if len(p) >= 4 and p in logs]  # no planted value logged


def _malformed(src: Path, out: Path) -> Path:
    """A file whose File Meta is sound and whose data set ends inside its last element (a private OB element
    after the pixel data that declares 1 MiB and holds 8 bytes)."""
    out.write_bytes(src.read_bytes() + struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"OB", 0, 1 << 20) + b"X" * 8)
    return out


def test_malformed_object_gets_failure_status_and_quarantine_record(tmp_path, small):
    archive, _, _ = small
    src = sorted(archive.rglob("*.dcm"))[0]
    bad = _malformed(src, tmp_path / "bad.dcm")
    cfg = config(tmp_path, Destination("copy", "folder", path=tmp_path / "copy"))
    with Node(cfg, KEY, HEADER_POLICY) as node:
        statuses = pynetdicom_store(node.port, [bad, src])
        assert node.wait_idle(60)
    assert 0xC000 <= statuses[0] <= 0xCFFF and statuses[1] == 0
    records = [json.loads(p.read_text()) for p in (cfg.queue / "quarantine").glob("*.json")]
    assert len(records) == 1 and records[0]["stage"] == "receive" and records[0]["status"].startswith("0xC")
    assert len(list((tmp_path / "copy").rglob("*.dcm"))) == 1  # the good one went on, the bad one never


def test_disk_failure_answers_out_of_resources(tmp_path, small):
    archive, _, _ = small
    src = sorted(archive.rglob("*.dcm"))[0]
    cfg = config(tmp_path, Destination("copy", "folder", path=tmp_path / "copy"))
    with Node(cfg, KEY, HEADER_POLICY) as node:
        tmpdir = cfg.queue / "tmp"
        shutil.rmtree(tmpdir)
        tmpdir.write_bytes(b"")  # the queue cannot write: as a full or failed disk would
        try:
            assert pynetdicom_store(node.port, [src]) == [0xA700]
        finally:
            tmpdir.unlink()
            tmpdir.mkdir()
        assert pynetdicom_store(node.port, [src]) == [0]
        assert node.wait_idle(60)


def test_allow_lists_refuse_other_callers(tmp_path):
    echo = ["echoscu", "-to", "10", "-ta", "10", "-td", "10"]
    cfg = config(tmp_path, allowed_ae_titles=("GOODSCU",))
    with Node(cfg, KEY, HEADER_POLICY) as node:
        ok = subprocess.run([*echo, "-aet", "GOODSCU", "-aec", "DEIDPIPE", "127.0.0.1", str(node.port)], env=ENV,
                            capture_output=True, timeout=60)
        bad = subprocess.run([*echo, "-aet", "BADSCU", "-aec", "DEIDPIPE", "127.0.0.1", str(node.port)], env=ENV,
                             capture_output=True, timeout=60)
    assert ok.returncode == 0 and bad.returncode != 0
    assert b"Rejected" in bad.stderr + bad.stdout or b"rejected" in (bad.stderr + bad.stdout).lower()
    cfg = config(tmp_path / "b", allowed_addresses=("10.0.0.0/8",))
    with Node(cfg, KEY, HEADER_POLICY) as node:
        refused = subprocess.run([*echo, "-aec", "DEIDPIPE", "127.0.0.1", str(node.port)], env=ENV,
                                 capture_output=True, timeout=60)
    assert refused.returncode != 0


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost, made here."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deidpipe test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "node.pem").write_bytes(cert.public_bytes(pem))
    (folder / "node.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return folder / "ca.pem", folder / "node.pem", folder / "node.key"


def test_objects_sent_again_are_delivered_not_quarantined(tmp_path, small):
    """A sender that sends the same objects again (after a lost answer, or a whole resend) while the first copies
    may still be processed or delivered: every object arrives as ``run`` writes it, nothing is quarantined, and
    the queue keeps no output behind. Whether the copies overlap here depends on timing; the orders of events that
    matter are tested one by one in tests/serve/test_queue.py."""
    archive, _, expected = small
    cfg = config(tmp_path, Destination("copy", "folder", path=tmp_path / "copy"))
    with Node(cfg, KEY, HEADER_POLICY) as node:
        for _ in range(3):
            assert storescu(node.port, archive).returncode == 0
        assert node.wait_idle(120)
    assert {p.name[:-4]: p.read_bytes() for p in (tmp_path / "copy").rglob("*.dcm")} == expected
    assert not list((cfg.queue / "quarantine").iterdir())
    assert not [p for p in (cfg.queue / "out").rglob("*") if p.is_file()]
    audit = [json.loads(x) for x in (cfg.queue / "audit.jsonl").read_text().splitlines()]
    deliveries = [a for a in audit if a.get("event") == "deliver"]
    assert {a["status"] for a in deliveries} <= {"delivered", "superseded", "retry"}
    # a retry only where a newer copy was taking the output's place (Queue.make_way, Queue.replacing)
    assert all(a["reason"] == "de-identified output is being replaced by a newer copy"
               for a in deliveries if a["status"] == "retry")


def test_tls(tmp_path, small):
    archive, _, expected = small
    ca, cert, key = _certificates(tmp_path / "pki")
    files = sorted(archive.rglob("*.dcm"))
    cfg = config(tmp_path, Destination("copy", "folder", path=tmp_path / "copy"), tls=TlsConfig(cert, key))
    with Node(cfg, KEY, HEADER_POLICY) as node:
        ctx = ssl.create_default_context(cafile=str(ca))
        assert pynetdicom_store(node.port, files, tls_args=(ctx, "127.0.0.1")) == [0] * len(files)
        plain = subprocess.run(["echoscu", "-to", "10", "-ta", "10", "-td", "10", "-aec", "DEIDPIPE", "127.0.0.1",
                                str(node.port)], env=ENV, capture_output=True, timeout=60)
        assert plain.returncode != 0  # no TLS, no association
        assert node.wait_idle(60)
    assert {p.name[:-4] for p in (tmp_path / "copy").rglob("*.dcm")} == set(expected)


def test_tls_destination(tmp_path, small):
    """The node's C-STORE SCU over TLS, verifying the destination's certificate against the CA it is given
    (pynetdicom as the TLS destination)."""
    from dataclasses import replace

    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

    archive, _, expected = small
    ca, cert, key = _certificates(tmp_path / "pki")
    got: set[str] = set()

    def on_store(event):
        got.add(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="PACS")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=server_ctx,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        dest = replace(parse_dicom_dest(f"PACS@127.0.0.1:{port}", "pacs"), tls=TlsConfig(ca=ca))
        cfg = config(tmp_path, dest)
        with Node(cfg, KEY, HEADER_POLICY) as node:
            assert storescu(node.port, archive).returncode == 0
            assert node.wait_idle(120)
            st = queue_status(cfg.queue)
        untrusted = replace(dest, tls=TlsConfig())  # the system's CAs do not know the test CA: never delivered
        cfg2 = config(tmp_path / "b", untrusted, retry=RetryConfig(initial_s=0.1, max_interval_s=0.1,
                                                                    max_attempts=2, max_age_s=60))
        with Node(cfg2, KEY, HEADER_POLICY) as node:
            assert storescu(node.port, archive).returncode == 0
            assert node.wait_idle(120)
            st2 = queue_status(cfg2.queue)
    finally:
        server.shutdown()
    assert got == set(expected)
    assert st["destinations"]["pacs"]["delivered"] == len(expected)
    assert st2["destinations"]["pacs"]["delivered"] == 0 and st2["quarantined"] == len(expected)


@contextmanager
def orthanc(tmp: Path):
    """Orthanc 1.10 with its DICOMweb plugin, its own config, storage and free ports; stopped after.

    Orthanc 1.10 has no setting for the address it binds: its config refuses remote HTTP access and any DICOM
    peer that is not a loopback modality listed here."""
    http, dicom = free_port(), free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    conf = {"Name": "deidpipe-test", "StorageDirectory": str(tmp / "db"), "IndexDirectory": str(tmp / "db"),
            "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True},
            "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False, "DicomCheckModalityHost": True,
            "DicomModalities": {"node": {"AET": "DEIDPIPE", "Host": "127.0.0.1", "Port": 1}},
            "SaveJobs": False, "StableAge": 1, "HttpTimeout": 30, "DicomScpTimeout": 30}
    (tmp / "orthanc.json").write_text(json.dumps(conf))
    proc = subprocess.Popen(["timeout", "600", ORTHANC, str(tmp / "orthanc.json")], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(http, timeout=60)
        wait_port(dicom, timeout=60)
        yield http, dicom
    finally:
        stop(proc)


def _orthanc_get(http: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=30) as rsp:  # noqa: S310 - loopback
        return rsp.read()


@pytest.mark.skipif(not Path(ORTHANC).exists() or not Path(DICOMWEB_PLUGIN).exists(), reason="no Orthanc")
@pytest.mark.parametrize("kind", ["dicom", "stow"])
def test_orthanc_destination(tmp_path, small, kind):
    archive, _, expected = small
    with orthanc(tmp_path / "orthanc") as (http, dicom):
        dest = parse_dicom_dest(f"ORTHANC@127.0.0.1:{dicom}", "pacs") if kind == "dicom" else \
            Destination("web", "stow", url=f"http://127.0.0.1:{http}/dicom-web")
        cfg = config(tmp_path, dest)
        with Node(cfg, KEY, HEADER_POLICY) as node:
            assert storescu(node.port, archive).returncode == 0
            assert node.wait_idle(120)
        ids = json.loads(_orthanc_get(http, "/instances"))
        assert len(ids) == len(expected)
        got = {}
        for i in ids:
            tags = json.loads(_orthanc_get(http, f"/instances/{i}/simplified-tags"))
            got[tags["SOPInstanceUID"]] = _orthanc_get(http, f"/instances/{i}/file")
    assert set(got) == set(expected)
    if kind == "dicom":  # C-STORE carries the data set as it is: Orthanc keeps it byte for byte
        assert all(dataset_part(got[u]) == dataset_part(expected[u]) for u in expected)
    assert queue_status(cfg.queue)["quarantined"] == 0


def test_status_command(tmp_path, small):
    archive, _, expected = small
    cfg = config(tmp_path, parse_dicom_dest(f"DEST@127.0.0.1:{free_port()}", "pacs"))
    with Node(cfg, KEY, HEADER_POLICY) as node:
        assert storescu(node.port, archive).returncode == 0
        end = time.monotonic() + 60
        while time.monotonic() < end and not (queue_status(cfg.queue)["retries"] > 0 and queue_status(
                cfg.queue)["destinations"]["pacs"]["pending"] == len(expected)):
            time.sleep(0.1)
        out = run_cli("serve", "--status", "--json", "--queue", str(cfg.queue), text=True, timeout=120)
    st = json.loads(out.stdout)
    assert st["node_running"] is True
    assert st["depth"] == len(expected) and st["retries"] > 0 and st["oldest_age_s"] > 0
    assert st["destinations"]["pacs"]["pending"] == len(expected)


def test_head_series_defaced_after_quiet_period(tmp_path):
    """A head MR series is held until no object of it has come for the quiet period, then defaced whole: the
    same bytes as ``run`` (policy: deface auto, pixel text off)."""
    from deidpipe.synth.heads import write_heads

    write_heads(tmp_path / "heads", count=1, seed=3)
    src = tmp_path / "heads" / "dicom"
    policy = Policy(pixels="off")
    expected = reference(src, tmp_path, policy)
    cfg = ServeConfig(queue=tmp_path / "queue", port=0, quiet_period_s=3.0,
                      destinations=(Destination("copy", "folder", path=tmp_path / "copy"),))
    with Node(cfg, KEY, policy) as node:
        assert storescu(node.port, src).returncode == 0
        time.sleep(1.0)
        held = len(list((cfg.queue / "processing").glob("*.dcm")))
        assert held == len(expected) and not list((tmp_path / "copy").rglob("*.dcm"))  # waiting, not split
        assert node.wait_idle(300)
    assert {p.name[:-4]: p.read_bytes() for p in (tmp_path / "copy").rglob("*.dcm")} == expected
    audit = [json.loads(x) for x in (cfg.queue / "audit.jsonl").read_text().splitlines()]
    assert all("deface" in json.loads(a["timings_ms"]) for a in audit if a.get("event") == "processed")


def test_private_sop_class_and_compressed_syntax_beside_uncompressed_are_accepted(tmp_path):
    """Issue 19: a private storage SOP class (a vendor's, here Siemens' CSA Non-Image) is accepted, and a
    context that proposes the object's own compressed syntax beside uncompressed ones gets the compressed one (as
    ``storescp +xa``), so a sender that cannot decompress (pynetdicom) still delivers. Both arrive as ``run``
    writes them. A standard SOP class that is not storage (C-FIND) is still refused."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    src = tmp_path / "src"
    src.mkdir()
    private = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    private.SOPClassUID = private.file_meta.MediaStorageSOPClassUID = "1.3.12.2.1107.5.9.1"
    private.save_as(src / "private.dcm")
    jpeg = src / "jpeg.dcm"
    jpeg.write_bytes(Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")).read_bytes())
    expected = reference(src, tmp_path, HEADER_POLICY)
    assert len(expected) == 2

    cfg = config(tmp_path, Destination("copy", "folder", path=tmp_path / "copy"))
    with Node(cfg, KEY, HEADER_POLICY) as node:
        ae = AE(ae_title="SENDER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        uncompressed = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
        ae.add_requested_context("1.3.12.2.1107.5.9.1", uncompressed)
        sc = str(pydicom.dcmread(jpeg, stop_before_pixels=True).SOPClassUID)
        ae.add_requested_context(sc, [*uncompressed, "1.2.840.10008.1.2.4.50"])  # the sender's own order
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = associate(ae, "127.0.0.1", node.port, ae_title="DEIDPIPE")
        assert assoc.is_established
        try:
            accepted = {str(cx.abstract_syntax): str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
            assert accepted == {"1.3.12.2.1107.5.9.1": "1.2.840.10008.1.2.1", sc: "1.2.840.10008.1.2.4.50"}
            assert [int(assoc.send_c_store(f).Status) for f in (src / "private.dcm", jpeg)] == [0, 0]
        finally:
            assoc.release()
        assert node.wait_idle(60)
    assert {p.name[:-4]: p.read_bytes() for p in (tmp_path / "copy").rglob("*.dcm")} == expected


def test_object_the_pipeline_cannot_deidentify_is_quarantined_never_forwarded(tmp_path):
    """Fail closed: an object that passes every check made before the answer (so it is queued, Success) but that
    a stage refuses (here: a JPEG Baseline frame that is not a JPEG stream, found when the header stage cleans
    the stream's metadata) gets a quarantine record like run's and never reaches a destination. What the SCP
    refuses for what the object is (no SOP Class UID, short Pixel Data) is tested in tests/serve/test_scp.py."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xfe\x00\x10" + b"not a JPEG stream" * 5 + b"\x00"])
    bad = tmp_path / "bad-stream.dcm"
    ds.save_as(bad)
    cfg = config(tmp_path, Destination("copy", "folder", path=tmp_path / "copy"))
    with Node(cfg, KEY, HEADER_POLICY) as node:
        assert pynetdicom_store(node.port, [bad]) == [0]
        assert node.wait_idle(60)
    assert not list((tmp_path / "copy").rglob("*.dcm"))
    records = [json.loads(p.read_text()) for p in (cfg.queue / "quarantine").glob("*.json")]
    assert len(records) == 1
    assert records[0]["stage"] == "header" and "JPEG" in records[0]["reason"]
    assert set(records[0]) >= {"object_id", "input_path_hash", "content_hash", "stage", "reason"}
    assert not list((cfg.queue / "out").rglob("*.dcm"))
