"""``make demo``: the main job on a built-in sample, ending with a summary a person can read.

1. ``deidpipe synth`` makes a synthetic archive with an answer key (PHI planted in ~90 places, four
   character sets, cross-object references);
   ``deidpipe synth --heads`` adds four head MR series with known face and brain masks (two whole heads, one
   cropped without its face, one skull-stripped);
2. ``deidpipe run`` de-identifies it (index -> plan -> header scrub -> burned-in text -> defacing -> atomic sink,
   audit and quarantine);
3. the output is checked against the answer key: every planted value (header attributes, and the values hidden
   in folder and file names, documents, JPEG/J2K segments, sidecars and zips) searched for in every byte under
   the output folder (names of files and folders, raw bytes, PDF Flate streams inflated, zip/tar members
   unpacked, Parquet columns read as text), every surviving reference resolved, and the objects written and
   skipped counted against the key's expected outcomes;
4. a small encrypted-inference round trip (TenSEAL CKKS) scores de-identified features without the server
   ever holding the secret key;
5. the defaced head series are checked against their ground-truth face and brain masks;
6. ``deidpipe scan`` reads the input and the output (headers, burned-in text, faces, re-identification risk):
   high findings before, none after;
7. ``deidpipe serve`` runs a DICOM node on loopback: the synthetic patients' objects are sent to it by C-STORE
   (pynetdicom as the modality) and forwarded to a folder, byte for byte what ``run`` wrote for them;
8. a release with a risk target: 20 synthetic patients whose ages, sexes, devices and study years the policy keeps
   are released at a highest prosecutor risk of 0.2 (``run --max-risk 0.2``: quasi-identifiers generalised, the
   patients still at risk suppressed), and ``scan`` scores the output.

    python -m deidpipe.demo [OUT_DIR]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from deidpipe.dicomio import read_dataset
from deidpipe.keys import ProjectKey
from deidpipe.pipeline.runner import run
from deidpipe.pipeline.state import default_state_dir
from deidpipe.policy import Policy
from deidpipe.synth import AnswerKey, generate_archive
from deidpipe.synth.answer_key import (
    EXPECT_SKIP_DICOMDIR,
    EXPECT_SKIP_DOCUMENT,
    EXPECT_SKIP_NOT_DICOM,
    EXPECT_WRITE,
    MEMBER_SEP,
    REFERENCE_TARGET_ATTRIBUTE,
)
from deidpipe.synth.search import Hit, SearchStats, search_tree

console = Console()


def leak_patterns(answer: AnswerKey) -> dict[bytes, str]:
    """Every searchable byte string of the key (lower-cased: the search ignores case), with a label that says
    what it is and where it was planted, never the value itself."""
    labels: dict[bytes, str] = {}
    for p in sorted(answer.planted, key=lambda p: (p.path.count("."), len(p.path))):  # the plainest path first
        for pat in p.patterns() if p.searchable else []:
            labels.setdefault(pat.lower(), f"{p.kind} of patient {p.patient} at {p.path}")
    for h in answer.hidden:
        for pat in h.patterns() if h.searchable else []:
            labels.setdefault(pat.lower(), f"{h.kind} of patient {h.patient} in {h.where}")
    return labels


#: The checks of the leak search, one summary line each: (label, test on a hit).
LEAK_CHECKS: list[tuple[str, Callable[[Hit], bool]]] = [
    ("file and folder names", lambda h: h.part == "name"),
    ("raw bytes of every file", lambda h: h.part == "bytes" and MEMBER_SEP not in h.where),
    ("zip/tar members, unpacked recursively", lambda h: h.part == "bytes" and MEMBER_SEP in h.where),
    ("PDF Flate streams, inflated", lambda h: h.part == "flate"),
    ("deflated DICOM and gzip data, inflated", lambda h: h.part == "inflated"),
    ("Parquet columns read as text", lambda h: h.part == "parquet"),
]


def leak_search(answer: AnswerKey, dst: Path) -> tuple[int, list[Hit], SearchStats, dict[bytes, str]]:
    """(patterns searched, hits, what was looked at, labels) over every byte under ``dst``."""
    labels = leak_patterns(answer)
    stats = SearchStats()
    hits = search_tree(dst, labels, stats)
    return len(labels), hits, stats, labels


def print_leak_checks(hits: list[Hit], stats: SearchStats, labels: dict[bytes, str]) -> None:
    """One line per check; for a failing one, where (output paths hold no input value) and what kind of value
    (the key's label), at most five each."""
    looked = {"file and folder names": f"{stats.entries} entries",
              "raw bytes of every file": f"{stats.files} files, {stats.bytes:,} bytes",
              "zip/tar members, unpacked recursively": f"{stats.members} members",
              "PDF Flate streams, inflated": f"{stats.flate} streams",
              "deflated DICOM and gzip data, inflated": f"{stats.inflated} bodies",
              "Parquet columns read as text": f"{stats.parquet} files"}
    for name, test in LEAK_CHECKS:
        found = [h for h in hits if test(h)]
        status = "[green]ok[/green]  " if not found else f"[red]LEAK[/red] {len(found)} hits in"
        console.print(f"  {status} {name} ({looked[name]})")
        for h in found[:5]:
            console.print(f"        {h.where} [{h.part}]: {labels.get(h.pattern.lower(), 'planted value')}")


def expected_counts(answer: AnswerKey, extra_written: int) -> dict[str, int]:
    """What ``run`` should report under the default policy: objects written (the key's objects, zip members
    included, plus ``extra_written`` added by the demo), skipped (DICOMDIR, encapsulated documents, sidecars)
    and quarantined (none)."""
    skipped = [*answer.expected(EXPECT_SKIP_DICOMDIR), *answer.expected(EXPECT_SKIP_DOCUMENT),
               *answer.expected(EXPECT_SKIP_NOT_DICOM)]
    return {"written": len(answer.expected(EXPECT_WRITE)) + extra_written, "skipped": len(skipped),
            "quarantined": 0}


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(132)[128:] == b"DICM"


def reference_check(outputs: list[Path]) -> tuple[int, int]:
    """(references in the output, of which resolved): every UID a nested sequence refers to must be the
    SOP Instance, Series, Study or Frame of Reference UID of an object in the output."""
    datasets = [read_dataset(p) for p in outputs]
    # A study reference names the study in Referenced SOP Instance UID (PS3.3 10.6.1), so any kind counts.
    known = {str(ds.get(attr)) for ds in datasets for attr in REFERENCE_TARGET_ATTRIBUTE.values()}
    wanted = {"ReferencedSOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
              "ReferencedFrameOfReferenceUID", "FrameOfReferenceUID"}
    kept = resolved = 0
    for ds in datasets:
        for seq in (e for e in ds if e.VR == "SQ"):
            for item in seq.value:
                for elem in item.iterall():
                    if elem.keyword in wanted and elem.value:
                        kept += 1
                        resolved += str(elem.value) in known
    return kept, resolved


def he_round_trip() -> dict[str, float]:
    """Logistic regression on scikit-learn's breast cancer features, scored on CKKS ciphertexts."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from deidpipe import he

    x, y = load_breast_cancer(return_X_y=True)
    xtr, xte, ytr, _ = train_test_split(x, y, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(xtr)
    model = LogisticRegression(max_iter=1000).fit(scaler.transform(xtr), ytr)
    plan = he.compile_model(model, scaler.transform(xtr), ytr)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        keys = he.keygen(tmp, plan=plan)
        enc = he.encrypt(keys.secret, scaler.transform(xte))
        scores = he.decrypt(keys.secret, he.infer(plan, keys.public, enc))
    seconds = time.perf_counter() - t
    plain = model.decision_function(scaler.transform(xte))
    err = float(np.max(np.abs(np.asarray(scores.scores)[:, -1] - plain)))
    agree = float(np.mean(np.asarray(scores.labels) == model.predict(scaler.transform(xte))))
    return {"samples": float(len(xte)), "seconds": seconds, "max_error": err, "label_agreement": agree}


def head_series_check(heads: Path, entries: list[dict], key: ProjectKey, outputs: list[Path]) -> dict[str, float]:
    """The synthetic head series after ``deidpipe run``: share of ground-truth face voxels removed (worst head)
    and brain voxels changed (all heads), each output series found by its pseudonymised Series Instance UID."""
    import nibabel as nib
    import numpy as np

    from deidpipe.deface.series import series_to_volume

    by_series: dict[str, list[Path]] = {}
    for p in outputs:
        by_series.setdefault(str(read_dataset(p, stop_before_pixels=True).SeriesInstanceUID), []).append(p)
    worst, brain_changed = 1.0, 0
    for entry in (e for e in entries if e["kind"] == "full"):
        before = series_to_volume([read_dataset(p) for p in sorted((heads / entry["dicom"]).glob("*.dcm"))])
        uid = key.uid(str(before.datasets[0].SeriesInstanceUID))
        after = series_to_volume([read_dataset(p) for p in by_series.get(uid, [])])
        flip = np.linalg.det(before.affine[:3, :3]) < 0  # series_to_volume orders slices along the normal
        face, brain = (np.asarray(nib.load(str(heads / entry[m])).dataobj) > 0 for m in ("face", "brain"))
        face, brain = (m[:, :, ::-1] if flip else m for m in (face, brain))
        worst = min(worst, float((after.array[face] == 0).mean()))
        brain_changed += int((after.array[brain] != before.array[brain]).sum())
    return {"face_removed": worst, "brain_changed": float(brain_changed)}


def serve_round_trip(files: list[Path], out: Path, policy: Policy, key: ProjectKey, expected: list[Path]
                     ) -> dict[str, int]:
    """Send ``files`` to a ``deidpipe serve`` node on 127.0.0.1 (C-STORE, pynetdicom as the sender), forward
    them to a folder, and compare with ``run``'s outputs ``expected`` (by file name: the SOP instance's
    pseudonym)."""
    from pydicom.filereader import read_file_meta_info
    from pynetdicom import AE, _config

    from deidpipe.serve import ServeConfig
    from deidpipe.serve.config import Destination
    from deidpipe.serve.node import Node

    shutil.rmtree(out, ignore_errors=True)
    cfg = ServeConfig(queue=out / "queue", port=0, destinations=(Destination("folder", "folder", path=out / "folder"),),
                      process_in_child=False, workers=1, quiet_period_s=1.0)
    _config.STORE_SEND_CHUNKED_DATASET = True  # each file's data set as it is on disk
    statuses = []
    with Node(cfg, key, policy) as node:
        ae = AE(ae_title="DEMO")
        for sop, ts in sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
                               for m in map(read_file_meta_info, files)}):
            ae.add_requested_context(sop, ts)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=cfg.ae_title)
        if assoc.is_established:
            statuses = [int(getattr(assoc.send_c_store(f), "Status", -1)) for f in files]
            assoc.release()
        node.wait_idle(600)
    got = {p.name: p.read_bytes() for p in (out / "folder").rglob("*.dcm")}
    want = {p.name: p for p in expected}
    same = sum(1 for name, data in got.items() if name in want and want[name].read_bytes() == data)
    return {"sent": len(files), "success": statuses.count(0), "delivered": len(got), "same": same}


def risk_release(out: Path, key: ProjectKey, max_risk: float = 0.2) -> dict[str, object]:
    """Step 8: a 20-patient header-only archive released at ``max_risk``; the run's figures and scan's."""
    from deidpipe.scan import scan

    src, dst = out / "risk-input", out / "risk-release"
    for folder in (src, dst, default_state_dir(dst)):
        shutil.rmtree(folder, ignore_errors=True)
    generate_archive(src, patients=20, seed=5, real_world=False)
    (src / "answer_key.json").unlink()
    policy = Policy.from_mapping({
        "options": ["RetainPatientCharacteristics", "RetainDeviceIdentity", "RetainLongModifiedDates"],
        "pixels": "off", "deface": "off", "risk_target": {"max_risk": max_risk}})
    before = scan(src, policy, key, pixels=False, faces=False).risk
    report = run(src, dst, policy, key=key, progress=True)
    after = scan(dst, policy, key, pixels=False, faces=False).risk
    release = report.release or {}
    return {"target": max_risk, "levels": release.get("levels", {}), "suppressed": release.get("suppressed", 0),
            "patients": release.get("patients", 0), "before": before.to_dict()["prosecutor"]["highest_risk"],
            "after": after.to_dict()["prosecutor"]["highest_risk"], "k": after.k}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "demo-output")
    shutil.rmtree(out / "input", ignore_errors=True)
    shutil.rmtree(out / "deidentified", ignore_errors=True)
    shutil.rmtree(default_state_dir(out / "deidentified"), ignore_errors=True)  # run's state (input paths), beside DST
    out.mkdir(parents=True, exist_ok=True)
    key_file = out / "demo.key"
    if not key_file.exists():
        ProjectKey.generate(key_file)
    key = ProjectKey.from_file(key_file)

    console.rule("[bold]1. synthetic archive")
    answer = generate_archive(out / "input", patients=3, seed=0)
    (out / "input" / "answer_key.json").replace(out / "answer_key.json")  # the key is not part of the archive
    console.print(f"{len(answer.objects())} objects ({len(answer.members())} inside zips), a DICOMDIR and "
                  f"{len(answer.expected(EXPECT_SKIP_NOT_DICOM))} sidecar files, {len(answer.patients)} patients, "
                  f"{len(answer.planted)} planted identifying values in {len(answer.planted_paths())} places and "
                  f"{len(answer.hidden)} hidden in names, documents, stream segments and sidecars")
    from deidpipe.synth.heads import write_heads

    shutil.rmtree(out / "heads", ignore_errors=True)
    heads = write_heads(out / "heads", count=4, seed=0)  # two heads, one cropped without its face, one brain only
    shutil.copytree(out / "heads" / "dicom", out / "input" / "heads")
    console.print(f"{len(heads)} synthetic head MR series ({sum(e['slices'] for e in heads)} slices) with known "
                  "face and brain masks (deidpipe synth --heads), added to the archive")

    console.rule("[bold]2. deidpipe run (header, burned-in text, defacing)")
    policy = Policy.basic()
    report = run(out / "input", out / "deidentified", policy, key=key, progress=True)
    outputs = sorted(p for p in (out / "deidentified").rglob("*") if p.is_file() and _is_dicom(p)
                     and "quarantine" not in p.parts)

    console.rule("[bold]3. checks against the answer key")
    searched, hits, stats, labels = leak_search(answer, out / "deidentified")
    console.print(f"leak search: {searched} planted byte strings, every byte under {out / 'deidentified'}")
    print_leak_checks(hits, stats, labels)
    found = len({h.pattern for h in hits})
    kept, resolved = reference_check(outputs)
    want = expected_counts(answer, sum(e["slices"] for e in heads))
    got = {"written": report.written, "skipped": report.skipped, "quarantined": report.quarantined}
    for what, n in want.items():
        status = "[green]ok[/green]  " if got[what] == n else "[red]DIFF[/red]"
        console.print(f"  {status} objects {what}: {got[what]} (expected {n})")

    console.rule("[bold]4. encrypted inference (CKKS)")
    try:
        he_stats = he_round_trip()
    except Exception as exc:  # noqa: BLE001 - the demo reports a failing stage instead of stopping
        he_stats = {"error": type(exc).__name__}

    console.rule("[bold]5. defaced head series against their ground truth")
    try:
        face_stats = head_series_check(out / "heads", heads, key, outputs)
    except Exception as exc:  # noqa: BLE001 - reported in the summary like the other stages
        face_stats = {"error": type(exc).__name__}

    console.rule("[bold]6. deidpipe scan: the archive before and after")
    from deidpipe.scan import scan

    try:
        scans = {name: scan(out / folder, policy, key) for name, folder in (("before", "input"),
                                                                             ("after", "deidentified"))}
    except Exception as exc:  # noqa: BLE001 - reported in the summary like the other stages
        scans = {}
        console.print(f"scan failed ({type(exc).__name__})")

    console.rule("[bold]7. deidpipe serve: a DICOM node on loopback")
    try:  # the synthetic patients' objects (the head series would wait out a quiet period for defacing)
        # the key's objects on disk that run writes (not the documents it skips, nor the zips' members)
        writable = set(answer.expected(EXPECT_WRITE))
        sent = [out / "input" / rel for rel in answer.files() if rel in writable]
        serve_stats = serve_round_trip(sent, out / "serve", policy, key, outputs)
    except Exception as exc:  # noqa: BLE001 - reported in the summary like the other stages
        serve_stats = {"error": type(exc).__name__}  # type: ignore[dict-item]

    console.rule("[bold]8. a release with a risk target (run --max-risk 0.2)")
    try:
        risk_stats = risk_release(out, key)
    except Exception as exc:  # noqa: BLE001 - reported in the summary like the other stages
        risk_stats = {"error": type(exc).__name__}

    table = Table(title="deidpipe demo: summary", show_header=True)
    table.add_column("what")
    table.add_column("result", justify="right")
    table.add_row("policy", policy.describe())
    table.add_row("objects in / written / quarantined", f"{report.objects} / {report.written} / {report.quarantined}")
    table.add_row("throughput", f"{report.files_per_s:.1f} files/s")
    table.add_row("actions taken", ", ".join(f"{k}={v}" for k, v in sorted(report.actions.items())))
    table.add_row("planted strings searched in every byte under the output folder", str(searched))
    table.add_row("[bold]planted strings found (leaks)", f"[bold]{found}" + (f" ({len(hits)} places)" if hits else ""))
    table.add_row("objects written / skipped: as the key expects",
                  f"{got['written']} / {got['skipped']} (expected {want['written']} / {want['skipped']})")
    table.add_row("references kept / resolved", f"{kept} / {resolved}")
    if "error" in he_stats:
        table.add_row("encrypted inference", f"failed ({he_stats['error']})")
    else:
        table.add_row("encrypted inference: samples, seconds",
                      f"{he_stats['samples']:.0f}, {he_stats['seconds']:.2f}")
        table.add_row("  max |logit error|, label agreement",
                      f"{he_stats['max_error']:.2e}, {he_stats['label_agreement']:.0%}")
    if "error" in face_stats:
        table.add_row("defacing", f"failed ({face_stats['error']})")
    else:
        table.add_row("defacing: series defaced / unchanged (no face in view)",
                      f"{report.actions.get('defaced', 0)} / {report.actions.get('deface_no_face_in_view', 0)} "
                      "objects")
        table.add_row("  face voxels removed (worst head)", f"{face_stats['face_removed']:.1%}")
        table.add_row("[bold]  brain voxels changed", f"[bold]{face_stats['brain_changed']:.0f}")
    for name, sr in scans.items():
        counts = sr.counts
        table.add_row(f"scan {name}: findings high / medium / low",
                      f"{counts['high']} / {counts['medium']} / {counts['low']}")
    if "error" in serve_stats:
        table.add_row("serve", f"failed ({serve_stats['error']})")
    else:
        table.add_row("serve: sent / answered Success / delivered",
                      f"{serve_stats['sent']} / {serve_stats['success']} / {serve_stats['delivered']}")
        table.add_row("[bold]  delivered byte for byte as run wrote them", f"[bold]{serve_stats['same']}")
    if "error" in risk_stats:
        table.add_row("risk target", f"failed ({risk_stats['error']})")
    else:
        levels = ", ".join(f"{c} {lv}" for c, lv in risk_stats["levels"].items() if lv) or "none"  # type: ignore[union-attr]
        table.add_row("risk target 0.2: levels generalised", levels)
        table.add_row("  patients suppressed", f"{risk_stats['suppressed']} of {risk_stats['patients']}")
        table.add_row("[bold]  highest prosecutor risk, scan before -> after",
                      f"[bold]{risk_stats['before']:.2f} -> {risk_stats['after']:.2f} (k = {risk_stats['k']})")
    table.add_row("output (safe to share whole)", str(out / "deidentified"))
    table.add_row("run state (input paths: keep private)", str(report.state_dir))
    console.print(table)
    ok = found == 0 and kept == resolved and report.written > 0 and got == want
    ok = ok and "error" not in face_stats and face_stats["brain_changed"] == 0 and face_stats["face_removed"] >= 0.98
    ok = ok and bool(scans) and scans["before"].counts["high"] > 0 and scans["after"].counts["high"] == 0
    ok = ok and "error" not in serve_stats and serve_stats["same"] == serve_stats["sent"] > 0
    ok = ok and "error" not in risk_stats and float(risk_stats["after"]) <= 0.2  # type: ignore[arg-type]
    console.print("[green]demo passed[/green]" if ok else "[red]demo found a problem[/red]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
