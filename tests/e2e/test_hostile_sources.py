"""Hostile and broken sources (issue 9, cases 5 and 6): every entry of a folder, zip or tar is accounted for.

A folder with symbolic link loops, a dangling link, a link out of the tree, a FIFO, a socket, a device file and
unreadable entries is listed without an error, nothing in it is opened that could block, and each entry has one
audit row with a fixed reason. Archives with path traversal, absolute names, links, special members, duplicate
names and bombs: every member is processed, skipped or quarantined with its reason, and nothing is written
outside DST, with the pseudonym layout and with ``keep_paths``.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import stat
import tarfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydicom.data import get_testdata_file

from deidpipe.keys import ProjectKey
from deidpipe.pipeline import items as items_mod
from deidpipe.pipeline import run
from deidpipe.pipeline.index import object_id
from deidpipe.pipeline.source import (
    REASON_ABSOLUTE,
    REASON_BROKEN_ARCHIVE,
    REASON_CORRUPT_MEMBER,
    REASON_DEVICE,
    REASON_DUPLICATE,
    REASON_FIFO,
    REASON_HARDLINK_MEMBER,
    REASON_LINK_DANGLING,
    REASON_LINK_FOLDER,
    REASON_LINK_LOOP,
    REASON_LINK_OUTSIDE,
    REASON_RATIO,
    REASON_SOCKET,
    REASON_SYMLINK_MEMBER,
    REASON_TOO_LARGE,
    REASON_TRAVERSAL,
    REASON_UNREADABLE_FOLDER,
    REJECTED_PREFIX,
    detect,
    iter_items,
)
from deidpipe.pipeline.state import default_state_dir
from tests.helpers import run_cli

SECRET = "hostile-sources-secret-0123456789abcdef"
CT = Path(get_testdata_file("CT_small.dcm")).read_bytes()
MR = Path(get_testdata_file("MR_small.dcm")).read_bytes()
MiB = 1024**2
#: What a traversal member would become if anything extracted it (checked to be absent after every run).
ESCAPE_NAME = "x.dcm"

# (status, stage, reason) of an entry; reason None: any (a written object has none).
Expected = dict[str, tuple[str, str | None, str | None]]


@pytest.fixture
def key() -> ProjectKey:
    return ProjectKey(SECRET.encode())


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Turn a hang (an opened FIFO blocks) into a failure instead of a stuck test run."""

    def fail(signum: int, frame: Any) -> None:
        raise TimeoutError("the run hung")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def snapshot(root: Path, excludes: tuple[Path, ...]) -> dict[str, tuple[int, int, int]]:
    """Every entry below ``root`` but ``excludes`` (links not followed): kind, size and mtime (not of folders:
    making DST changes its parent's; an entry added anywhere shows as a new key)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if any(Path(dirpath) == ex or ex in Path(dirpath).parents for ex in excludes):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p in excludes:
                continue
            st = p.lstat()
            kind = stat.S_IFMT(st.st_mode)
            out[str(p.relative_to(root))] = (kind, 0 if kind == stat.S_IFDIR else st.st_size,
                                             0 if kind == stat.S_IFDIR else st.st_mtime_ns)
    return out


def outside_state(tmp_path: Path, dst: Path) -> tuple[Any, ...]:
    """What a write outside DST (and its state folder beside it) would change: the test folder, the names beside
    it, and an absolute target."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    return (snapshot(tmp_path, (dst, default_state_dir(dst))), sorted(p.name for p in tmp_path.parent.iterdir()),
            Path("/abs").exists())


def audit_of(dst: Path) -> dict[str, dict[str, Any]]:
    frame = pl.read_parquet(dst / "_deidpipe" / "audit.parquet")
    rows = {r["object_id"]: r for r in frame.iter_rows(named=True)}
    assert len(rows) == frame.height
    return rows


def check_accounted(dst: Path, key: ProjectKey, listed: list[str], expected: Expected) -> dict[str, Any]:
    """One audit row per listed entry, each as expected; the audit names no input path."""
    audit = audit_of(dst)
    assert sorted(listed) == sorted(expected)
    assert set(audit) == {object_id(key, rel) for rel in listed}
    for rel, (status, stage, reason) in expected.items():
        row = audit[object_id(key, rel)]
        assert (row["status"], row["stage"] if stage else None) == (status, stage), rel
        if reason is not None:
            assert row["reason"].startswith(reason), (rel, row["reason"])
    # Hashes, statuses and fixed reasons only ("output" mirrors the input path under keep_paths, by design).
    text = repr([{k: v for k, v in r.items() if k != "output"} for r in audit.values()])
    for name in listed:
        if not name.startswith(REJECTED_PREFIX) and any(c in name for c in "._/"):  # "sock" is in "socket"
            assert name not in text
    assert ESCAPE_NAME not in text and "/abs" not in text
    manifest = pl.read_parquet(default_state_dir(dst) / "manifest.parquet")
    assert sorted(manifest["path"]) == sorted(listed)
    return audit


def dcm_outputs(dst: Path) -> list[str]:
    return sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.dcm") if "_deidpipe" not in p.parts)


# -- a hostile folder -----------------------------------------------------------------------------------------
def hostile_folder(root: Path, outside: Path) -> Expected:
    """Build the tree; returns what each listed entry must become."""
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "elsewhere.dcm").write_bytes(MR)
    (root / "ct.dcm").write_bytes(CT)
    (root / "sub" / "mr.dcm").write_bytes(MR)
    (root / "ct_link.dcm").symlink_to("ct.dcm")  # a link to a file inside the tree still works
    (root / "loop_a").symlink_to("loop_b")
    (root / "loop_b").symlink_to("loop_a")
    (root / "sub" / "up").symlink_to("..")
    (root / "sub_link").symlink_to("sub")
    (root / "dangling.dcm").symlink_to("nowhere.dcm")
    (root / "out_file.dcm").symlink_to(outside / "elsewhere.dcm")
    (root / "out_folder").symlink_to(outside)
    os.mkfifo(root / "pipe.dcm")
    expected: Expected = {
        "ct.dcm": ("written", None, None),
        "ct_link.dcm": ("duplicate", None, None),  # same SOP instance, same bytes as ct.dcm
        "sub/mr.dcm": ("written", None, None),
        "loop_a": ("skipped", "source", REASON_LINK_LOOP),
        "loop_b": ("skipped", "source", REASON_LINK_LOOP),
        "sub/up": ("skipped", "source", REASON_LINK_LOOP),
        "sub_link": ("skipped", "source", REASON_LINK_FOLDER),
        "dangling.dcm": ("quarantined", "source", REASON_LINK_DANGLING),  # a missing input
        "out_file.dcm": ("quarantined", "source", REASON_LINK_OUTSIDE),
        "out_folder": ("skipped", "source", REASON_LINK_OUTSIDE),
        "pipe.dcm": ("skipped", "source", REASON_FIFO),
    }
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(root / "sock"))
        expected["sock"] = ("skipped", "source", REASON_SOCKET)
    except OSError:  # a path too long for AF_UNIX
        pass
    finally:
        sock.close()  # the socket file stays
    try:
        os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        expected["null"] = ("skipped", "source", REASON_DEVICE)
    except (PermissionError, OSError):  # needs CAP_MKNOD
        pass
    if os.geteuid() != 0:  # root reads through mode 000
        (root / "locked.dcm").write_bytes(CT)
        (root / "locked.dcm").chmod(0)
        expected["locked.dcm"] = ("quarantined", "index", "cannot be read")
        (root / "closed").mkdir()
        (root / "closed" / "hidden.dcm").write_bytes(MR)
        (root / "closed").chmod(0)
        expected["closed"] = ("quarantined", "source", REASON_UNREADABLE_FOLDER)
    return expected


def unlock(root: Path) -> None:
    for name in ("locked.dcm", "closed"):
        if (root / name).exists():
            (root / name).chmod(0o700)


def test_hostile_folder_every_entry_accounted_for(tmp_path: Path, key: ProjectKey) -> None:
    root = tmp_path / "src"
    expected = hostile_folder(root, tmp_path / "outside")
    dst = tmp_path / "out" / "dst"
    try:
        with deadline(20):
            listed = [i.relpath for i in iter_items(detect(root))]
        before = outside_state(tmp_path, dst)
        with deadline(120):
            report = run(root, dst, key=key, workers=1)
        assert outside_state(tmp_path, dst) == before
    finally:
        unlock(root)
    check_accounted(dst, key, listed, expected)
    assert report.objects == len(expected)
    assert report.written == 2 and report.duplicates == 1
    assert report.quarantined == sum(1 for s, _, _ in expected.values() if s == "quarantined")
    assert len(dcm_outputs(dst)) == 2


def test_hostile_folder_via_cli(tmp_path: Path, key: ProjectKey) -> None:
    """The command line finishes without a traceback, exits 1 (the link out of the tree is quarantined) and
    writes the good files; with --allow-quarantine it would exit 0."""
    root = tmp_path / "src"
    expected = hostile_folder(root, tmp_path / "outside")
    dst = tmp_path / "out" / "dst"
    try:
        listed = [i.relpath for i in iter_items(detect(root))]
        before = outside_state(tmp_path, dst)
        proc = run_cli("run", str(root), str(dst), "--workers", "1", "--quiet", key=SECRET, cwd=tmp_path, timeout=180)
        assert outside_state(tmp_path, dst) == before
    finally:
        unlock(root)
    assert proc.returncode == 1, proc.stderr.decode(errors="replace")
    assert b"Traceback" not in proc.stderr
    for name in ("loop_a", "pipe.dcm", "elsewhere", "out_file"):
        assert name.encode() not in proc.stdout + proc.stderr
    check_accounted(dst, key, listed, expected)
    assert len(dcm_outputs(dst)) == 2


# -- hostile archives -----------------------------------------------------------------------------------------
def _zip_info(name: str, mode: int = stat.S_IFREG | 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _shrink_declared_size(data: bytearray, name: str, size: int) -> None:
    """Make a zip member declare fewer bytes than it inflates to, in its local header and the central directory."""
    raw = name.encode()
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        local = zf.getinfo(name).header_offset
    data[local + 22:local + 26] = size.to_bytes(4, "little")
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        n = int.from_bytes(data[pos + 28:pos + 30], "little")
        if data[pos + 46:pos + 46 + n] == raw:
            data[pos + 24:pos + 28] = size.to_bytes(4, "little")
        pos = data.find(b"PK\x01\x02", pos + 4)


def hostile_zip(path: Path) -> Expected:
    """Members in this order; a rejected one is listed as !member//<position>."""
    members: list[tuple[zipfile.ZipInfo | str, bytes]] = [
        ("good/ct.dcm", CT),  # 0
        ("../x.dcm", CT),  # 1
        ("/abs/x.dcm", CT),  # 2
        ("a/../../x.dcm", CT),  # 3
        ("..\\x.dcm", CT),  # 4
        ("C:/x.dcm", CT),  # 5
        (_zip_info("link.dcm", stat.S_IFLNK | 0o777), b"../../x.dcm"),  # 6
        (_zip_info("fifo.dcm", stat.S_IFIFO | 0o644), b""),  # 7
        ("dup.dcm", MR),  # 8
        ("dup.dcm", CT),  # 9
        ("./good/ct.dcm", CT),  # 10: the same name as 0, spelled differently
        ("big.dcm", bytes(9 * MiB)),  # 11: over MAX_MEMBER_BYTES (lowered to 8 MiB)
        ("bomb.dcm", bytes(4 * MiB)),  # 12: about 1000:1 (the ratio limit lowered to 100 above 1 MiB)
        ("liar.dcm", MR),  # 13: declares fewer bytes than it inflates to
        ("folder/", b""),  # 14: a folder entry, not listed
    ]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        for name, data in members:
            zf.writestr(name, data)
    data = bytearray(path.read_bytes())
    _shrink_declared_size(data, "liar.dcm", 100)
    path.write_bytes(bytes(data))
    rejected = f"{REJECTED_PREFIX}"
    return {
        "good/ct.dcm": ("written", None, None),
        f"{rejected}1": ("quarantined", "source", REASON_TRAVERSAL),
        f"{rejected}2": ("quarantined", "source", REASON_ABSOLUTE),
        f"{rejected}3": ("quarantined", "source", REASON_TRAVERSAL),
        f"{rejected}4": ("quarantined", "source", REASON_TRAVERSAL),
        f"{rejected}5": ("quarantined", "source", REASON_ABSOLUTE),
        f"{rejected}6": ("skipped", "source", REASON_SYMLINK_MEMBER),
        f"{rejected}7": ("skipped", "source", REASON_FIFO),
        "dup.dcm": ("written", None, None),
        f"{rejected}9": ("quarantined", "source", REASON_DUPLICATE),
        f"{rejected}10": ("quarantined", "source", REASON_DUPLICATE),
        f"{rejected}11": ("quarantined", "source", REASON_TOO_LARGE),
        f"{rejected}12": ("quarantined", "source", REASON_RATIO),
        "liar.dcm": ("quarantined", "index", REASON_CORRUPT_MEMBER),
    }


def hostile_tar(path: Path) -> Expected:
    def add(tf: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        if kind == tarfile.CHRTYPE:
            info.devmajor, info.devminor = 1, 3
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(path, "w:gz") as tf:
        add(tf, "good", kind=tarfile.DIRTYPE)  # 0: not listed
        add(tf, "good/ct.dcm", CT)  # 1
        add(tf, "../x.dcm", CT)  # 2
        add(tf, "/abs/x.dcm", CT)  # 3
        add(tf, "a/../../x.dcm", CT)  # 4
        add(tf, "link.dcm", kind=tarfile.SYMTYPE, link="/etc/passwd")  # 5
        add(tf, "hard.dcm", kind=tarfile.LNKTYPE, link="good/ct.dcm")  # 6
        add(tf, "fifo.dcm", kind=tarfile.FIFOTYPE)  # 7
        add(tf, "dev.dcm", kind=tarfile.CHRTYPE)  # 8
        add(tf, "dup.dcm", MR)  # 9
        add(tf, "dup.dcm", CT)  # 10
        add(tf, "big.dcm", bytes(9 * MiB))  # 11: a gzip bomb in little (over the lowered 8 MiB)
    rejected = REJECTED_PREFIX
    return {
        "good/ct.dcm": ("written", None, None),
        f"{rejected}2": ("quarantined", "source", REASON_TRAVERSAL),
        f"{rejected}3": ("quarantined", "source", REASON_ABSOLUTE),
        f"{rejected}4": ("quarantined", "source", REASON_TRAVERSAL),
        f"{rejected}5": ("skipped", "source", REASON_SYMLINK_MEMBER),
        f"{rejected}6": ("skipped", "source", REASON_HARDLINK_MEMBER),
        f"{rejected}7": ("skipped", "source", REASON_FIFO),
        f"{rejected}8": ("skipped", "source", REASON_DEVICE),
        "dup.dcm": ("written", None, None),
        f"{rejected}10": ("quarantined", "source", REASON_DUPLICATE),
        f"{rejected}11": ("quarantined", "source", REASON_TOO_LARGE),
    }


@pytest.fixture
def small_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bomb limits a test can reach in a few MB (the listing reads these module constants)."""
    monkeypatch.setattr(items_mod, "MAX_MEMBER_BYTES", 8 * MiB)
    monkeypatch.setattr(items_mod, "BOMB_RATIO_FLOOR", 1 * MiB)
    monkeypatch.setattr(items_mod, "MAX_COMPRESSION_RATIO", 100)


@pytest.mark.parametrize("keep_paths", [False, True], ids=["pseudonym", "keep_paths"])
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_hostile_archive_every_member_accounted_for(tmp_path: Path, key: ProjectKey, small_caps: None,
                                                    kind: str, keep_paths: bool) -> None:
    archive = tmp_path / "in" / ("hostile.zip" if kind == "zip" else "hostile.tar.gz")
    archive.parent.mkdir()
    expected = hostile_zip(archive) if kind == "zip" else hostile_tar(archive)
    dst = tmp_path / "out" / "dst"
    listed = [i.relpath for i in iter_items(detect(archive))]
    before = outside_state(tmp_path, dst)
    with deadline(120):
        report = run(archive, dst, key=key, workers=1, keep_paths=keep_paths)
    assert outside_state(tmp_path, dst) == before
    check_accounted(dst, key, listed, expected)
    assert report.objects == len(expected) and report.written == 2
    outputs = dcm_outputs(dst)
    if keep_paths:
        assert outputs == ["dup.dcm", "good/ct.dcm"]
    else:
        assert len(outputs) == 2 and not any(ESCAPE_NAME in o for o in outputs)
    assert not list(tmp_path.rglob(ESCAPE_NAME))


def test_hostile_zip_via_cli_keep_paths(tmp_path: Path, key: ProjectKey) -> None:
    """The command line on a hostile zip (default limits: the big members are ordinary here): no traceback,
    exit 1 for the quarantined members, nothing outside DST."""
    archive = tmp_path / "in" / "hostile.zip"
    archive.parent.mkdir()
    hostile_zip(archive)
    dst = tmp_path / "out" / "dst"
    listed = [i.relpath for i in iter_items(detect(archive))]
    before = outside_state(tmp_path, dst)
    proc = run_cli("run", str(archive), str(dst), "--workers", "1", "--quiet", "--keep-paths", key=SECRET,
                   cwd=tmp_path, timeout=180)
    assert outside_state(tmp_path, dst) == before
    assert proc.returncode == 1, proc.stderr.decode(errors="replace")
    assert b"Traceback" not in proc.stderr
    audit = audit_of(dst)
    assert set(audit) == {object_id(key, rel) for rel in listed} and len(listed) == 14
    assert dcm_outputs(dst) == ["dup.dcm", "good/ct.dcm"]
    assert not list(tmp_path.rglob(ESCAPE_NAME))


def test_truncated_tar_accounts_for_the_rest(tmp_path: Path, key: ProjectKey) -> None:
    """A tar.gz cut short: the members before the cut are processed, the rest is one quarantined entry."""
    whole = tmp_path / "whole.tar.gz"
    with tarfile.open(whole, "w:gz") as tf:
        for name, data in (("a/ct.dcm", CT), ("b/mr.dcm", MR), ("c/pad.bin", os.urandom(256 * 1024))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    cut = tmp_path / "in" / "cut.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size - 100 * 1024])
    listed = [i.relpath for i in iter_items(detect(cut))]
    dst = tmp_path / "out" / "dst"
    report = run(cut, dst, key=key, workers=1)
    check_accounted(dst, key, listed, {
        "a/ct.dcm": ("written", None, None),
        "b/mr.dcm": ("written", None, None),
        f"{REJECTED_PREFIX}2": ("quarantined", "source", REASON_BROKEN_ARCHIVE),
    })
    assert report.written == 2 and report.quarantined == 1


def test_undecodable_file_name_is_quarantined_not_a_crash(tmp_path: Path, key: ProjectKey) -> None:
    """A file name that is not UTF-8 (a Latin-1 tree) cannot be a manifest path: quarantined, the rest runs."""
    root = tmp_path / "src"
    root.mkdir()
    (root / "ct.dcm").write_bytes(CT)
    try:
        with open(os.path.join(os.fsencode(root), b"caf\xe9.dcm"), "wb") as fh:
            fh.write(MR)
    except OSError:
        pytest.skip("the file system refuses names that are not UTF-8")
    listed = [i.relpath for i in iter_items(detect(root))]
    assert listed == ["caf\\xe9.dcm", "ct.dcm"]
    dst = tmp_path / "out" / "dst"
    report = run(root, dst, key=key, workers=1)
    assert report.written == 1 and report.quarantined == 1
    assert set(audit_of(dst)) == {object_id(key, rel) for rel in listed}
