"""Start-up stays light: ``deidpipe --help`` and ``import deidpipe`` load no heavy library.

Speed targets live in ``benchmarks/``; these tests check the cause instead of a time, so they hold on a busy
machine: each runs a fresh interpreter and lists which heavy modules it imported. Every command's ``--help`` must
still work, since the commands now import their stage only when they run.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import run_cli

# Libraries that cost tens to hundreds of milliseconds each to import, and that no --help needs. pydicom (with
# numpy, which it imports) and polars are here too: one of them alone takes longer than the whole --help.
HEAVY = ("torch", "presidio_analyzer", "spacy", "easyocr", "tenseal", "polars", "dask", "distributed", "cv2",
         "scipy", "sklearn", "pydicom", "numpy", "cryptography", "yaml", "joblib", "pyarrow", "SimpleITK",
         "nibabel")

COMMANDS = [
    [],
    ["run"],
    ["deface"],
    ["deid-file"],
    ["keygen"],
    ["rules"],
    ["rules", "show"],
    ["reidentify"],
    ["make-recipient"],
    ["synth"],
    ["he"],
    ["he", "keygen"],
    ["he", "compile"],
    ["he", "encrypt"],
    ["he", "infer"],
    ["he", "decrypt"],
    ["risk"],
    ["scan"],
    ["serve"],
]


def _loaded_after(code: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The heavy top-level packages (and ``extra`` ones) a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    return sorted(loaded.intersection(HEAVY + extra))


def test_import_deidpipe_is_light() -> None:
    assert _loaded_after("import deidpipe") == []


def test_import_cli_is_light() -> None:
    assert _loaded_after("import deidpipe.cli") == []


def test_help_is_light() -> None:
    """``deidpipe --help`` renders the help without importing any stage."""
    code = ("import sys\nfrom deidpipe.cli import app\nsys.argv = ['deidpipe', '--help']\n"
            "try:\n    app()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code")
    # Plain help (rich_markup_mode=None): typer's rich help formatter would import rich.markdown and markdown-it.
    assert _loaded_after(code, extra=("rich", "markdown_it")) == []


def test_public_api_still_resolves() -> None:
    """The lazy package still exposes every public name, and ``from deidpipe import ...`` works."""
    import deidpipe

    for name in deidpipe.__all__:
        assert getattr(deidpipe, name) is not None, name
    from deidpipe import Policy, deidentify_dataset, run  # noqa: F401

    assert set(deidpipe.__all__) <= set(dir(deidpipe))
    with pytest.raises(AttributeError):
        _ = deidpipe.no_such_name  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command: list[str]) -> None:
    proc = run_cli(*command, "--help", text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage" in proc.stdout


def test_an_unexpected_error_is_reported_without_its_message(monkeypatch, capsys):
    """A bug deep below a command: the message may quote a value, so ``deidpipe`` reports where and what type."""
    import pytest

    import deidpipe.cli

    secret = "QX" + "SECRET"  # built at run time: the report shows source lines, and a value is not in them

    def broken() -> None:
        raise ValueError(f"Invalid value for VR PN: '{secret}^Jane'")

    monkeypatch.setattr(deidpipe.cli, "app", broken)
    with pytest.raises(SystemExit) as info:
        deidpipe.cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 3 and "ValueError" in err and "internal error" in err
    assert "QXSECRET" not in err
