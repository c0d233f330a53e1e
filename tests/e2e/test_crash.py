"""Crash consistency: kill -9 at several points, damage what the killed run left, resume, and get a clean run.

A real subprocess runs the pipeline and is killed with SIGKILL (with its workers) once its journal holds N lines:
a watcher thread in it kills at an arbitrary instant (between an output's link and its journal line, between a
quarantine record and its line, inside a write), and a count of results seen kills it for certain before it could
finish. Then the test does what a careless steward or a power cut would: deletes and truncates finished outputs,
deletes and garbles quarantine records, tears the journal's last line, leaves temporaries. ``--resume`` must then
equal a clean run: the same output tree byte for byte (quarantine records included), and per object the same
status, output path and output hash in the audit.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from deidpipe.dicomio import read_dataset
from deidpipe.keys import ProjectKey
from deidpipe.pipeline import run
from deidpipe.pipeline.state import default_state_dir
from deidpipe.policy import Policy
from deidpipe.synth import generate_archive
from tests.helpers import REPO, cli_command

SECRET = "crash-test-secret-0123456789abcdef"
#: Header stage only: this test is about files and the journal, and the pixel stage's OCR start-up would cost
#: more than the rest of the test in every killed child.
POLICY = Policy.basic(pixels="off")

#: Runs in the child: the pipeline, a watcher that kills the process group once the journal has ``lines`` lines,
#: and a backstop that kills it two results later whatever the watcher's timing (so it never finishes).
KILLED_RUN = """
import os, signal, sys, threading, time
from pathlib import Path
from deidpipe.keys import ProjectKey
from deidpipe.pipeline import iter_run
from deidpipe.pipeline.state import default_state_dir
from deidpipe.policy import Policy

src, dst, lines, workers, secret = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
journal = default_state_dir(dst) / "journal.jsonl"

def kill():
    os.killpg(0, signal.SIGKILL)

def watch():
    while True:
        try:
            if journal.read_bytes().count(b"\\n") >= lines:
                kill()
        except FileNotFoundError:
            pass
        time.sleep(0.0005)

seen = 0
for _ in iter_run(src, dst, Policy.basic(pixels="off"), key=ProjectKey(secret.encode()), workers=workers, chunk=4):
    seen += 1
    if seen == 1:  # after the pool has forked its workers: a thread before that would change how they start
        threading.Thread(target=watch, daemon=True).start()
    if seen >= lines + 2:
        kill()
sys.exit(3)
"""


@pytest.fixture(scope="module")
def key() -> ProjectKey:
    return ProjectKey(SECRET.encode())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synth archive plus inputs that are quarantined at each stage: not DICOM and cut in the preamble (index),
    cut inside Pixel Data (read or pixel checks), a different object under a SOP Instance UID already used
    (write conflict)."""
    src = tmp_path_factory.mktemp("crash") / "src"
    answer = generate_archive(src, patients=5, seed=11, real_world=False)
    (src / "answer_key.json").unlink()
    files = sorted(answer.files())
    bad = src / "zz_bad"
    bad.mkdir()
    (bad / "notes.txt").write_text("not DICOM at all\n")
    first = (src / files[0]).read_bytes()
    (bad / "cut_early.dcm").write_bytes(first[:100])
    (bad / "cut_late.dcm").write_bytes(first[: len(first) - 40])
    changed = bytearray((src / files[1]).read_bytes())
    changed[-1] ^= 0xFF  # the last pixel byte: same SOP instance, different object
    (bad / "conflict.dcm").write_bytes(bytes(changed))
    return src


@pytest.fixture(scope="module")
def clean(source: Path, key: ProjectKey, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict]:
    dst = tmp_path_factory.mktemp("clean") / "out"
    report = run(source, dst, POLICY, key=key, workers=1)
    assert report.quarantined >= 3 and report.written > 20
    return tree(dst), audit_rows(dst)


def tree(dst: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under DST but the bookkeeping (quarantine records included)."""
    out = {}
    for p in sorted(dst.rglob("*")):
        rel = p.relative_to(dst).as_posix()
        if not p.is_dir() and not rel.startswith("_deidpipe/"):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def audit_rows(dst: Path) -> dict[str, tuple[Any, ...]]:
    cols = ["status", "output", "out_hash", "bytes_out", "stage", "reason", "content_hash"]
    frame = pl.read_parquet(dst / "_deidpipe" / "audit.parquet")
    return {row[0]: row[1:] for row in frame.select(["object_id", *cols]).iter_rows()}


def kill_at(source: Path, dst: Path, lines: int, workers: int) -> list[dict[str, Any]]:
    """Run the pipeline in a child and SIGKILL it (and its workers) once the journal has ``lines`` lines;
    returns the journal's complete records."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(source), str(dst), str(lines), str(workers), SECRET],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("the killed run hung")
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
    journal = default_state_dir(dst) / "journal.jsonl"
    text = journal.read_text() if journal.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def damage(dst: Path, records: list[dict[str, Any]]) -> dict[str, int]:
    """What a careless steward or a power cut leaves: finished outputs deleted and truncated, quarantine records
    deleted and garbled, the journal's last line torn (its object's files present but unrecorded), temporaries
    left behind. Returns what was done, by kind."""
    journal = default_state_dir(dst) / "journal.jsonl"
    data = journal.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(data[: cut + (len(data) - cut) // 2])  # the last line torn in the middle
    kept = records[:-1]
    written = sorted({r["output"] for r in kept if r["status"] == "written"})
    quarantined = sorted(r["object_id"] for r in kept if r["status"] == "quarantined")
    done = {"deleted": 0, "truncated": 0, "record_deleted": 0, "record_garbled": 0}
    for i, rel in enumerate(written[:6]):
        target = dst / rel
        if i % 2 == 0:
            target.unlink()
            done["deleted"] += 1
        else:
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
            done["truncated"] += 1
    for i, oid in enumerate(quarantined[:2]):
        record = dst / "quarantine" / f"{oid}.json"
        if i == 0:
            record.unlink()
            done["record_deleted"] += 1
        else:
            record.write_text("{")
            done["record_garbled"] += 1
    (dst / "_deidpipe" / "tmp").mkdir(parents=True, exist_ok=True)
    (dst / "_deidpipe" / "tmp" / "deadbeef.1234.tmp").write_bytes(b"\0" * 100)
    (dst / "quarantine").mkdir(exist_ok=True)
    (dst / "quarantine" / ".deadbeef.1234.tmp").write_text("{")
    return done


@pytest.mark.parametrize(("share", "workers"), [(0.0, 1), (0.1, 2), (0.5, 1), (0.9, 2)],
                         ids=["after-index", "10%", "50%", "90%"])
def test_kill_9_damage_then_resume_equals_a_clean_run(share, workers, source, key, clean, tmp_path):
    ref_tree, ref_audit = clean
    total = len(ref_audit)
    dst = tmp_path / "out"
    # 1 line: the batch the plan decides right after the index (index failures, duplicates), before any task.
    # The backstop kills 2 results later, when a batch of at most 4 (chunk) may have been journaled: room for 7.
    lines = min(max(1, int(total * share)), total - 7)
    records = kill_at(source, dst, lines, workers)
    assert lines <= len(records) < total
    for p in dst.rglob("*.dcm"):  # whatever has a name in the tree is a complete object, journaled or not
        if "_deidpipe" not in p.relative_to(dst).parts:
            read_dataset(p)
    done = damage(dst, records)
    if share >= 0.5:
        assert done["deleted"] and done["truncated"], done
    if share == 0.0:
        assert done["record_deleted"], done

    with pytest.raises(Exception, match="--resume"):
        run(source, dst, POLICY, key=key, workers=1)
    resumed = run(source, dst, POLICY, key=key, workers=1, resume=True)
    assert resumed.objects == total
    assert resumed.resumed <= len(records) - 1 - done["deleted"] - done["truncated"]
    assert tree(dst) == ref_tree
    assert audit_rows(dst) == ref_audit
    assert not any((dst / "_deidpipe" / "tmp").glob("*"))
    assert not (dst / "_deidpipe" / "tmp").exists()  # the temporary folder goes at the end of a run

    again = run(source, dst, POLICY, key=key, workers=1, resume=True)  # nothing left to do
    assert again.resumed == total and tree(dst) == ref_tree


def test_resume_removes_only_the_recorded_output_inside_dst(source, key, clean, tmp_path):
    """A journal is data: a line that names a path outside DST, or the bookkeeping, makes its object be done
    again, and nothing but the recorded output inside DST is ever removed."""
    ref_tree, ref_audit = clean
    dst = tmp_path / "out"
    run(source, dst, POLICY, key=key, workers=1)
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"keep me")
    journal = default_state_dir(dst) / "journal.jsonl"
    lines = journal.read_text().splitlines()
    forged = []
    for line in lines:
        rec = json.loads(line)
        if rec["status"] == "written" and len(forged) < 3:
            rec["output"] = ["../outside.dcm", "_deidpipe/audit.parquet", "/etc/hostname"][len(forged)]
            forged.append(rec["object_id"])
        lines[lines.index(line)] = json.dumps(rec, sort_keys=True)
    journal.write_text("\n".join(lines) + "\n")
    resumed = run(source, dst, POLICY, key=key, workers=1, resume=True)
    assert resumed.processed == 3
    assert outside.read_bytes() == b"keep me"
    assert json.loads((default_state_dir(dst) / "run.json").read_text())["complete"] is True
    assert (dst / "_deidpipe" / "audit.parquet").is_file()
    assert tree(dst) == ref_tree
    assert audit_rows(dst) == ref_audit


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_workers_die_with_a_killed_run(source, tmp_path):
    """Only the run's own process is killed (an OOM kill, a CI timeout): its pool workers, which wait on their
    task queue forever, must not live on holding what they loaded."""
    dst = tmp_path / "out"
    proc = subprocess.Popen(
        cli_command("run", str(source), str(dst), "--workers", "2", "-q"),
        cwd=REPO, env=dict(os.environ, DEIDPIPE_KEY=SECRET), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
            workers = {c for c in _children(proc.pid) if _alive(c)}
            time.sleep(0.05)
        assert len(workers) >= 2, "the run did not start its workers"
        proc.kill()  # the run only, not its process group
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "pool workers outlived their run"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
