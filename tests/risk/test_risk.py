"""deidpipe.risk: hand-computed small tables, ARX's own figures on its adult.csv, sdcMicro's test values, the CLI.

ARX figures are from arx-deidentifier/arx ``src/test/org/deidentifier/arx/test/TestRiskMetrics.java`` (commit
aacd487) and issue 11; the model figures on the small histograms were confirmed by running ARX's own
``ModelZayatz``/``ModelPitman``/``ModelSNB`` classes (with commons-math3 3.6.1 and newtonraphson 0.0.1) here.
sdcMicro's are from sdcTools/sdcMicro ``tests/testthat/test_indivRisk.R``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from deidpipe.risk import (
    Histogram,
    RiskError,
    assess,
    dankar,
    equivalence_classes,
    histogram,
    individual_risk,
    pitman,
    population_size,
    population_uniqueness,
    sample_risks,
    sample_uniqueness,
    snb,
    weighted_risk,
    zayatz,
)
from tests.helpers import REPO, run_cli

ADULT = REPO.parent / "shared" / "reference" / "adult.csv"
SECRET = "QX" + "SECRETVALUE"  # a cell value that must never be printed

JSON_KEYS = {"records", "classes", "k", "prosecutor", "journalist", "marketer", "sample_uniqueness",
             "population_uniqueness", "population"}


@pytest.fixture(scope="module")
def adult() -> pl.DataFrame:
    if not ADULT.is_file():
        pytest.skip("../shared/reference/adult.csv is not there")
    return pl.read_csv(ADULT, separator=";", infer_schema=False)


def small() -> pl.DataFrame:
    """Classes (30,M) x3, (40,F) x2, (50,M) x1, (60,*) x1; two rows fully suppressed (null or '*')."""
    return pl.DataFrame({
        "age": ["30", "30", "30", "40", "40", "50", "*", None, "60"],
        "sex": ["M", "M", "M", "F", "F", "M", "*", "*", None],
        "note": [SECRET] * 9,
    })


# --------------------------------------------------------------------------------------------------- classes


def test_equivalence_classes_and_k_on_a_hand_table() -> None:
    df = small()
    classes = equivalence_classes(df, ["age", "sex"])
    assert classes.height == 4
    assert sorted(classes.get_column("_class_size").to_list()) == [1, 1, 2, 3]
    assert ("60", "*") in set(zip(classes.get_column("age"), classes.get_column("sex"), strict=True))
    h = histogram(df, ["age", "sex"])
    assert h.pairs() == [(1, 2), (2, 1), (3, 1)]
    assert (h.records, h.classes, h.k, h.suppressed) == (7, 4, 1, 2)
    assert sample_uniqueness(h) == pytest.approx(2 / 7)


def test_fully_suppressed_rows_are_in_no_class_but_count_in_records_and_n() -> None:
    report = assess(small(), ["age", "sex"], fraction=0.5, threshold=0.4)
    assert report.records == 9 and report.suppressed == 2 and report.classes == 4 and report.k == 1
    assert report.population == 18  # round(9 rows / 0.5): suppressed rows count towards N
    everything_suppressed = pl.DataFrame({"a": ["*", None], "b": [None, "*"]})
    empty = assess(everything_suppressed, ["a", "b"], population=10)
    assert (empty.records, empty.classes, empty.k, empty.suppressed) == (2, 0, 0, 2)
    assert empty.prosecutor.highest_risk == 0.0 and empty.sample_uniqueness == 0.0
    assert empty.population_uniqueness.dankar == 0.0


def test_unknown_column_and_bad_parameters() -> None:
    with pytest.raises(RiskError, match="unknown quasi-identifier column 'nope'"):
        assess(small(), ["age", "nope"])
    with pytest.raises(RiskError, match="not both"):
        assess(small(), ["age"], population=100, fraction=0.1)
    with pytest.raises(RiskError):
        assess(small(), ["age"], threshold=0)
    with pytest.raises(RiskError, match="smaller than the table"):
        assess(small(), ["age"], population=5)
    with pytest.raises(RiskError):
        population_size(10, 0.0)


# --------------------------------------------------------------------------------------- sample-based risks


def test_prosecutor_journalist_marketer_without_population_table() -> None:
    r = sample_risks(small(), ["age", "sex"], threshold=0.4)
    # Risks 1/3 (3 records), 1/2 (2), 1 (1), 1 (1); above 0.4: 4 of 7 records.
    assert r.prosecutor.records_at_risk == pytest.approx(4 / 7)
    assert r.prosecutor.highest_risk == 1.0
    assert r.prosecutor.success_rate == pytest.approx(4 / 7)  # classes / records
    assert r.journalist == r.prosecutor  # ARX: no population table, the sample is the population
    assert r.marketer.success_rate == pytest.approx(4 / 7)


def test_journalist_and_marketer_against_a_population_table() -> None:
    population = pl.DataFrame({
        "age": ["30"] * 6 + ["40"] * 2 + ["50"] * 4 + ["60"] + ["70"] * 5,
        "sex": ["M"] * 6 + ["F"] * 2 + ["M"] * 4 + [None] + ["F"] * 5,
    })
    r = sample_risks(small(), ["age", "sex"], threshold=0.4, population=population)
    # F_j = 6, 2, 4, 1 for f_j = 3, 2, 1, 1; 1/F_j > 0.4 for F = 2 (2 records) and F = 1 (1 record).
    assert r.journalist.records_at_risk == pytest.approx(3 / 7)
    assert r.journalist.highest_risk == 1.0
    rc1 = 4 / (6 + 2 + 4 + 1)
    rc2 = (3 / 6 + 2 / 2 + 1 / 4 + 1 / 1) / 7
    assert r.journalist.success_rate == pytest.approx(max(rc1, rc2))
    assert r.marketer.success_rate == pytest.approx(rc2)
    assert r.prosecutor.records_at_risk == pytest.approx(4 / 7)  # the prosecutor does not use the population
    report = assess(small(), ["age", "sex"], threshold=0.4, population_table=population)
    assert report.population == population.height and report.journalist == r.journalist

    with pytest.raises(RiskError, match="do not occur in the population"):
        sample_risks(small(), ["age", "sex"], population=population.filter(pl.col("age") != "50"))


# ---------------------------------------------------------------------------------------- population models


def test_zayatz_by_hand() -> None:
    # Sizes {1: 2 classes, 2: 1 class}, n = 4, N = 8. P(X=1) for K=1: 4/8; for K=2: 2*C(6,3)/C(8,4) = 4/7.
    # uniqueness = (2/3 * 1/2) / (2/3 * 1/2 + 1/3 * 4/7) = 7/11; uniques = 2 * 7/11 / (4/8) = 28/11.
    h = Histogram((1, 2), (2, 1))
    assert zayatz(h, 8) == pytest.approx(28 / 11, rel=1e-12)
    assert population_uniqueness(h, 8).zayatz == pytest.approx(7 / 22, rel=1e-12)


def test_dankar_rule_and_snb_where_it_converges() -> None:
    # Confirmed with ARX's own classes: zayatz 0.15570461665686508, pitman 0.10559934202930175,
    # snb 0.15405922500180425 (uniques / N).
    h = Histogram((1, 2, 4, 8, 9), (137, 3, 58, 36, 17))
    pu = population_uniqueness(h, 1224)
    assert pu.zayatz == pytest.approx(0.15570461665686508, abs=1e-12)
    assert pu.pitman == pytest.approx(0.10559934202930175, abs=1e-10)
    assert pu.snb == pytest.approx(0.15405922500180425, abs=1e-10)
    # Sampling fraction 783/1224 > 0.1: the smaller of Zayatz and SNB.
    assert (pu.dankar, pu.dankar_model) == (pu.snb, "snb")
    # At most 0.1: Pitman.
    big = population_uniqueness(h, 7830 * 2)
    assert big.dankar_model == "pitman" and big.dankar == big.pitman
    # No sample uniques: every model says 0, as ARX.
    none = Histogram((2, 3), (5, 5))
    assert population_uniqueness(none, 100) == population_uniqueness(none, 100).__class__(0.0, 0.0, 0.0, 0.0,
                                                                                           "dankar")
    # SNB that does not converge is None, never a made-up figure; Dankar then falls back to Zayatz.
    h2 = Histogram((1, 2), (2, 1))
    assert snb(h2, 8) is None and pitman(h2, 8) is None
    assert dankar(h2, 8) == (zayatz(h2, 8), "zayatz")


# ------------------------------------------------------------------------------------------ ARX on adult.csv


def test_arx_figures_on_adult(adult: pl.DataFrame) -> None:
    qi = adult.columns  # all 9 quasi-identifiers, as TestRiskMetrics
    assert len(qi) == 9
    h = histogram(adult, qi)
    assert (adult.height, h.classes) == (30162, 19502)
    report = assess(adult, qi, fraction=0.1, threshold=0.2)
    assert report.prosecutor.success_rate == pytest.approx(0.6465751607983555, abs=1e-15)  # average risk
    assert report.prosecutor.records_at_risk == pytest.approx(0.7781314236456468, abs=1e-15)
    assert report.prosecutor.highest_risk == 1.0
    assert report.sample_uniqueness == pytest.approx(0.5142895033485844, abs=1e-12)
    assert report.population == 301620
    pu = report.population_uniqueness
    assert pu.pitman == pytest.approx(0.27684993883653597, abs=1e-9)
    assert pu.zayatz == pytest.approx(0.3207402393466189, abs=1e-12)
    assert pu.snb is None  # "Unexpected convergence of SNB" in ARX's test
    assert (pu.dankar, pu.dankar_model) == (pu.pitman, "pitman")
    at_001 = population_uniqueness(h, population_size(adult.height, 0.01))
    assert at_001.dankar == pytest.approx(0.1446083531167384, abs=1e-9) and at_001.dankar_model == "pitman"
    at_02 = population_uniqueness(h, population_size(adult.height, 0.2))
    assert at_02.dankar == pytest.approx(0.3577099234829125, abs=1e-12) and at_02.dankar_model == "zayatz"
    at_1 = population_uniqueness(h, population_size(adult.height, 1.0))
    assert at_1.dankar == pytest.approx(0.5142895033485844, abs=1e-12)


@pytest.mark.parametrize("qi", [
    ["age", "sex", "race"],
    ["age", "sex", "race", "marital-status"],
    ["age", "sex", "race", "marital-status", "education", "native-country"],
])
def test_population_models_behave_on_adult(adult: pl.DataFrame, qi: list[str]) -> None:
    h = histogram(adult, qi)
    su = sample_uniqueness(h)
    previous: dict[str, float] = {}
    for fraction in (0.5, 0.2, 0.1, 0.05, 0.01):
        pu = population_uniqueness(h, population_size(adult.height, fraction))
        for name in ("zayatz", "pitman", "snb", "dankar"):
            value = getattr(pu, name)
            if value is None:
                continue
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (name, fraction, value)
            if name in ("zayatz", "dankar"):
                assert value <= su + 1e-12, (name, fraction, value, su)
            if name in ("zayatz", "pitman") and name in previous:
                assert value <= previous[name] + 1e-12, (name, fraction)  # shrinks as the population grows
            previous[name] = value
        assert pu.zayatz is not None and pu.dankar is not None


# -------------------------------------------------------------------------------------------------- sdcMicro


def sdc_sample() -> pl.DataFrame:
    return pl.DataFrame({
        "A": [2, 3, 2, 2, 3, 3, 1, 2], "B": [3, 3, 3, 3, 3, 3, 4, 3], "C": [1, 3, 1, 2, 1, 1, 1, 1],
        "weight": [18.0, 45.5, 39.0, 17.0, 92.0, 8.0, 123.5, 51],
    })


def test_sdcmicro_individual_risk() -> None:
    approx = individual_risk(sdc_sample(), ["A", "B", "C"], "weight").to_list()
    assert approx == pytest.approx([0.01369863, 0.08579129, 0.01369863, 0.17707583, 0.01877883, 0.01877883,
                                    0.03931625, 0.01369863], abs=1e-8)
    exact = individual_risk(sdc_sample(), ["A", "B", "C"], "weight", method="exact").to_list()
    assert exact == pytest.approx([0.01355297, 0.08579129, 0.01355297, 0.17707583, 0.01877883, 0.01877883,
                                   0.03931625, 0.01355297], abs=1e-8)
    w = weighted_risk(sdc_sample(), ["A", "B", "C"], "weight")
    assert w.expected_reidentifications == pytest.approx(sum(approx))
    assert w.global_risk == pytest.approx(sum(approx) / 8)
    assert w.highest_individual_risk == pytest.approx(0.17707583, abs=1e-8)


def test_weight_column_adds_the_weighted_block_and_n() -> None:
    report = assess(sdc_sample(), ["A", "B", "C"], weight="weight")
    assert report.population == round(sum(sdc_sample().get_column("weight")))
    d = json.loads(report.to_json())
    assert set(d) == JSON_KEYS | {"weighted"}
    assert set(d["weighted"]) == {"global_risk", "expected_reidentifications", "highest_individual_risk",
                                  "records_at_risk"}
    with pytest.raises(RiskError, match="weight"):
        assess(sdc_sample(), ["A", "B", "C"], weight="nope")


# ------------------------------------------------------------------------------------------------ JSON, CLI


def test_json_schema_is_exact() -> None:
    d = json.loads(assess(small(), ["age", "sex"], fraction=0.5).to_json())
    assert set(d) == JSON_KEYS
    assert set(d["prosecutor"]) == set(d["journalist"]) == {"records_at_risk", "highest_risk", "success_rate"}
    assert set(d["marketer"]) == {"success_rate"}
    assert set(d["population_uniqueness"]) == {"zayatz", "pitman", "snb", "dankar"}
    no_n = json.loads(assess(small(), ["age", "sex"]).to_json())
    assert no_n["population"] is None and set(no_n["population_uniqueness"].values()) == {None}


def _cli(*args: str):
    from deidpipe.cli import app

    return CliRunner().invoke(app, ["risk", *args])


def test_cli_json_and_table(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    small().write_csv(csv, separator=";")
    result = _cli(str(csv), "--qi", "age,sex", "--fraction", "0.5", "--threshold", "0.4", "--format", "json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert set(d) == JSON_KEYS and d["records"] == 9 and d["classes"] == 4 and d["population"] == 18
    assert d["prosecutor"]["records_at_risk"] == pytest.approx(4 / 7)
    table = _cli(str(csv), "--qi", "age,sex", "--population", "100")
    assert table.exit_code == 0 and "prosecutor" in table.stdout and "Dankar" in table.stdout
    parquet = tmp_path / "t.parquet"
    small().write_parquet(parquet)
    again = _cli(str(parquet), "--qi", "age,sex", "--fraction", "0.5", "--threshold", "0.4", "--format", "json")
    assert json.loads(again.stdout) == d
    for out in (result.output, table.output, again.output):
        assert SECRET not in out
    everything = _cli(str(csv), "--format", "table")  # every column a QI, the secret one included
    assert everything.exit_code == 0 and SECRET not in everything.output


@pytest.mark.parametrize("args, message", [
    (["--qi", "age,nope"], "unknown quasi-identifier column 'nope'"),
    (["--qi", "age", "--population", "100", "--fraction", "0.1"], "not both"),
    (["--qi", "age", "--fraction", "2"], "--fraction"),
    (["--qi", "age", "--weight", "note"], "weight column 'note' is not numeric"),
    (["--qi", "age", "--format", "xml"], "--format"),
])
def test_cli_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    csv = tmp_path / "t.csv"
    small().write_csv(csv)
    result = _cli(str(csv), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and SECRET not in result.output


def test_cli_bad_files_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet " + SECRET.encode())
    result = _cli(str(bad))
    assert result.exit_code == 2 and "not a readable Parquet table" in result.output and SECRET not in result.output
    missing = _cli(str(tmp_path / "missing.csv"))
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_cli_on_adult_matches_arx(adult: pl.DataFrame) -> None:
    result = _cli(str(ADULT), "--fraction", "0.1", "--format", "json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert (d["records"], d["classes"], d["k"]) == (30162, 19502, 1)
    assert d["population_uniqueness"]["pitman"] == pytest.approx(0.27684993883653597, abs=1e-9)
    assert d["population_uniqueness"]["snb"] is None


def test_risk_cli_module_is_light() -> None:
    code = ("import sys, json\nimport deidpipe.risk.cli, deidpipe.risk\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & {"polars", "numpy", "scipy", "rich", "pyarrow"}
    helped = run_cli("risk", "--help", text=True, timeout=120)
    assert helped.returncode == 0 and "Usage" in helped.stdout
