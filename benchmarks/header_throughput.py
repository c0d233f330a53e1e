"""Header de-identification throughput: deidpipe beside the tools a user would otherwise pick.

    python benchmarks/header_throughput.py [--files 2000] [--small] [--whole-process] [--keep DIR] [--repeat 3]
                                           [--memory-check 20000]

Builds a corpus of CT slices (half small 128x128 from pydicom's CT_small.dcm, half full 512x512; ``--small``: all
128x128), then runs, each in its own process on the same files: deidpipe with 1 worker and with all cores,
deidpipe as a portal script calls it (``deidpipe-lib``: torch and presidio loaded, then ``deidpipe.run``
under a guard), pydicom/deid with its packaged recipe, dicognito, Kitware's dicom-anonymizer, GDCM's C++
``gdcmanon -e`` (Debian libgdcm-tools; Basic Profile, the originals encrypted for a certificate; always its
whole process), and the floor (pydicom read + write, no changes). Prints files/s, MB/s and the peak memory
of the tool's whole process tree (RSS sampled every 50 ms; PSS, which is costly to read, when RSS has grown and
at least every second).

By default a tool's time is its work inside its process (imports and interpreter start-up excluded).
``--whole-process`` times each process from launch to exit, as a user waits for it, and runs the tools that have
a command line through it: ``deidpipe run`` (header stage only, as the other tools: a policy file with
``pixels: off`` and ``deface: off``) and ``dicognito --output-directory``; the others run this script's loop for
them in a fresh interpreter. On small
corpora start-up is a large share of the time: ``--files 1000 --small --whole-process`` is the case of issue 9
(a whole ``deidpipe run`` at least 5x dicognito's whole process).

``--memory-check N`` also runs deidpipe (all cores) on N small files and on N/10, and compares peak memory.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

KEY = "benchmark-secret-0123456789abcdef"
TOOLS = ["floor", "deidpipe-1", "deidpipe-all", "deidpipe-lib", "deid", "dicognito", "dicom-anonymizer", "gdcmanon"]

#: ``deidpipe-lib``: deidpipe as a research portal calls it, from a script of its own that loads torch and
#: presidio and runs torch (its OpenMP pool started) at its top level, then calls ``deidpipe.run`` under a
#: ``__main__`` guard. Its workers must not repeat the script's top level, and its index pass should cost what
#: the CLI's does (issue 22).
LIBRARY_SCRIPT = """
import json, os, sys
import torch  # -- module-level work a portal's script does before it calls deidpipe
import presidio_analyzer  # noqa: F401
import deidpipe
from deidpipe import Policy, ProjectKey

torch.nn.functional.conv2d(torch.randn(1, 3, 64, 64), torch.randn(4, 3, 3, 3))

if __name__ == "__main__":
    workers = len(os.sched_getaffinity(0))
    report = deidpipe.run(sys.argv[1], sys.argv[2], Policy.basic(pixels="off", deface="off"),
                          key=ProjectKey.from_env(), workers=workers)
    print(json.dumps({"files": report.written, "quarantined": report.quarantined, "index_s": report.index_s,
                      "execute_s": report.execute_s, "workers": workers}))
"""


# -- corpus ---------------------------------------------------------------------------------------------------
def build_corpus(root: Path, n: int, big_share: float = 0.5, per_series: int = 50) -> int:
    """``n`` CT slices under ``root/pNNN/sNNN/NNNNNN.dcm`` (unique base names: deid names outputs by them)."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    big_pixels = (np.arange(512 * 512, dtype=np.uint16) % 4096).astype("<u2").tobytes()
    n_big = int(n * big_share)
    total = 0
    for i in range(n):
        series_no, patient_no = i // per_series, i // (per_series * 4)
        if i % per_series == 0:
            study_uid = generate_uid(entropy_srcs=[f"study{patient_no}{series_no // 2}"])
            series_uid = generate_uid(entropy_srcs=[f"series{series_no}"])
        ds = copy.deepcopy(base)  # not base.copy(): a shallow copy shares the elements, so Rows would stick
        ds.PatientName = f"Patient^{patient_no:04d}^Benchmark"
        ds.PatientID = f"PID{patient_no:06d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"instance{i}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i % per_series + 1
        if i < n_big:
            ds.Rows, ds.Columns = 512, 512
            ds.PixelData = big_pixels
        path = root / f"p{patient_no:03d}" / f"s{series_no:04d}" / f"{i:06d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def corpus_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm"))


# -- one tool, inside its own process ---------------------------------------------------------------------------
def cli_command(tool: str, corpus: Path, out: Path, scratch: Path) -> list[str] | None:
    """The tool's own command line for ``--whole-process``, or None when it has none (the script's loop runs)."""
    bindir = Path(sys.executable).parent
    if tool == "deidpipe-lib":
        script = scratch / "portal_script.py"
        script.write_text(LIBRARY_SCRIPT, encoding="utf-8")
        return [sys.executable, str(script), str(corpus), str(out / "dst")]
    if tool.startswith("deidpipe"):
        policy = scratch / "header-only.yaml"
        # quoted: YAML 1.1 reads a bare off as false
        policy.write_text('pixels: "off"\ndeface: "off"\n', encoding="utf-8")
        workers = 1 if tool == "deidpipe-1" else len(os.sched_getaffinity(0))
        exe = bindir / "deidpipe"
        head = [str(exe)] if exe.exists() else [sys.executable, "-m", "deidpipe.cli"]
        return [*head, "run", str(corpus), str(out / "dst"), "--policy", str(policy), "--workers", str(workers),
                "--quiet"]
    if tool == "dicognito":
        # ``python -m``: the console script of dicognito 0.19 calls main() without its argument list.
        return [sys.executable, "-m", "dicognito", "--quiet", "--output-directory", str(out), str(corpus)]
    if tool == "gdcmanon":
        # GDCM's C++ anonymizer (Debian libgdcm-tools), Basic Profile mode: the originals it changes are encrypted
        # into the Encrypted Attributes Sequence (0400,0500) for a certificate, as deidpipe's reversible option.
        return ["gdcmanon", "-e", "-c", str(_certificate(scratch)), "--continue", "-r", "-i", str(corpus),
                "-o", str(out)]
    return None


#: Tools that are only a command line (no Python loop to run them in this script).
CLI_ONLY = {"gdcmanon"}


def _certificate(scratch: Path) -> Path:
    """A self-signed RSA certificate for gdcmanon -e (made once per scratch folder)."""
    cert = scratch / "gdcmanon-cert.pem"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=deidpipe-bench", "-keyout", str(scratch / "gdcmanon-key.pem"), "-out", str(cert)],
                       check=True, capture_output=True)
    return cert


def precompile_deidpipe() -> None:
    """Byte-compile deidpipe as ``pip install`` does for a regular install. In an editable checkout run with
    PYTHONDONTWRITEBYTECODE=1 nothing writes ``__pycache__``, and every process would compile deidpipe's modules
    from source (a few hundred ms per process on 2 cores) while the tools it is compared with load theirs compiled."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("deidpipe")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(folder, quiet=1)


def run_tool(tool: str, corpus: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if tool.startswith("deidpipe"):
        from deidpipe.keys import ProjectKey
        from deidpipe.pipeline import run
        from deidpipe.policy import Policy

        workers = 1 if tool == "deidpipe-1" else (len(os.sched_getaffinity(0)))
        if tool == "deidpipe-lib":  # the portal's module-level work, in the process that calls run
            import presidio_analyzer  # noqa: F401
            import torch

            torch.nn.functional.conv2d(torch.randn(1, 3, 64, 64), torch.randn(4, 3, 3, 3))  # OpenMP pool started
        t0 = time.perf_counter()
        # Header stage only, like every tool it is compared with (the pixel stage has its own benchmark).
        policy = Policy.basic(pixels="off", deface="off")
        report = run(corpus, out / "dst", policy, key=ProjectKey(KEY.encode()), workers=workers)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "files": report.written, "quarantined": report.quarantined,
                "index_s": report.index_s, "execute_s": report.execute_s, "workers": workers}
    # The file list only for the tools that take one (deidpipe walks the tree itself; a list of every path held
    # in its process would count against its memory, and against each forked worker's).
    files = corpus_files(corpus)
    if tool == "floor":
        import pydicom

        t0 = time.perf_counter()
        for i, f in enumerate(files):
            pydicom.dcmread(f).save_as(out / f"{i:06d}.dcm")
    elif tool == "dicognito":
        import pydicom
        from dicognito.anonymizer import Anonymizer

        anonymizer = Anonymizer()
        t0 = time.perf_counter()
        for i, f in enumerate(files):
            ds = pydicom.dcmread(f)
            anonymizer.anonymize(ds)
            ds.save_as(out / f"{i:06d}.dcm")
    elif tool == "dicom-anonymizer":
        from dicomanonymizer import anonymize_dicom_file

        t0 = time.perf_counter()
        for i, f in enumerate(files):
            anonymize_dicom_file(str(f), str(out / f"{i:06d}.dcm"))
    elif tool == "deid":
        from deid.config import DeidRecipe
        from deid.dicom import replace_identifiers

        recipe = DeidRecipe()  # the packaged default recipe
        t0 = time.perf_counter()
        for start in range(0, len(files), 200):
            chunk = [str(f) for f in files[start : start + 200]]
            replace_identifiers(dicom_files=chunk, deid=recipe, save=True, output_folder=str(out), overwrite=True)
    else:
        raise SystemExit(f"unknown tool {tool}")
    return {"seconds": time.perf_counter() - t0, "files": len(files)}


# -- the parent: run each tool in a child and watch its memory -----------------------------------------------------
def _tree(pid: int) -> list:
    import psutil

    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(procs: list) -> int:
    """Resident memory of a process tree, summed (cheap: /proc/PID/statm)."""
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def tree_pss(procs: list) -> int:
    """Proportional memory of a process tree, summed. Forked workers share their parent's pages until they
    write to them; RSS counts a shared page once per process, PSS splits it among them, so the PSS sum is what
    the tree really occupies. Costly to read (the kernel walks every mapping: about 5 ms per process here)."""
    import psutil

    total = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


#: Tool runs measured so far (each writes to its own folder under ``scratch/outputs``).
_RUNS = 0


def measure(tool: str, corpus: Path, scratch: Path, whole: bool = False) -> dict:
    global _RUNS
    _RUNS += 1
    out = scratch / "outputs" / f"{_RUNS:03d}-{tool}"
    # Every tool starts with no write-back pending: the previous tool's output is flushed first, so no tool pays
    # for the disk writes of the one before it. Outputs are deleted only when the benchmark ends: ext4 skips
    # inodes freed in the last minutes when it allocates new ones, and after the previous tool's 1,000 files were
    # deleted each file the next tool created cost up to 0.5 ms of kernel time more (measured here: a deidpipe
    # run's system CPU 0.13-0.18 s on a quiet disk, 0.28-0.55 s right after deleting its last output).
    os.sync()
    env = dict(os.environ, DEIDPIPE_KEY=KEY, PYTHONWARNINGS="ignore")
    command = cli_command(tool, corpus, out, scratch) if whole or tool in CLI_ONLY else None
    if command is None:
        command = [sys.executable, __file__, "--tool", tool, str(corpus), str(out)]
    else:
        out.mkdir(parents=True)
    import resource

    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    peak = peak_pss = 0
    stop = threading.Event()

    def sample() -> None:
        # RSS every 50 ms; PSS only when RSS has grown 2% since PSS was last read, or after a second, and at
        # most every 0.2 s: read every 50 ms, PSS alone took a quarter of a core from a three-process tool.
        nonlocal peak, peak_pss
        pss_at, pss_rss = 0.0, 0
        while not stop.is_set():
            procs = _tree(child.pid)
            rss = tree_rss(procs)
            peak = max(peak, rss)
            now = time.monotonic()
            if now - pss_at >= 0.2 and (rss > pss_rss * 1.02 or now - pss_at >= 1.0):
                peak_pss = max(peak_pss, tree_pss(procs))
                pss_at, pss_rss = now, rss
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - launched
    # CPU seconds of the whole process tree (a child's rusage includes the workers it reaped): on a shared
    # machine this moves less with the neighbours' load than the wall time does.
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    stop.set()
    sampler.join()
    # Outputs are counted (every tool names them *.dcm) before they are deleted: a tool run from its own command
    # line reports nothing else, and a run that wrote fewer files than the corpus holds must not look faster.
    written = sum(1 for _ in out.rglob("*.dcm"))
    if child.returncode != 0:
        return {"tool": tool, "error": (stderr.strip().splitlines() or ["failed"])[-1][:120]}
    if command[1:2] == [__file__] or tool == "deidpipe-lib":
        result = json.loads(stdout.strip().splitlines()[-1])
    else:
        result = {"seconds": wall, "files": written}
        if tool.startswith("deidpipe"):
            result["workers"] = int(command[command.index("--workers") + 1])
    if whole or tool in CLI_ONLY:
        result["seconds"] = wall
        result["cli"] = command[1:2] != [__file__] and tool != "deidpipe-lib"
    result.update(tool=tool, peak_mb=peak / 2**20, peak_pss_mb=peak_pss / 2**20, written=written, cpu_s=cpu)
    return result


def _median_run(runs: list[dict]) -> dict:
    """The run with the median time (the first error, if any run failed); peak memory is the highest seen."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r["seconds"])
    median = dict(ordered[len(ordered) // 2])
    median.update(peak_mb=max(r["peak_mb"] for r in runs), peak_pss_mb=max(r["peak_pss_mb"] for r in runs),
                  runs=len(runs))
    return median


def table(results: list[dict], nbytes: int, nfiles: int, whole: bool = False) -> str:
    """The results as a text table, with each tool's time per file against the floor's and dicognito's."""
    by = {r["tool"]: r for r in results if "error" not in r}

    def per_file(r: dict) -> float:
        return r["seconds"] / max(r["files"], 1)

    floor, dicognito = by.get("floor"), by.get("dicognito")
    repeat = max((r.get("runs", 1) for r in results), default=1)
    each = f"; each tool's median of {repeat} runs" if repeat > 1 else ""
    timing = ("whole process, launch to exit (tools marked * run from their own command line)" if whole
              else "work inside the process (start-up and imports excluded)")
    lines = [f"corpus: {nfiles} files, {nbytes / 1e6:.1f} MB, {len(os.sched_getaffinity(0))} cores{each}",
             f"timing: {timing}", "",
             f"{'tool':<26}{'seconds':>9}{'CPU s':>8}{'files/s':>10}{'MB/s':>9}{'ms/file':>10}{'x floor':>9}"
             f"{'vs dicognito':>14}{'peak RSS MB':>13}{'peak PSS MB':>13}",
             "-" * 121]
    for r in results:
        if "error" in r:
            lines.append(f"{r['tool']:<26}  failed: {r['error']}")
            continue
        fps = r["files"] / r["seconds"]
        mbs = nbytes / 1e6 / r["seconds"]
        ms = 1e3 * per_file(r)
        name = r["tool"] + ("*" if r.get("cli") else "") + (f" ({r['workers']} workers)" if "workers" in r else "")
        rel = f"{per_file(r) / per_file(floor):.2f}" if floor else "-"
        vs = f"{per_file(dicognito) / per_file(r):.2f}x" if dicognito else "-"
        lines.append(f"{name:<26}{r['seconds']:>9.2f}{r.get('cpu_s', float('nan')):>8.2f}{fps:>10.1f}{mbs:>9.1f}"
                     f"{ms:>10.2f}{rel:>9}{vs:>14}"
                     f"{r['peak_mb']:>13.0f}{r['peak_pss_mb']:>13.0f}")
    short = [r["tool"] for r in by.values() if r.get("written", r["files"]) < nfiles]
    if short:
        lines.append(f"\nwrote fewer files than the corpus holds: {', '.join(short)}")
    if {"deidpipe-all", "dicognito"} <= by.keys():
        speed = per_file(dicognito) / per_file(by["deidpipe-all"])
        what = "whole process" if whole else "files/s"
        lines.append(f"\ndeidpipe (all cores) vs dicognito: {speed:.2f}x ({what}; target >= 5x)")
    if {"deidpipe-all", "gdcmanon"} <= by.keys():
        speed = per_file(by["gdcmanon"]) / per_file(by["deidpipe-all"])
        lines.append(f"deidpipe (all cores) vs gdcmanon -e: {speed:.2f}x (target >= 1x)")
    if {"deidpipe-lib", "deidpipe-all"} <= by.keys():
        lib, cli = by["deidpipe-lib"], by["deidpipe-all"]
        index = f"; index pass {lib['index_s']:.2f} s" if "index_s" in lib else ""
        index += f" vs {cli['index_s']:.2f} s" if "index_s" in cli else ""
        lines.append(f"deidpipe as a library (portal script, torch loaded) vs deidpipe-all: "
                     f"{per_file(lib) / per_file(cli):.2f}x the time per file{index}")
    if {"deidpipe-1", "floor"} <= by.keys() and floor is not None:
        ratio = per_file(by["deidpipe-1"]) / per_file(floor)
        lines.append(f"deidpipe (1 worker) time per file vs floor: {ratio:.2f}x"
                     + (" (whole process)" if whole else " (target <= 1.5x)"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--small", action="store_true", help="every slice small (128x128, from CT_small.dcm)")
    ap.add_argument("--whole-process", action="store_true",
                    help="time each process from launch to exit, through the tool's own command line if it has one")
    ap.add_argument("--keep", type=Path, help="build (or reuse) the corpus here instead of a temporary folder")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run every tool N times, round by round, and report each tool's median run")
    ap.add_argument("--memory-check", type=int, default=0, metavar="N",
                    help="also compare deidpipe's peak memory on N and N/10 small files")
    ap.add_argument("--tool", nargs=3, metavar=("TOOL", "CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tool:
        print(json.dumps(run_tool(args.tool[0], Path(args.tool[1]), Path(args.tool[2]))))
        return
    scratch = Path(tempfile.mkdtemp(prefix="deidpipe-bench-"))
    try:
        corpus = args.keep or scratch / "corpus"
        if args.tools and not (corpus.exists() and corpus_files(corpus)):
            print(f"building {args.files} files ...", flush=True)
            build_corpus(corpus, args.files, big_share=0.0 if args.small else 0.5)
        files = corpus_files(corpus) if corpus.exists() else []
        nbytes = sum(f.stat().st_size for f in files)
        tools = [t for t in args.tools.split(",") if t]
        if any(t.startswith("deidpipe") for t in tools):
            precompile_deidpipe()
        runs: dict[str, list[dict]] = {t: [] for t in tools}
        # Round by round, every tool once per round: drift in the machine's speed (it is shared) falls on all
        # tools alike; each tool's median run is reported.
        for round_no in range(args.repeat):
            for tool in tools:
                print(f"round {round_no + 1}/{args.repeat}: running {tool} ...", flush=True)
                runs[tool].append(measure(tool, corpus, scratch, whole=args.whole_process))
        results = [_median_run(runs[t]) for t in tools]
        if args.repeat > 1 and {"deidpipe-all", "dicognito"} <= runs.keys():
            rounds = [d["seconds"] / d["files"] / (p["seconds"] / p["files"])
                      for p, d in zip(runs["deidpipe-all"], runs["dicognito"], strict=True)
                      if "error" not in p and "error" not in d]
            print("\ndeidpipe (all cores) vs dicognito, round by round: " + ", ".join(f"{x:.2f}x" for x in rounds))
        if args.repeat > 1:
            print("\nseconds per run: " + "; ".join(
                f"{t} " + ", ".join(f"{r['seconds']:.2f}" for r in runs[t] if "error" not in r) for t in tools))
        if results:
            print()
            print(table(results, nbytes, len(files), whole=args.whole_process))
        if args.memory_check:
            print("\nmemory flatness (deidpipe, all cores, small CT slices):")
            peaks, psss = {}, {}
            for n in (args.memory_check // 10, args.memory_check):
                small = scratch / f"small-{n}"
                build_corpus(small, n, big_share=0.0)
                r = measure("deidpipe-all", small, scratch)
                peaks[n], psss[n] = r.get("peak_mb", float("nan")), r.get("peak_pss_mb", float("nan"))
                print(f"  {n:>7} files: peak RSS {peaks[n]:.0f} MB, peak PSS {psss[n]:.0f} MB, "
                      f"{r['files'] / r['seconds']:.1f} files/s", flush=True)
                shutil.rmtree(small)
            lo, hi = peaks[args.memory_check // 10], peaks[args.memory_check]
            plo, phi = psss[args.memory_check // 10], psss[args.memory_check]
            print(f"  ratio RSS {hi / lo:.2f}, PSS {phi / plo:.2f} (target <= 1.20)")
    finally:
        # every run's output, and the corpus unless --keep put it elsewhere
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
