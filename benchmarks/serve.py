"""``deidpipe serve`` on loopback beside the raw network ceiling and Orthanc's anonymise-and-forward.

    python benchmarks/serve.py [--small 1000] [--large 200] [--repeat 1] [--associations 1] [--nagle] [--keep DIR]

Two corpora from the synth archive (about 10 objects a patient): ``--small`` objects of 16x16 pixels and
``--large`` of 512x512. For each, three ways of getting every object from ``storescu`` to a ``storescp``
(dcmtk, ``--fork``), timed from storescu's start until storescp has written every object (``--associations N``:
N storescu processes at once, each sending its share of the patients on an association of its own):

1. ``storescu -> storescp``: the raw ceiling.
2. ``storescu -> deidpipe serve -> storescp``: the node (a ``deidpipe serve`` process, header stage only:
   ``pixels: off``, ``deface: off``), every object durably queued before Success, de-identified, forwarded
   over one reused association.
3. ``storescu -> Orthanc -> storescp``: Orthanc 1.10 stores, then its REST API anonymises each study
   (``POST /studies/{id}/anonymize``) and sends the new study (``POST /modalities/dest/store``).

Every dcmtk peer gets ``TCP_NODELAY=1`` (``--nagle``: not, as dcmtk runs by default); every server binds
127.0.0.1 (Orthanc 1.10 has no bind setting: it refuses remote HTTP and unknown DICOM peers). Peers and node are
warmed with one object before the clock starts.
Prints objects/s, MB/s (input bytes) and the ratios (targets: serve >= 50% of raw for 512x512, serve faster
than Orthanc), and the node's receive path alone: storescu's own time, until every object was answered Success
(durably queued, group-committed across associations).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from deidpipe.serve.net import free_port, wait_port

#: dcmtk's peers turn Nagle's algorithm off only when TCP_NODELAY is in their environment; ``--nagle`` leaves it
#: on, as an archive configured by default would have it.
ENV = dict(os.environ, TCP_NODELAY="1")
KEY = b"benchmark-secret-0123456789abcdef"
#: The node's receive path, round by round: seconds until the senders had Success for every object (each durably
#: queued, nothing processed yet necessarily); printed under each table beside the raw ceiling.
RECEIVED: list[float] = []
ORTHANC = "/usr/sbin/Orthanc"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _groups(src: Path, n: int) -> list[list[str]]:
    """The corpus's patient folders dealt round-robin into ``n`` groups (each a list of folders)."""
    folders = sorted(str(p) for p in src.iterdir() if p.is_dir())
    return [g for g in (folders[i::n] for i in range(n)) if g]


def storescu(port: int, src: Path, aec: str, associations: int = 1) -> None:
    """Send every object under ``src`` with dcmtk's storescu: ``associations`` processes at once, each with its
    share of the patient folders on one association of its own."""
    procs = [subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", aec, "+sd", "+r", "+sp", "*.dcm", "127.0.0.1",
                               str(port), *group], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for group in (_groups(src, associations) if associations > 1 else [[str(src)]])]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=1800)
            if proc.returncode:
                raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-300:]}")
    finally:
        for proc in procs:  # one failed: the others are not left sending
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait_count(folder: Path, n: int, timeout: float = 1800) -> None:
    end = time.monotonic() + timeout
    while count_files(folder) < n:
        if time.monotonic() > end:
            raise TimeoutError(f"{count_files(folder)} of {n} objects arrived")
        time.sleep(0.02)


class StoreSCP:
    def __init__(self, out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)  # storescp names files by SOP instance: a fresh folder each time
        self.out = out
        out.mkdir(parents=True)
        self.port = free_port()
        self.proc = subprocess.Popen(["timeout", "3600", "storescp", "-aet", "DEST", "-od", str(out), "--fork",
                                      str(self.port)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=60.0)

    def reset(self) -> int:
        """What has arrived so far, once nothing more is arriving (the warm-up's objects)."""
        last = -1
        while (now := count_files(self.out)) != last:
            last = now
            time.sleep(0.3)
        return last

    def close(self) -> None:
        stop(self.proc)


def build(root: Path, objects: int, size: int) -> tuple[Path, int, int]:
    from deidpipe.synth import generate_archive

    src = root / f"corpus-{size}"
    generate_archive(src, patients=max(1, round(objects / 10)), rows=size, cols=size, seed=size,
                         real_world=False)
    (src / "answer_key.json").unlink(missing_ok=True)
    files = list(src.rglob("*.dcm"))
    return src, len(files), sum(f.stat().st_size for f in files)


def warm_object(root: Path) -> Path:
    from deidpipe.synth import generate_archive

    src = root / "warm"
    if not src.exists():
        generate_archive(src, patients=1, seed=99, real_world=False)
        (src / "answer_key.json").unlink(missing_ok=True)
    return src


# -- the three ways -----------------------------------------------------------------------------------------------
def raw(src: Path, n: int, work: Path, associations: int = 1) -> float:
    scp = StoreSCP(work / "raw-out")
    try:
        storescu(scp.port, warm_object(work), "DEST")
        base = scp.reset()
        t0 = time.perf_counter()
        storescu(scp.port, src, "DEST", associations)
        wait_count(scp.out, base + n)
        return time.perf_counter() - t0
    finally:
        scp.close()


def serve(src: Path, n: int, work: Path, associations: int = 1) -> float:
    scp = StoreSCP(work / "serve-out")
    queue = work / "serve-queue"
    shutil.rmtree(queue, ignore_errors=True)
    (work / "key").write_bytes(KEY)
    (work / "policy.yaml").write_text("pixels: off\ndeface: off\n")
    port = free_port()
    cmd = [sys.executable, "-m", "deidpipe.cli", "serve", "--queue", str(queue), "--port", str(port),
           "--dest-dicom", f"DEST@127.0.0.1:{scp.port}", "--policy", str(work / "policy.yaml")]
    node = subprocess.Popen(cmd, env=dict(ENV, DEIDPIPE_KEY_FILE=str(work / "key")), stdout=subprocess.DEVNULL,
                            stderr=open(work / "serve.log", "ab"))  # noqa: SIM115
    try:
        wait_port(port, timeout=60.0)
        warm = warm_object(work)
        storescu(port, warm, "DEIDPIPE")
        wait_count(scp.out, count_files(warm))
        base = scp.reset()
        t0 = time.perf_counter()
        storescu(port, src, "DEIDPIPE", associations)
        RECEIVED.append(time.perf_counter() - t0)  # every object answered Success: durably queued
        wait_count(scp.out, base + n)
        return time.perf_counter() - t0
    finally:
        stop(node)
        scp.close()


def _rest(http: int, path: str, body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{http}{path}", data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=1800) as rsp:  # noqa: S310 - loopback
        return json.loads(rsp.read() or b"null")


def orthanc(src: Path, n: int, work: Path, associations: int = 1) -> float:
    scp = StoreSCP(work / "orthanc-out")
    odir = work / "orthanc"
    shutil.rmtree(odir, ignore_errors=True)
    odir.mkdir()
    http, dicom = free_port(), free_port()
    conf = {"Name": "bench", "StorageDirectory": str(odir / "db"), "IndexDirectory": str(odir / "db"),
            "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True,
            "DicomModalities": {"bench": {"AET": "BENCH", "Host": "127.0.0.1", "Port": 1},
                                "dest": {"AET": "DEST", "Host": "127.0.0.1", "Port": scp.port}},
            "SaveJobs": False, "ConcurrentJobs": 2}
    (odir / "orthanc.json").write_text(json.dumps(conf))
    proc = subprocess.Popen(["timeout", "3600", ORTHANC, str(odir / "orthanc.json")], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def anonymise_and_forward() -> None:
        for study in _rest(http, "/studies"):  # type: ignore[union-attr]
            new = _rest(http, f"/studies/{study}/anonymize", {"Force": True, "KeepPrivateTags": False})
            _rest(http, "/modalities/dest/store", {"Resources": [new["ID"]], "Synchronous": True})  # type: ignore[index]

    try:
        wait_port(http, timeout=60.0)
        wait_port(dicom, timeout=60.0)
        storescu(dicom, warm_object(work), "ORTHANC")
        anonymise_and_forward()
        for study in _rest(http, "/studies"):  # type: ignore[union-attr]
            urllib.request.urlopen(urllib.request.Request(  # noqa: S310 - loopback
                f"http://127.0.0.1:{http}/studies/{study}", method="DELETE"), timeout=60).read()
        base = scp.reset()
        t0 = time.perf_counter()
        storescu(dicom, src, "ORTHANC", associations)
        anonymise_and_forward()
        wait_count(scp.out, base + n)
        return time.perf_counter() - t0
    finally:
        stop(proc)
        scp.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--skip-orthanc", action="store_true")
    ap.add_argument("--nagle", action="store_true",
                    help="dcmtk's peers with Nagle's algorithm on (their default, no TCP_NODELAY)")
    ap.add_argument("--associations", type=int, default=1,
                    help="storescu processes sending at once, each on its own association (issue 19: 1 and 4)")
    args = ap.parse_args()
    associations = max(1, args.associations)
    if args.nagle:
        ENV.pop("TCP_NODELAY", None)
    work = args.keep or Path(tempfile.mkdtemp(prefix="deidpipe-serve-bench-", dir=os.getcwd() + "/build")
                             if Path("build").is_dir() else tempfile.mkdtemp(prefix="deidpipe-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ways = [("storescu -> storescp (raw)", raw), ("storescu -> deidpipe serve -> storescp", serve)]
    if not args.skip_orthanc and Path(ORTHANC).exists():
        ways.append(("storescu -> Orthanc anonymise+forward -> storescp", orthanc))
    try:
        for label, count, size in (("small (16x16)", args.small, 16), ("512x512", args.large, 512)):
            if not count:
                continue
            src, n, nbytes = build(work, count, size)
            print(f"\n{label}: {n} objects, {nbytes / 1e6:.1f} MB, {associations} association(s) at once"
                  + (", dcmtk peers with Nagle on" if "TCP_NODELAY" not in ENV else ""))
            print(f"| way | s (median of {args.repeat}) | objects/s | MB/s | vs raw | serve vs this |")
            print("|---|---:|---:|---:|---:|---:|")
            times = {}
            RECEIVED.clear()
            for name, fn in ways:
                times[name] = statistics.median(fn(src, n, work, associations) for _ in range(args.repeat))
            base, mine = times[ways[0][0]], times[ways[1][0]]
            for name, t in times.items():
                print(f"| {name} | {t:.2f} | {n / t:.1f} | {nbytes / 1e6 / t:.1f} | {base / t:.2f} | "
                      f"{t / mine:.2f}x |")
            received, rounds = statistics.median(RECEIVED), ", ".join(f"{r:.2f}" for r in RECEIVED)
            print(f"\nthe node's receive path (storescu's own time: every object answered Success, durably queued): "
                  f"{received:.2f} s, {base / received:.0%} of raw (rounds {rounds})")
            sys.stdout.flush()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
