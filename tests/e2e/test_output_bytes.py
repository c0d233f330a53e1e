"""Output bytes are pinned: ``run`` on the synth archive writes exactly the files it wrote when this test was
recorded (relative path and SHA-256 of every file under DST but the audit table, whose timings differ).

A refactor that moves code (issue 18) must not change one output byte. A change that means to change the output
re-records the table on purpose::

    DEIDPIPE_RECORD_OUTPUT_BYTES=1 .venv/bin/python -m pytest tests/e2e/test_output_bytes.py

and says why in its commit message.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from deidpipe.pipeline.runner import run
from deidpipe.policy import Policy

RECORD = Path(__file__).parent / "data" / "synth_output_bytes.json"
#: Options that reach most of the header engine (cleaning, structured content, modified dates) and documents
#: redacted rather than skipped, so the PDF and CDA writers are pinned too.
POLICIES = {
    "basic": Policy.basic(),
    "options": Policy.basic(options=["RetainLongModifiedDates", "CleanDescriptors", "CleanStructuredContent",
                                     "CleanGraphics", "RetainSafePrivate"], documents="redact"),
}


def output_hashes(dst: Path) -> dict[str, str]:
    return {p.relative_to(dst).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(dst.rglob("*")) if p.is_file() and p.name != "audit.parquet"}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_output_bytes_are_unchanged(name, synth_archive, key, tmp_path):
    root, _ = synth_archive
    dst = tmp_path / "out"
    run(root, dst, POLICIES[name], key=key, workers=1, state_dir=tmp_path / "state")
    got = output_hashes(dst)
    assert len(got) > 50
    recorded = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    if os.environ.get("DEIDPIPE_RECORD_OUTPUT_BYTES") == "1":
        recorded[name] = got
        RECORD.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    expected = recorded[name]
    assert sorted(got) == sorted(expected)
    changed = [rel for rel in expected if got[rel] != expected[rel]]
    assert changed == [], f"{len(changed)} output files differ, e.g. {changed[:5]}"
