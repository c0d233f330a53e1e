"""The documentation site (mkdocs.yml, docs/): it builds with ``mkdocs build --strict`` offline, its quick start and
API pages render in headless Chromium, the quick start's commands are the real command line's, and the policy
reference names every key and option the policy accepts."""

from __future__ import annotations

import dataclasses
import html
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(chromium is None,
                                    reason="Debian's chromium is not installed (make apt installs it)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as ``make docs`` builds it, without a network: in a network namespace of its own where
    ``unshare`` may make one, and with every proxy pointing at a closed port in any case. A build that tried to
    fetch a font or an asset would fail instead of quietly using the network."""
    out = tmp_path_factory.mktemp("site")
    closed = "http://127.0.0.1:9"
    env = {**{k: v for k, v in os.environ.items() if k != "NO_MKDOCS_2_WARNING"}, "HTTP_PROXY": closed,
           "HTTPS_PROXY": closed,
           "http_proxy": closed, "https_proxy": closed, "NO_PROXY": "", "no_proxy": ""}
    unshare = shutil.which("unshare")
    offline = [unshare, "-rn"] if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True,
                                                             timeout=30).returncode == 0 else []
    proc = subprocess.run([*offline, sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           "mkdocs.yml", "--site-dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    # nothing but mkdocs' own INFO lines: no notice of a plugin or theme either (a bare `mkdocs build` is quiet)
    assert all(line.startswith("INFO") for line in proc.stderr.splitlines() if line.strip()), proc.stderr[-3000:]
    return out


def _text(dom: str) -> str:
    """The visible words of a page: tags dropped, entities decoded, white space collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    dom = re.sub(r"</?(?:span|code|a|em|strong)\b[^>]*>", "", dom)  # inline: highlighted code is split in spans
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a built page, as tests/scan/test_scan.py drives it for the HTML report."""
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1400",
            f"--user-data-dir={profile}"]
    return subprocess.run([*base, *args, page.as_uri()], capture_output=True, text=True, timeout=120, check=True)


def test_the_build_fetches_nothing(site: Path) -> None:
    """No page loads a font, script or stylesheet from the web, and no plugin that fetches or reports is on."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["font"] is False
    plugins = {p if isinstance(p, str) else next(iter(p)) for p in config.get("plugins", [])}
    assert not plugins & {"privacy", "material/privacy", "social", "material/social", "info", "material/info"}
    assert "analytics" not in (config.get("extra") or {})
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20
    remote = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?:https?:)?//", re.I)
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not remote.search(text), page.relative_to(site)
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, page.relative_to(site)


@needs_chromium
def test_quick_start_renders(site: Path, tmp_path: Path) -> None:
    from PIL import Image

    page, shot = site / "index.html", tmp_path / "shot.png"
    text = _text(_chromium(page, tmp_path / "profile", "--dump-dom", f"--screenshot={shot}").stdout)  # one launch
    for heading in ("Quick start for a data steward", "1. Install and watch it work: make demo", "2. A project key",
                    "3. De-identify: deidpipe run SRC DST", "4. The gate: deidpipe scan DST",
                    "5. What goes to the share"):
        assert heading in text, heading
    for command in ("make demo", "deidpipe keygen project.key", "export DEIDPIPE_KEY_FILE=",
                    "deidpipe run demo-output/input released --key-file project.key",
                    "deidpipe scan released --key project.key"):
        assert command in text, command
    img = Image.open(shot).convert("RGB")
    # Material's header bar (primary colour #4051b5) is drawn: the theme's stylesheet loaded from the site itself
    bar = sum(1 for x in range(0, 1200, 4) for y in range(0, 40, 4) if img.getpixel((x, y)) == (0x40, 0x51, 0xB5))
    assert bar > 200


@needs_chromium
def test_api_page_renders_signatures_and_docstrings(site: Path, tmp_path: Path) -> None:
    import inspect

    import deidpipe

    text = _text(_chromium(site / "api" / "run.html", tmp_path / "profile", "--dump-dom").stdout)
    for name in ("deidentify_dataset", "deidentify", "run", "iter_run"):
        fn = getattr(deidpipe, name)
        assert f"deidpipe.{name}" in text, name
        # the rendered signature, e.g. "run( src: str | Path, dst: str | Path, policy: Any = None, **kwargs: Any, )"
        shown = re.search(rf"(?<![\w.]){name}\( (.*?) \)", text)
        assert shown, name
        names = [re.sub(r"[:=].*", "", p).strip(" *") for p in shown.group(1).split(", ")]
        assert [n for n in names if n] == list(inspect.signature(fn).parameters), name
        first = fn.__doc__.strip().splitlines()[0]
        first = re.sub(r":\w+:`([^`]+)`", r"\1", first).replace("``", "")
        assert first in text, name
    assert "deidpipe.Policy" in text and "deidpipe.RunReport" in text


def _cli_lines(markdown: str) -> list[list[str]]:
    """The words of every command line in the page's shell blocks, comments dropped."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(words)
    return lines


def test_quick_start_commands_are_the_real_command_line() -> None:
    """Every ``deidpipe`` command and option the quick start shows exists; ``make`` targets are the Makefile's;
    the key's environment variables are the ones the key reader consults."""
    import typer

    from deidpipe.cli import app
    from deidpipe.keys import KEY_ENV, KEY_FILE_ENV

    cli = typer.main.get_command(app)
    makefile = (ROOT / "Makefile").read_text()
    lines = _cli_lines((ROOT / "docs" / "index.md").read_text())
    seen = set()
    for words in lines:
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, re.M), words
        elif words[0] == "export":
            assert words[1].split("=")[0] in (KEY_ENV, KEY_FILE_ENV), words
        else:
            assert words[0] == "deidpipe", words
            cmd = cli
            rest = words[1:]
            while hasattr(cmd, "commands"):  # a group (typer has its own click: no isinstance on click's classes)
                cmd = cmd.commands[rest[0]]
                rest = rest[1:]
            options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            for word in rest:
                if word.startswith("-"):
                    assert word.split("=")[0] in options, (words[:2], word)
            seen.add(cmd.name)
    assert {"keygen", "run", "scan"} <= seen


def test_policy_reference_names_every_key_and_option() -> None:
    """docs/policy.md lists every option of rules/options.yaml and every key a policy file takes; each key it
    lists is one Policy.from_mapping knows."""
    from deidpipe.errors import PolicyError
    from deidpipe.policy import Policy, option_catalogue

    page = (ROOT / "docs" / "policy.md").read_text()
    keys = set(re.findall(r"^\| `(\w+)` \|", page.split("## Keys", 1)[1].split("\n## ", 1)[0], re.M))
    options = set(re.findall(r"^\| `(\w+)` \|", page.split("## Profile options", 1)[1], re.M))
    assert options == set(option_catalogue())
    file_keys = {"keep", "remove", "overrides", "deid_recipes", "reversible"}
    internal = {"overrides", "additions", "recipients", "source"}  # built from the file keys above
    fields = {f.name for f in dataclasses.fields(Policy)} - internal
    assert keys == fields | file_keys
    for key in keys:
        try:
            Policy.from_mapping({key: None})
        except PolicyError as exc:  # a wrong value, fine; an unknown key is not
            assert "unknown policy key" not in str(exc), key
    with pytest.raises(PolicyError, match="unknown policy key"):
        Policy.from_mapping({"no_such_key": None})
