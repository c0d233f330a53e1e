"""deidpipe.ruledata: the one rule-data loader, outside header/, so that the policy depends on no stage."""

from __future__ import annotations

import ast
from pathlib import Path

import deidpipe
from deidpipe.ruledata import ACTION_CODES, load_rule_file, load_table, rules_dir


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (functions and ``TYPE_CHECKING`` blocks included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_policy_imports_no_header_module():
    package = Path(deidpipe.__file__).parent
    assert not {m for m in _imports(package / "policy.py") if m.startswith("deidpipe.header")}
    assert not {m for m in _imports(package / "ruledata.py") if m.startswith("deidpipe.") and m != "deidpipe.errors"}


def test_rules_are_found_and_loaded():
    assert (rules_dir() / "ps315_table_e1_1.json").is_file()
    assert load_rule_file("options.yaml")["options"]
    assert len(load_table()) > 600 and set(ACTION_CODES) == {"D", "Z", "X", "K", "C", "U"}


def test_table_is_complete():
    """PS3.15 Table E.1-1 complete, from a known edition."""
    table = load_table()
    rows = [r for r in table.by_tag.values() if not r.addition]
    assert len(rows) + len(table.patterns) == 620  # + the odd-group private row, handled apart
    assert table.edition["built_from_standard_on"] == "2025-01-28"
