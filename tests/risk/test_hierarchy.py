"""deidpipe.risk.hierarchy: ARX hierarchy files, interval widths, validation that never quotes a value."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from deidpipe.risk import Hierarchy, RiskError
from deidpipe.risk.hierarchy import parse_spec
from tests.helpers import REPO

ARX_DIR = REPO / "benchmarks" / "data" / "arx_adult"
SECRET = "QX" + "SECRETVALUE"  # a value that must never appear in a message


def test_arx_files_load_as_they_are() -> None:
    age = Hierarchy.from_csv("age", ARX_DIR / "adult_hierarchy_age.csv")
    assert age.height == 5 and len(age.rows) == 100
    assert age.rows[0] == ("1", "0-4", "0-9", "0-19", "*")
    sex = Hierarchy.from_csv("sex", ARX_DIR / "adult_hierarchy_sex.csv")
    assert sex.height == 2 and sex.values == ("Male", "Female")
    # ARX's DomainShareMaterialized: the share of the hierarchy's rows under a label
    assert sex.shares(0) == {"Male": 0.5, "Female": 0.5}
    assert sex.shares(1) == {"*": 1.0}
    assert age.shares(1)["0-4"] == pytest.approx(5 / 100)  # ages 1 to 5 (sic, ARX's file) of 1 to 100
    assert age.source == "adult_hierarchy_age.csv"


def test_comma_separated_file_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("a,x,*\n\nb,x,*\nc,y,*\n")
    h = Hierarchy.from_csv("col", path)
    assert h.height == 3 and h.labels(1) == ["x", "x", "y"]
    assert h.shares(1) == pytest.approx({"x": 2 / 3, "y": 1 / 3})


@pytest.mark.parametrize(("rows", "message"), [
    ([("a", "x"), ("b",)], "row 2 has 1 levels, row 1 has 2"),
    ([("a", "x"), ("a", "y")], "1 values are defined on more than one row"),
    ([("a", "x", "*"), ("b", "x", "*"), ("c", "y", "*"), ("d", "y", "z")], "1 labels at level 1 generalise to more"),
    ([("a", ""), ("b", "*")], "row 1 has an empty cell"),
    ([], "has no row"),
])
def test_invalid_hierarchies_are_refused_without_values(rows: list[tuple[str, ...]], message: str) -> None:
    with pytest.raises(RiskError, match=message) as err:
        Hierarchy.from_rows(SECRET + "col", [tuple(SECRET + c if c else c for c in r) for r in rows])
    assert str(err.value).count(SECRET) == 1  # the column name only, never a value


def test_values_missing_from_the_hierarchy_are_counted_not_quoted() -> None:
    h = Hierarchy.from_rows("sex", [("M", "*"), ("F", "*")])
    df = pl.DataFrame({"sex": ["M", "F", SECRET, SECRET + "2", None, "*"]})
    with pytest.raises(RiskError) as err:
        h.check(df)
    assert "column 'sex': 2 distinct values" in str(err.value) and SECRET not in str(err.value)
    with pytest.raises(RiskError, match="column 'nope'"):
        Hierarchy.from_rows("nope", [("a", "*")]).check(df)


def test_levels_applied_by_polars_nulls_and_stars_stay_suppressed() -> None:
    h = Hierarchy.from_rows("ward", [("W1", "D1", "*"), ("W2", "D1", "*"), ("W3", "D2", "*")])
    df = pl.DataFrame({"ward": ["W1", "W3", None, "*", "W2"]})
    assert df.select(h.expression(0)).to_series().to_list() == ["W1", "W3", "*", "*", "W2"]
    assert df.select(h.expression(1)).to_series().to_list() == ["D1", "D2", "*", "*", "D1"]
    assert df.select(h.expression(2)).to_series().to_list() == ["*"] * 5
    with pytest.raises(RiskError, match="levels 0 to 2, not 3"):
        h.expression(3)


def test_widths_make_arx_style_nested_intervals() -> None:
    h = Hierarchy.from_widths("age", ["5", "10", "20", "*"], ["39", "4", "40", None, "*", "0", "39"])
    assert h.values == ("0", "39", "4", "40")  # distinct values, as text, nulls and '*' left out
    assert h.rows[1] == ("39", "[35, 40[", "[30, 40[", "[20, 40[", "*")
    assert h.rows[3] == ("40", "[40, 45[", "[40, 50[", "[40, 60[", "*")
    assert h.source == "widths 5,10,20,*"
    decimals = Hierarchy.from_widths("bmi", ["2.5"], ["21.3", "-1"])
    assert decimals.rows == (("-1", "[-2.5, 0["), ("21.3", "[20, 22.5["))


@pytest.mark.parametrize(("widths", "values", "message"), [
    (["5", "7", "*"], ["1"], "multiple of the one before"),
    (["0"], ["1"], "positive"),
    (["a"], ["1"], "widths must be numbers"),
    (["5", "*"], ["1", SECRET, SECRET + "x"], "2 distinct values of the column are not numbers"),
    (["5"], [None], "no value to generalise"),
])
def test_bad_widths(widths: list[str], values: list[str | None], message: str) -> None:
    with pytest.raises(RiskError, match=message) as err:
        Hierarchy.from_widths("age", widths, values)
    assert SECRET not in str(err.value)


def test_parse_spec_file_or_widths(tmp_path: Path) -> None:
    df = pl.DataFrame({"age": ["30", "41"], "sex": ["M", "F"]})
    path = tmp_path / "sex.csv"
    path.write_text("M;*\nF;*\n")
    assert parse_spec(f"sex={path}", df).values == ("M", "F")
    assert parse_spec("age=10,*", df).rows[0] == ("30", "[30, 40[", "*")
    for bad, message in (("age", "COLUMN=FILE"), ("=5", "COLUMN=FILE"), ("x=5,*", "column 'x'"),
                         (f"sex={tmp_path / 'missing.csv'}", "no such file")):
        with pytest.raises(RiskError, match=message):
            parse_spec(bad, df)


def test_identity_keeps_or_suppresses() -> None:
    h = Hierarchy.identity("sex", ["M", "F", None, "M"])
    assert h.rows == (("F", "*"), ("M", "*")) and h.source == "identity"
