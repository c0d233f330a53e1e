"""The stage contract and registry (deidpipe.pipeline.contract, deidpipe.pipeline.registry): one list in execution
order, each stage package's own Stage, and what each stage's ``needed`` test says from the index's facts alone."""

from __future__ import annotations

import dataclasses

import pytest

from deidpipe.deface.stage import DEFACE
from deidpipe.header.stage import HEADER
from deidpipe.pipeline.contract import SCOPE_OBJECT, SCOPE_SERIES, SeriesFacts, Stage
from deidpipe.pipeline.registry import STAGES, needed_stages, needs_whole_series, stage_named
from deidpipe.pixels.stage import PIXEL_TEXT
from deidpipe.policy import Policy
from deidpipe.risk.stage import RISK


def facts(modality: str = "CT", size: int | None = 256, hint: str | None = None, n: int = 3) -> SeriesFacts:
    return SeriesFacts.from_rows([{"modality": modality, "head_hint": hint, "rows": size, "columns": size}] * n)


def test_the_registry_is_one_list_of_each_packages_stage():
    assert STAGES == [HEADER, RISK, PIXEL_TEXT, DEFACE]
    assert [s.name for s in STAGES] == ["header", "risk", "pixel_text", "deface"]
    assert all(stage_named(s.name) is s for s in STAGES)
    assert [(s.scope, s.needs_source) for s in STAGES] == [(SCOPE_OBJECT, False), (SCOPE_OBJECT, False),
                                                           (SCOPE_OBJECT, True), (SCOPE_SERIES, True)]


@pytest.mark.parametrize(("series", "policy", "expected"), [
    (facts(), Policy.basic(), ("header", "pixel_text", "deface")),  # a large CT, region unknown: fail closed
    (facts(hint="other"), Policy.basic(), ("header", "pixel_text")),  # a chest: no face
    (facts(hint="other"), Policy.basic(deface="all"), ("header", "pixel_text", "deface")),
    (facts(size=None), Policy.basic(), ("header",)),  # no image: header only
    (facts(modality="US"), Policy.basic(), ("header", "pixel_text")),
    (facts(size=16), Policy.basic(), ("header", "pixel_text")),  # too small to hold a face
    (facts(), Policy.basic(pixels="off", deface="off"), ("header",)),
    # a release risk target: every object, right after the header
    (facts(size=None), Policy.from_mapping({"risk_target": {"k": 5}}), ("header", "risk")),
])
def test_needed_stages_from_the_index_facts(series, policy, expected):
    assert needed_stages(series, policy) == expected
    assert needs_whole_series(expected) == ("deface" in expected)


def test_facts_from_rows_and_from_columns_agree():
    rows = [{"modality": "MR", "head_hint": "head", "rows": 256, "columns": 192},
            {"modality": "MR", "head_hint": None, "rows": None, "columns": None}]
    columns = {name: [r[name] for r in rows] for name in ("modality", "head_hint", "rows", "columns")}
    assert SeriesFacts.from_rows(rows) == SeriesFacts.from_columns(columns)
    assert SeriesFacts.from_rows(rows).has_image and not SeriesFacts.from_rows(rows[1:]).has_image


def test_a_stage_states_its_scope():
    with pytest.raises(ValueError, match="scope"):
        dataclasses.replace(HEADER, scope="volume")
    assert isinstance(HEADER, Stage)
