"""``deidpipe scan``: finds what a synth archive plants (headers by the answer key, burned-in text by the burned key,
synth faces), finds nothing high after ``deidpipe run`` with the Basic Profile, gates by ``--fail-on``, finds known
identities in headers and in pixel text of a scrubbed header, and writes JSON / SARIF / HTML without any value.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from deidpipe.keys import ProjectKey
from deidpipe.policy import Policy
from deidpipe.scan import RULES, scan
from deidpipe.scan.report import to_json, to_sarif
from tests.helpers import run_cli

KEY = ProjectKey(b"scan-test-key-0123456789abcdef")
SEVERITIES = {"info", "low", "medium", "high"}


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory):
    from deidpipe.synth import generate_archive

    root = tmp_path_factory.mktemp("scan-src")
    answer = generate_archive(root, patients=2, seed=5, burned_text=True, real_world=False)
    return root, answer


@pytest.fixture(scope="module")
def header_report(src):
    return scan(src[0], pixels=False, faces=False, workers=1)


@pytest.fixture(scope="module")
def deid(src, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deidpipe.pipeline.runner import run

    out = tmp_path_factory.mktemp("scan-out") / "out"
    report = run(src[0], out, Policy.basic(), key=KEY, workers=2)
    assert report.processed > 0
    return out


@pytest.fixture(scope="module")
def deid_report(deid):
    return scan(deid, faces=False, workers=2)  # pixels on: the burned-in text must be gone too


@pytest.fixture(scope="module")
def burned_report(src):
    """Pixel scan of one patient's burned-in-text images (the OCR-free line finder)."""
    return scan(src[0] / "patient000" / "burned", faces=False, workers=1)


def _steps(path: str) -> list[tuple]:
    """A location or answer-key path as comparable steps: keywords with [i], private elements as
    (group, creator, element byte) whatever the block they were put in."""
    out: list[tuple] = []
    for raw in re.findall(r'\([^)]*\)(?: "[^"]*")?(?:\[\d+\])?|[A-Za-z_]+(?:\[\d+\])?', path):
        index = re.search(r"\[(\d+)\]$", raw)
        step = raw[: index.start()] if index else raw
        m = re.fullmatch(r'\(([0-9a-fA-F]{4}),"([^"]*)",([0-9a-fA-F]{2})\)', step)  # answer key
        n = re.fullmatch(r'\(([0-9A-F]{4}),([0-9A-F]{2})([0-9A-F]{2})\)(?: "([^"]*)")?', step)  # scan
        if m:
            key: tuple = ("p", int(m.group(1), 16), m.group(2).strip().lower(), int(m.group(3), 16))
        elif n:
            key = ("p", int(n.group(1), 16), (n.group(4) or "").strip().lower(), int(n.group(3), 16))
        else:
            key = ("k", step)
        out.append(key + ((int(index.group(1)),) if index else ()))
    return out


def _covers(location: str, planted: str) -> bool:
    """Whether a finding at ``location`` is at ``planted`` or at an element that holds it (a sequence)."""
    a, b = _steps(location), _steps(planted)
    if not a or len(a) > len(b) or b[: len(a) - 1] != a[:-1]:
        return False
    last, there = a[-1], b[len(a) - 1]
    return there == last or (len(a) < len(b) and there[: len(last)] == last)


def _texts(report, tmp_path: Path) -> dict[str, str]:
    from rich.console import Console

    from deidpipe.scan.html import to_html
    from deidpipe.scan.report import render

    table = tmp_path / "table.txt"
    with table.open("w", encoding="utf-8") as fh:
        render(report, Console(file=fh, width=200))
    return {"json": to_json(report), "sarif": json.dumps(to_sarif(report), ensure_ascii=False),
            "html": to_html(report), "table": table.read_text("utf-8")}


def _known_csv(path: Path, answer, patients=None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "patient_id", "birth_date"])
        for p in patients or answer.patients:
            w.writerow([p.name.split("=")[0], p.patient_id, p.birth_date_iso])
    return path


# -- headers ------------------------------------------------------------------------------------------------
def test_every_planted_header_value_is_found(src, header_report):
    root, answer = src
    by_file: dict[str, list[str]] = {}
    for f in header_report.findings:
        by_file.setdefault(f.path, []).append(f.location)
    missed = []
    for p in answer.planted:
        for file in p.files:
            if not any(_covers(loc, p.path) for loc in by_file.get(file, [])):
                missed.append((file, p.path))
    assert not missed, missed[:20]
    assert header_report.objects == len(answer.files()) + 14  # every object of the key, and the burned images
    assert header_report.errors == 0 and header_report.skipped >= 2  # the two key files are not DICOM
    assert {f.rule for f in header_report.findings} >= {"DP-H001", "DP-H002", "DP-H003", "DP-H005", "DP-H006",
                                                         "DP-H007", "DP-H009", "DP-H011"}
    assert all(f.rule in RULES and f.severity in SEVERITIES for f in header_report.findings)


def test_locations_are_keyword_paths_and_private_tags_with_creator(header_report):
    locs = {f.location for f in header_report.findings}
    assert any(re.fullmatch(r"\w+Sequence\[\d+\]\.\w+.*", loc) for loc in locs) or \
        any(loc.endswith("Sequence") for loc in locs)
    assert any(re.fullmatch(r'\([0-9A-F]{4},[0-9A-F]{4}\) "[^"]+"', loc) for loc in locs)
    assert any(loc.startswith("file_meta.") for loc in locs)


def test_after_basic_run_nothing_high_and_exit_0(src, deid, deid_report):
    assert deid_report.objects > 0 and deid_report.errors == 0
    high = [f for f in deid_report.findings if f.severity == "high"]
    assert not high, [(f.path, f.rule, f.location) for f in high[:20]]
    assert not [f for f in deid_report.findings if f.rule.startswith("DP-P")]  # every burned box was blacked
    assert deid_report.exit_code("high") == 0
    proc = run_cli("scan", str(deid), "--fail-on", "high", "--format", "json", "--no-faces", "--no-pixels", text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["counts"]["high"] == 0


def test_fail_on_gates_as_documented(src, deid, deid_report, header_report):
    # the de-identified archive: only the dataset-level risk finding (medium) is left
    assert deid_report.counts["medium"] >= 1 and deid_report.counts["high"] == 0
    assert deid_report.exit_code("medium") == 1 and deid_report.exit_code("high") == 0
    assert header_report.exit_code("high") == 1 and header_report.exit_code("info") == 1
    proc = run_cli("scan", str(deid), "--fail-on", "medium", "--format", "sarif", "--no-faces", "--no-pixels",
                   text=True)
    assert proc.returncode == 1
    proc = run_cli("scan", str(src[0]), "--fail-on", "high", "--no-faces", "--no-pixels", "--format", "json", text=True)
    assert proc.returncode == 1
    assert run_cli("scan", str(deid), "--fail-on", "severe", text=True).returncode == 2
    assert run_cli("scan", str(deid / "no-such-folder"), text=True).returncode == 2


def test_an_unreadable_object_is_a_finding_and_exit_2(tmp_path, src):
    folder = tmp_path / "broken"
    folder.mkdir()
    data = (src[0] / src[1].files()[0]).read_bytes()
    (folder / "cut.dcm").write_bytes(data[: len(data) // 3])
    (folder / "notes.txt").write_text("not dicom")
    report = scan(folder, pixels=False, faces=False)
    assert report.errors == 1 and report.skipped == 1 and report.exit_code("high") == 2
    assert [f.rule for f in report.findings if f.path == "cut.dcm"] == ["DP-E001"]


def test_zip_and_tar_sources_give_the_same_findings(src, header_report, tmp_path):
    root = src[0]
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
    tpath = Path(shutil.make_archive(str(tmp_path / "a"), "gztar", root))
    header_only = [(f.path, f.rule, f.location) for f in header_report.findings if f.rule != "DP-R001"]
    for archive in (zpath, tpath):
        r = scan(archive, pixels=False, faces=False, workers=1)
        assert [(f.path, f.rule, f.location) for f in r.findings if f.rule != "DP-R001"] == header_only


def test_pool_and_serial_agree(src, header_report, monkeypatch):
    import deidpipe.scan.scanner as scanner

    monkeypatch.setattr(scanner, "SERIAL_LIMIT", 0)
    r = scan(src[0], pixels=False, faces=False, workers=2)
    assert [f.to_dict() for f in r.findings if f.rule != "DP-R001"] == \
        [f.to_dict() for f in header_report.findings if f.rule != "DP-R001"]


# -- known identities ---------------------------------------------------------------------------------------
def test_known_identities_in_headers(src, deid, tmp_path):
    root, answer = src
    csv_path = _known_csv(tmp_path / "known.csv", answer)
    before = scan(root, known_identities=csv_path, pixels=False, faces=False)
    hits = [f for f in before.findings if f.rule == "DP-H010"]
    assert {f.path for f in hits} >= set(answer.files())  # the patient's name or ID is in every object
    assert any("[" in f.location for f in hits)  # at depth, in sequences
    after = scan(deid, known_identities=csv_path, pixels=False, faces=False)
    assert not [f for f in after.findings if f.rule == "DP-H010"]


@pytest.mark.parametrize("charset", [b"ISO_IR 192", b"ISO_IR 144"])
def test_known_identity_in_latin1_bytes_under_another_charset(charset):
    """A known name written in Latin-1 under UTF-8 or Cyrillic, which decode it as "M?ller" and "Mќller": found
    in its Latin-1 reading (before, scan passed it). Text in the declared character set is not a finding."""
    from deidpipe.dicomio import read_dataset
    from deidpipe.scan.headers import known_identity_locations
    from deidpipe.scan.known import deny_list
    from tests.helpers import raw_part10

    local = "Сканер".encode("iso8859_5") if charset == b"ISO_IR 144" else "Scanner Zoë".encode()
    data = raw_part10([(0x0008, 0x0005, b"CS", charset), (0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7"),
                       (0x0008, 0x0018, b"UI", b"1.2.3.4"), (0x0008, 0x0070, b"LO", local),
                       (0x0008, 0x1090, b"LO", b"Scanner M\xfcller")])
    found = list(known_identity_locations(read_dataset(data), deny_list(["Müller"])))
    assert found == ["ManufacturerModelName"]


def test_known_identity_in_latin1_bytes_found_with_presidio_and_not_in_local_text():
    """Review: with --presidio the walk decoded free text before the known-identity search, whose raw bytes were
    then gone (the Latin-1 name was missed); and Greek text whose word "άρα" reads as Latin-1 "Üñá" ("una") is not
    a finding for the known name "Una" (no ASCII letter in it, as a Latin-1 name under another set has)."""
    from deidpipe.dicomio import read_dataset
    from deidpipe.scan.headers import HeaderChecker
    from deidpipe.scan.known import deny_list
    from tests.helpers import raw_part10

    head = [(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7"), (0x0008, 0x0018, b"UI", b"1.2.3.4")]
    hidden = raw_part10([(0x0008, 0x0005, b"CS", b"ISO_IR 144"), *head,
                         (0x0008, 0x1030, b"LO", b"Follow-up M\xfcller")])
    greek = raw_part10([(0x0008, 0x0005, b"CS", b"ISO_IR 126"), *head,
                        (0x0008, 0x1030, b"LO", "Εξέταση άρα θώρακα".encode("iso8859_7"))])
    policy = Policy.basic(options=("CleanDescriptors",))
    for presidio in (False, True):
        checker = HeaderChecker(policy, ProjectKey(b"scan-test-key-0123456789"), deny_list(["Müller", "Una"]), presidio)
        found = [loc for rule, _, loc, _ in checker.check(read_dataset(hidden)) if rule == "DP-H010"]
        assert found == ["StudyDescription"], presidio
        assert not [h for h in checker.check(read_dataset(greek)) if h[0] == "DP-H010"]


def test_known_identity_only_in_pixel_text_of_a_scrubbed_header(src, tmp_path):
    """The header was de-identified (pixels untouched): only OCR of the pixel text can find the name."""
    from deidpipe.dicomio import read_dataset
    from deidpipe.header.engine import deidentify_dataset

    root, answer = src
    folder = tmp_path / "scrubbed"
    folder.mkdir()
    ds = read_dataset(root / "patient000" / "burned" / "000_us_grey.dcm")
    out = deidentify_dataset(ds, Policy.basic(text_screening="denylist"), KEY)
    out.save_as(folder / "one.dcm", enforce_file_format=True)
    csv_path = _known_csv(tmp_path / "known.csv", answer, [answer.patients[0]])
    report = scan(folder, known_identities=csv_path, faces=False, workers=1)
    rules = {f.rule for f in report.findings}
    assert "DP-H010" not in rules  # nothing in the header
    assert "DP-P002" in rules and "DP-P001" in rules
    assert report.exit_code("high") == 1


def test_presidio_finds_a_name_in_kept_free_text(src, tmp_path):
    from deidpipe.dicomio import read_dataset

    root, answer = src
    folder = tmp_path / "kept"
    folder.mkdir()
    ds = read_dataset(root / answer.files()[0])
    ds.ImageComments = "Seen by Dr. John Smith in Boston on 12 March 2019"
    ds.save_as(folder / "one.dcm", enforce_file_format=True)
    policy = Policy.from_mapping({"keep": ["ImageComments"]})
    report = scan(folder, policy, pixels=False, faces=False, presidio=True)
    hits = [f for f in report.findings if f.rule == "DP-H013"]
    assert [f.location for f in hits] == ["ImageComments"]
    assert "Smith" not in to_json(report)
    assert not [f for f in scan(folder, pixels=False, faces=False).findings if f.rule == "DP-H013"]  # opt-in


# -- pixels and faces ---------------------------------------------------------------------------------------
def test_every_burned_in_text_box_is_found(src, burned_report):
    from deidpipe.synth.burned import BurnedKey

    key = BurnedKey.load(src[0] / "burned_key.json")
    found: dict[str, list[tuple[int, int, int, int]]] = {}
    for f in burned_report.findings:
        if f.rule == "DP-P001":
            m = re.fullmatch(r"pixels:frame (\d+) box (\d+),(\d+),(\d+),(\d+)", f.location)
            assert m, f.location
            x, y, w, h = (int(v) for v in m.groups()[1:])
            found.setdefault("patient000/burned/" + f.path, []).append((x, y, x + w, y + h))
            assert f.thumbnail and f.thumbnail.startswith("data:image/png;base64,")
    missed = []
    for entry in key.files:
        if not entry.path.startswith("patient000/"):
            continue
        for word in entry.words:
            x0, y0, x1, y1 = word.box
            if not any(min(x1, b[2]) > max(x0, b[0]) and min(y1, b[3]) > max(y0, b[1])
                       for b in found.get(entry.path, [])):
                missed.append((entry.path, word.kind, word.box))
    assert not [m for m in missed if m[1] == "phi"], missed


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deidpipe.synth.heads import write_heads

    root = tmp_path_factory.mktemp("scan-heads")
    write_heads(root, count=2)
    return root / "dicom"


def test_every_synth_face_is_found(heads):
    report = scan(heads, pixels=False, faces=True, workers=2)
    faces = [f for f in report.findings if f.rule == "DP-F001"]
    assert sorted(f.path.split("/")[0] for f in faces) == ["head000", "head001"]
    assert all(f.location == "face" and f.thumbnail for f in faces)


def test_no_face_and_nothing_high_after_run_defaces(heads, tmp_path):
    from deidpipe.pipeline.runner import run

    run(heads, tmp_path / "out", Policy.basic(), key=KEY, workers=2)
    report = scan(tmp_path / "out", pixels=False, faces=True, workers=2)
    assert report.objects > 0
    assert not [f for f in report.findings if f.rule == "DP-F001" or f.severity == "high"]


# -- risk and reports ---------------------------------------------------------------------------------------
def test_quasi_identifier_table_and_risk(src, header_report):
    root, answer = src
    table = header_report.qi_table
    assert table.height == len(answer.patients)
    ids = {p.patient_id for p in answer.patients}
    assert not ids & set(table.get_column("patient").to_list())
    risk = header_report.to_dict()["risk"]
    assert set(risk) == {"records", "classes", "k", "prosecutor", "journalist", "marketer", "sample_uniqueness",
                         "population_uniqueness", "population"}
    assert risk["records"] == len(answer.patients)
    r = scan(root, pixels=False, faces=False, qi="sex,age", fraction=0.01)
    assert r.quasi_identifiers == ("sex", "age") and r.risk.population == round(len(answer.patients) / 0.01)
    studies = {st.study_instance_uid for p in answer.patients for st in p.studies}
    by_study = scan(root, pixels=False, faces=False, unit="study")
    assert by_study.qi_table.columns[0] == "study" and by_study.risk.records >= len(studies)
    assert not studies & set(by_study.qi_table.get_column("study").to_list())


def test_json_keys_are_exact(header_report):
    data = json.loads(to_json(header_report))
    assert set(data) == {"objects", "findings", "risk", "counts"}
    assert set(data["counts"]) == SEVERITIES
    assert sum(data["counts"].values()) == len(data["findings"])
    for f in data["findings"]:
        assert set(f) == {"path", "rule", "severity", "location", "message"}


def test_sarif_is_structurally_valid(header_report):
    log = to_sarif(header_report)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    (run,) = log["runs"]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids)) and run["tool"]["driver"]["name"]
    for r in rules:
        assert r["shortDescription"]["text"] and r["defaultConfiguration"]["level"] in ("error", "warning", "note")
    assert len(run["results"]) == len(header_report.findings)
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] in ("error", "warning", "note", "none") and res["message"]["text"]
        (loc,) = res["locations"]
        assert loc["logicalLocations"][0]["fullyQualifiedName"]
        if "physicalLocation" in loc:
            assert loc["physicalLocation"]["artifactLocation"]["uri"]
    json.dumps(log)


def test_no_planted_value_in_any_report(src, header_report, burned_report, tmp_path):
    _, answer = src
    values = {p.value for p in answer.planted if len(p.value) >= 6 and p.kind not in ("characteristic", "age")}
    values |= {p.name.split("=")[0] for p in answer.patients} | {p.patient_id for p in answer.patients}
    for report in (header_report, burned_report):
        for fmt, text in _texts(report, tmp_path).items():
            leaked = [v for v in values if v in text]
            assert not leaked, (fmt, len(leaked))


chromium = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium is None, reason="Debian's chromium is not installed (make apt installs it)")
def test_html_renders_in_headless_chromium(burned_report, tmp_path):
    from PIL import Image

    from deidpipe.scan.html import to_html

    page = tmp_path / "report.html"
    page.write_text(to_html(burned_report), encoding="utf-8")
    shot = tmp_path / "shot.png"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1400",
            f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*args, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([*args, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert 'id="findings"' in dom and "<img" in dom
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1400)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # not blank
    pixels = img.load()
    # the thumbnails (boxes filled red, 230,30,30) and the findings table's severity badges (#c62828) are on screen
    red_box = sum(1 for x in range(0, 1200, 2) for y in range(0, 1400, 2) if pixels[x, y] == (230, 30, 30))
    badge = sum(1 for x in range(0, 1200, 2) for y in range(0, 1400, 2) if pixels[x, y] == (198, 40, 40))
    assert red_box > 20 and badge > 20


def test_an_unlisted_private_creator_is_not_printed():
    """A Private Creator is free text: one the knowledge base does not list (here a name) never reaches a
    location; a vendor's listed label does."""
    from pydicom.dataset import Dataset

    from deidpipe.scan.headers import private_creator, private_name

    ds = Dataset()
    ds.add_new(0x00110010, "LO", "DOE^JOHN")
    ds.add_new(0x00111001, "LO", "x")
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291010, "OB", b"xx")
    unlisted = private_name(0x00111001, private_creator(ds, 0x00111001))
    assert "DOE" not in unlisted and unlisted.startswith("(0011,1001)")
    assert private_name(0x00291010, private_creator(ds, 0x00291010)) == '(0029,1010) "SIEMENS CSA HEADER"'


def test_report_paths_never_show_patient_named_folders(tmp_path):
    """An archive laid out by patient (name, MRN, study date in folder names): no report format shows them,
    and findings of one folder still share one keyed token."""
    from deidpipe.synth import generate_archive
    from deidpipe.synth.answer_key import MEMBER_SEP

    answer = generate_archive(tmp_path / "src", patients=1, seed=4)
    seg = next((tmp_path / "src").rglob("SEG.dcm"))
    (seg.parent / "cut.dcm").write_bytes(seg.read_bytes()[:400])  # unreadable, in the patient's folder
    report = scan(tmp_path / "src", pixels=False, faces=False, workers=1, key=KEY)
    cut = [f.path for f in report.findings if f.path.endswith("cut.dcm")]
    assert cut and all(p.startswith("~") for p in cut)  # keyed like its readable neighbours
    values = {p.name.split("=")[0] for p in answer.patients} | {p.patient_id for p in answer.patients}
    values |= {h.value for h in answer.hidden if h.where.startswith("path") and len(h.value) >= 6}
    assert values
    for fmt, text in _texts(report, tmp_path).items():
        assert not [v for v in values if v in text], fmt
    folders = {f.path.split("/")[0] for f in report.findings if f.path.endswith("SEG.dcm")}
    assert len(folders) == 1 and next(iter(folders)).startswith("~")
    assert any(f.path.startswith("patient000/") for f in report.findings)  # plain folders stay readable
    assert MEMBER_SEP not in "".join(f.path for f in report.findings)
    shown = scan(tmp_path / "src", pixels=False, faces=False, workers=1, key=KEY, show_values=True)
    assert any(answer.patients[0].patient_id in f.path for f in shown.findings)  # show_values: paths as they are
