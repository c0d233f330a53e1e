"""The rule table of the Basic Profile (deidpipe.header.rules): PS3.15 Table E.1-1 complete, from a known edition."""

from __future__ import annotations

from deidpipe.header.rules import load_table


def test_table_is_complete():
    table = load_table()
    rows = [r for r in table.by_tag.values() if not r.addition]
    assert len(rows) + len(table.patterns) == 620  # + the odd-group private row, handled apart
    assert table.edition["built_from_standard_on"] == "2025-01-28"
