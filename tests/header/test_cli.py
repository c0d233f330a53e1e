"""The header stage's CLI commands (deidpipe.header.cli): ``deid-file``, ``rules show`` and ``keygen``."""

from __future__ import annotations

from typer.testing import CliRunner

from deidpipe.cli import app
from deidpipe.dicomio import read_dataset, write_dataset

runner = CliRunner()


def test_cli_deid_file_rules_show_keygen(tmp_path, ct):
    src = tmp_path / "in.dcm"
    write_dataset(ct, src)
    res = runner.invoke(app, ["keygen", str(tmp_path / "project.key")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["deid-file", str(src), str(tmp_path / "out.dcm"), "--key-file",
                              str(tmp_path / "project.key"), "-o", "CleanDescriptors"])
    assert res.exit_code == 0, res.output
    assert "Okonkwo" not in res.output
    out = read_dataset(tmp_path / "out.dcm")
    assert out.PatientIdentityRemoved == "YES" and "Okonkwo" not in out.StudyDescription
    res = runner.invoke(app, ["rules", "show", "--sop-class", "CT Image Storage", "-o", "RetainUIDs",
                              "--changed-only"])
    assert res.exit_code == 0 and "RetainUIDs" in res.output and "(0020,000D)" in res.output
    res = runner.invoke(app, ["deid-file", str(tmp_path / "missing.dcm"), str(tmp_path / "o.dcm"),
                              "--key-file", str(tmp_path / "project.key")])
    assert res.exit_code == 1 and "does not exist" in " ".join(res.output.split())


def test_rules_show_resolves_for_a_sop_class():
    res = runner.invoke(app, ["rules", "show", "--sop-class", "CT Image Storage"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "Type 2C in CT Image" in res.output and "Type 3 in CT Image" in res.output
    res = runner.invoke(app, ["rules", "show", "--sop-class", "No Such Storage"])
    assert res.exit_code == 1 and "unknown SOP class" in res.output
