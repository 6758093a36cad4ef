"""Clinical covariates: the sheet's checks, and the encoder fitted on training cases."""

import json
import logging

import numpy as np
import pandas as pd
import pytest

from extractors.errors import CohortError, SettingsError
from querent.data.cohort import CohortSettings, read_cohort
from querent.data.covariates import CovariateEncoder, column_kinds

SETTINGS = CohortSettings(covariates=["age", "stage"])
SHEET = (
    "slide_id,case_id,label,age,stage,extra\n"
    "S1,P1,A,60,II,x\n"
    "S2,P1,A,60,II,y\n"
    "S3,P2,B,,I,z\n"
    "S4,P3,A,70,NA,z\n"
    "S5,P4,B,50,I,z\n"
)


def _sheet(tmp_path, text, name="cohort.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(tmp_path, text, settings=SETTINGS):
    path = _sheet(tmp_path, text)
    with pytest.raises(CohortError) as info:
        read_cohort(path, settings)
    message = str(info.value)
    assert str(path) in message and "Fix:" in message
    return message


def test_the_table_carries_the_covariates_through_a_subset(tmp_path):
    cohort = read_cohort(_sheet(tmp_path, SHEET), SETTINGS)
    assert list(cohort.table.columns) == ["slide_id", "case_id", "label", "age", "stage"]
    assert cohort.covariates == ("age", "stage")
    assert cohort.covariate_kinds() == {"age": "numeric", "stage": "categorical"}
    sub = cohort.subset(["S4", "S3"])
    assert sub.covariates == ("age", "stage") and sub.table["age"].tolist() == ["", "70"]
    assert read_cohort(_sheet(tmp_path, SHEET), CohortSettings()).covariates == ()


def test_the_encoder_uses_training_statistics_and_handles_missing_values(caplog):
    cases = pd.DataFrame(
        {"age": ["40", "60", "", "80"], "stage": ["I", "II", "NA", "II"]},
        index=["P1", "P2", "P3", "P4"],
    )
    encoder = CovariateEncoder.fit(cases, column_kinds(cases, ["age", "stage"]))
    assert encoder.features == ["age", "age_missing", "stage=I", "stage=II", "stage=<missing>"]
    sd = np.std([40, 60, 80])
    expected = [
        [-20 / sd, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 1, 0, 0, 1],  # missing age: the training mean (0) and its indicator
        [20 / sd, 0, 0, 1, 0],
    ]
    np.testing.assert_allclose(encoder.transform(cases), expected, rtol=1e-6)
    # held-out cases: statistics stay the training ones; a new category is all zeros, logged
    held = pd.DataFrame({"age": ["100"], "stage": ["IV"]}, index=["P9"])
    with caplog.at_level(logging.WARNING):
        encoded = encoder.transform(held)
    np.testing.assert_allclose(encoded, [[40 / sd, 0, 0, 0, 0]], rtol=1e-6)
    assert "'stage'" in caplog.text and "P9 ('IV')" in caplog.text
    # plain data in the checkpoint, the same encoder back
    state = json.loads(json.dumps(encoder.state()))
    assert CovariateEncoder.from_state(state) == encoder


def test_a_value_missing_where_training_had_none_gets_the_mean_and_zeros(caplog):
    cases = pd.DataFrame({"age": ["1", "3"], "stage": ["I", "II"]}, index=["P1", "P2"])
    encoder = CovariateEncoder.fit(cases, {"age": "numeric", "stage": "categorical"})
    assert encoder.dim == 3  # no indicator, no missing category
    with caplog.at_level(logging.WARNING):
        encoded = encoder.transform(pd.DataFrame({"age": [""], "stage": [""]}, index=["P5"]))
    assert encoded.tolist() == [[0.0, 0.0, 0.0]] and "no training case lacked" in caplog.text
    with pytest.raises(CohortError, match=r"'age' is a number.*P6 \('old'\)"):
        encoder.transform(pd.DataFrame({"age": ["old"], "stage": ["I"]}, index=["P6"]))


def test_slide_vectors_refuse_missing_columns_and_slides():
    encoder = CovariateEncoder.fit(pd.DataFrame({"age": ["1", "3"]}), {"age": "numeric"})
    sheet = pd.DataFrame({"slide_id": ["a", "b"], "age": ["1", ""]})
    vectors = encoder.slide_vectors(sheet, ["b", "a"], "new.csv")
    assert list(vectors) == ["b", "a"] and vectors["a"].tolist() == [-1.0]
    with pytest.raises(CohortError, match=r"new.csv: .*no column 'age'.*cohort.covariates"):
        encoder.slide_vectors(sheet.drop(columns="age"), ["a"], "new.csv")
    with pytest.raises(CohortError, match=r"without a row \(c\)"):
        encoder.slide_vectors(sheet, ["a", "c"], "new.csv")


def test_a_case_whose_slides_disagree_is_refused_with_the_sheet(tmp_path):
    text = SHEET.replace("S2,P1,A,60,II", "S2,P1,A,61,II")
    message = _error(tmp_path, text)
    assert "cases whose slides differ in a covariate: P1 (age 60, 61; stage II)" in message
    # one slide's empty cell and another's NA are both missing: no disagreement
    same = SHEET.replace("S1,P1,A,60,II", "S1,P1,A,60,").replace("S2,P1,A,60,II", "S2,P1,A,60,NA")
    assert read_cohort(_sheet(tmp_path, same), SETTINGS).table["stage"].tolist()[:2] == ["", "NA"]


@pytest.mark.parametrize(
    ("covariates", "text", "expected"),
    [
        (["age", "grade"], SHEET, "cohort.covariates column(s) 'grade' not in the sheet"),
        (["age", "stage"], SHEET.replace(",70,", ",,"), None),  # one age left: fine
        (
            ["extra", "empty"],
            SHEET.replace("extra", "extra,empty").replace(",x", ",x,"),
            "'empty' hold no value",
        ),
        (["label"], SHEET, "cohort.covariates names 'label', an id or target column"),
    ],
)
def test_sheet_problems_name_the_key_and_the_fix(tmp_path, covariates, text, expected):
    settings = CohortSettings(covariates=covariates)
    if expected is None:
        assert read_cohort(_sheet(tmp_path, text), settings).covariates == tuple(covariates)
        return
    message = _error(tmp_path, text, settings)
    assert expected in message and "cohort.covariates" in message


def test_an_all_missing_column_is_refused(tmp_path):
    text = SHEET.replace(",60,", ",,").replace(",70,", ",NA,").replace(",50,", ",,")
    message = _error(tmp_path, text)
    assert "column(s) 'age' hold no value at all" in message


def test_a_covariate_listed_twice_is_refused():
    with pytest.raises(SettingsError, match="cohort.covariates names 'age' more than once"):
        CohortSettings(covariates=["age", "age"])
