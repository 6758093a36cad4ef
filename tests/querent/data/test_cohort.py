import numpy as np
import pandas as pd
import pytest
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from extractors.errors import CohortError, SettingsError
from querent.data.cohort import CohortSettings, read_cohort
from querent.schemas import COHORT_SCHEMA

SURVIVAL = CohortSettings(task="survival")


def _sheet(tmp_path, text, name="cohort.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(tmp_path, text, settings=None, name="cohort.csv"):
    path = _sheet(tmp_path, text, name)
    with pytest.raises(CohortError) as info:
        read_cohort(path, settings or CohortSettings())
    message = str(info.value)
    assert str(path) in message and "Fix:" in message
    return message


# --- good sheets -----------------------------------------------------------------------------


def test_classification_csv_keeps_ids_as_strings_and_ignores_extra_columns(tmp_path):
    text = "extra,slide_id,case_id,label,age\nx,003,010,B,61\ny,001,007,A,50\nz,002,007,A,50\n"
    cohort = read_cohort(_sheet(tmp_path, text), CohortSettings())
    assert cohort.task == "classification"
    assert list(cohort.table.columns) == ["slide_id", "case_id", "label"]
    assert cohort.slide_ids == ["001", "002", "003"]
    assert cohort.table["case_id"].tolist() == ["007", "007", "010"]
    assert list(cohort.table.index) == [0, 1, 2]
    assert cohort.classes == ("A", "B")
    assert cohort.source == str(tmp_path / "cohort.csv")
    pd.testing.assert_frame_equal(
        cohort.cases(), pd.DataFrame({"case_id": ["007", "010"], "label": ["A", "B"]})
    )
    assert cohort.strata().to_dict() == {"007": 0, "010": 1}
    targets = cohort.targets(["003", "001", "002"])
    assert targets.dtype == np.int64 and targets.tolist() == [1, 0, 0]
    sub = cohort.subset(["003", "002"])
    assert sub.slide_ids == ["002", "003"] and sub.classes == ("A", "B")
    assert list(sub.table.index) == [0, 1]


def test_tsv_custom_label_column_and_class_order_from_settings(tmp_path):
    text = "slide_id\tcase_id\tsubtype\nS1\tP1\tluad\nS2\tP2\tlusc\nS3\tP3\tluad\n"
    settings = CohortSettings(label="subtype", classes=["lusc", "luad"])
    assert settings.classes == ("lusc", "luad")
    cohort = read_cohort(_sheet(tmp_path, text, "cohort.tsv"), settings)
    assert cohort.classes == ("lusc", "luad")
    assert cohort.table["label"].tolist() == ["luad", "lusc", "luad"]
    assert cohort.targets(["S1", "S2"]).tolist() == [1, 0]


def test_numeric_labels_are_strings_and_classes_are_sorted(tmp_path):
    text = "slide_id,case_id,label\nS1,P1,1\nS2,P2,0\nS3,P3,1\n"
    cohort = read_cohort(_sheet(tmp_path, text), CohortSettings())
    assert cohort.classes == ("0", "1")
    assert cohort.targets(cohort.slide_ids).tolist() == [1, 0, 1]
    assert CohortSettings(classes=[0, 1]).classes == ("0", "1")


def test_declared_class_may_be_absent_from_the_sheet(tmp_path):
    text = "slide_id,case_id,label\nS1,P1,a\nS2,P2,b\n"
    cohort = read_cohort(_sheet(tmp_path, text), CohortSettings(classes=("c", "b", "a")))
    assert cohort.classes == ("c", "b", "a")
    assert cohort.targets(["S1", "S2"]).tolist() == [2, 1]


def test_survival_parsing(tmp_path):
    text = (
        "slide_id,case_id,os_months,dead\n"
        "S1,P1,12.5,1\nS2,P1,12.5,1\nS3,P2,30,0\nS4,P3,7,True\nS5,P4,9,false\nS6,P5,3,1.0\n"
    )
    settings = CohortSettings(task="survival", time="os_months", event="dead")
    cohort = read_cohort(_sheet(tmp_path, text), settings)
    assert cohort.classes == ()
    assert list(cohort.table.columns) == ["slide_id", "case_id", "time", "event"]
    assert cohort.table["time"].dtype == np.float64 and cohort.table["event"].dtype == np.int64
    assert cohort.table["event"].tolist() == [1, 1, 0, 1, 0, 1]
    time, event = cohort.targets(["S4", "S1"])
    assert time.dtype == np.float64 and event.dtype == np.int64
    assert time.tolist() == [7.0, 12.5] and event.tolist() == [1, 1]
    cases = cohort.cases()
    assert cases["case_id"].tolist() == ["P1", "P2", "P3", "P4", "P5"]
    assert cases["time"].tolist() == [12.5, 30.0, 7.0, 9.0, 3.0]
    assert cohort.strata().tolist() == [1, 0, 1, 0, 1]


def test_blank_lines_keep_line_numbers(tmp_path):
    message = _error(tmp_path, "slide_id,case_id,label\nS1,P1,A\n\nS2,P2,\n")
    assert "line 4" in message


# --- bad sheets ------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(CohortError, match="not found"):
        read_cohort(tmp_path / "nope.csv", CohortSettings())


def test_unreadable_file(tmp_path):
    path = tmp_path / "cohort.csv"
    path.write_bytes(b"slide_id,case_id,label\n\xff\xfe,P1,A\n")
    with pytest.raises(CohortError, match="not a readable CSV file"):
        read_cohort(path, CohortSettings())


def test_missing_columns_lists_what_is_there(tmp_path):
    message = _error(tmp_path, "slide_id,case,diagnosis\nS1,P1,A\n")
    assert "'case_id'" in message and "'label'" in message
    assert "'case'" in message and "'diagnosis'" in message


def test_missing_survival_column(tmp_path):
    message = _error(tmp_path, "slide_id,case_id,time\nS1,P1,3\n", SURVIVAL)
    assert "'event'" in message and "'time'" in message


def test_header_only(tmp_path):
    assert "no slides" in _error(tmp_path, "slide_id,case_id,label\n")


def test_duplicate_slide_ids(tmp_path):
    message = _error(tmp_path, "slide_id,case_id,label\nS1,P1,A\nS2,P2,B\nS1,P3,B\n")
    assert "duplicate" in message and "S1 (line 2, line 4)" in message and "S2" not in message


@pytest.mark.parametrize("column", ["slide_id", "case_id"])
def test_empty_ids(tmp_path, column):
    text = "slide_id,case_id,label\nS1,P1,A\nS2,P2,B\n"
    text = text.replace("S2", "") if column == "slide_id" else text.replace("P2", "")
    message = _error(tmp_path, text)
    assert f"empty {column}" in message and "line 3" in message


def test_unsafe_slide_id(tmp_path):
    message = _error(tmp_path, "slide_id,case_id,label\nS1,P1,A\nmy slide,P2,B\n")
    assert "'my slide' (line 3)" in message


def test_missing_labels(tmp_path):
    message = _error(tmp_path, "slide_id,case_id,label\nS1,P1,A\nS2,P2,\nS3,P3,NA\nS4,P4,B\n")
    assert "missing labels" in message and "line 3, line 4" in message


def test_label_not_in_classes(tmp_path):
    text = "slide_id,case_id,label\nS1,P1,A\nS2,P2,B\nS3,P3,C\nS4,P4,C\n"
    message = _error(tmp_path, text, CohortSettings(classes=("A", "B")))
    assert "'C' (line 4, line 5)" in message and "cohort.classes" in message


def test_only_one_class(tmp_path):
    message = _error(tmp_path, "slide_id,case_id,label\nS1,P1,A\nS2,P2,A\n")
    assert "only one class ('A')" in message


def test_case_with_two_labels(tmp_path):
    text = "slide_id,case_id,label\nS1,P1,A\nS2,P1,B\nS3,P2,B\nS4,P2,B\n"
    message = _error(tmp_path, text)
    assert "P1 (label A, B)" in message and "P2" not in message


@pytest.mark.parametrize(
    ("value", "shown"), [("", "''"), ("-2", "'-2'"), ("0", "'0'"), ("ten", "'ten'"), ("inf", "")]
)
def test_bad_times(tmp_path, value, shown):
    text = f"slide_id,case_id,time,event\nS1,P1,5,1\nS2,P2,{value},0\nS3,P3,4,1\n"
    message = _error(tmp_path, text, SURVIVAL)
    assert "numbers > 0" in message and f"line 3 ({shown}" in message


def test_bad_events(tmp_path):
    text = "slide_id,case_id,time,event\nS1,P1,5,1\nS2,P2,6,2\nS3,P3,4,yes\nS4,P4,4,\n"
    message = _error(tmp_path, text, SURVIVAL)
    assert "line 3 ('2'), line 4 ('yes'), line 5 ('')" in message


def test_case_with_two_follow_ups(tmp_path):
    text = "slide_id,case_id,time,event\nS1,P1,5,1\nS2,P1,6,1\nS3,P2,4,0\nS4,P2,4,1\n"
    message = _error(tmp_path, text, SURVIVAL)
    assert "P1 (time 5.0, 6.0; event 1)" in message
    assert "P2 (time 4.0; event 0, 1)" in message


def test_no_event(tmp_path):
    text = "slide_id,case_id,time,event\nS1,P1,5,0\nS2,P2,6,0\n"
    assert "no event" in _error(tmp_path, text, SURVIVAL)


def test_long_lists_are_cut_after_ten(tmp_path):
    rows = "".join(f"S{i:02d},P{i:02d},\n" for i in range(14))
    message = _error(tmp_path, "slide_id,case_id,label\n" + rows)
    assert "line 11" in message and "line 12" not in message and "and 4 more" in message


def test_every_problem_of_a_sheet_is_reported_at_once(tmp_path):
    text = (
        "slide_id,case_id,label\nS1,P1,A\nS1,P2,B\nbad id,P3,A\nS4,,B\nS5,P5,\nS6,P6,C\nS7,P6,A\n"
    )
    message = _error(tmp_path, text, CohortSettings(classes=("A", "B")))
    lines = message.splitlines()
    assert "6 problems" in lines[0] and len(lines) == 7
    for expected in (
        "empty case_id at line 5",
        "'bad id' (line 4)",
        "duplicate slide ids: S1 (line 2, line 3)",
        "missing labels at line 6",
        "'C' (line 7)",
        "P6 (label A, C)",
    ):
        assert sum(expected in line for line in lines[1:]) == 1, expected
    assert all("Fix:" in line for line in lines[1:])


def test_every_survival_problem_is_reported_at_once(tmp_path):
    text = "slide_id,case_id,time,event\nS1,P1,-1,0\nS2,P2,5,maybe\nS3,P3,4,0\nS4,P3,6,0\n"
    message = _error(tmp_path, text, SURVIVAL)
    assert "4 problems" in message
    for expected in (
        "line 2 ('-1')",
        "line 3 ('maybe')",
        "P3 (time 4.0, 6.0; event 0)",
        "no event",
    ):
        assert expected in message, expected


def test_settings_are_checked():
    with pytest.raises(SettingsError, match="classification, survival, regression"):
        CohortSettings(task="ordinal")
    with pytest.raises(SettingsError, match="'A'"):
        CohortSettings(classes=("A", "B", "A"))


# --- regression ------------------------------------------------------------------------------

REGRESSION = CohortSettings(task="regression", target="tmb")


def test_regression_parsing(tmp_path):
    text = "slide_id,case_id,tmb,label\nS1,P1,2.5,x\nS2,P1,2.50,x\nS3,P2,-1e1,y\nS4,P3,7,x\n"
    cohort = read_cohort(_sheet(tmp_path, text), REGRESSION)
    assert cohort.task == "regression" and cohort.classes == ()
    assert list(cohort.table.columns) == ["slide_id", "case_id", "target"]
    assert cohort.table["target"].dtype == np.float64
    values = cohort.targets(["S4", "S3", "S1"])
    assert values.dtype == np.float64 and values.tolist() == [7.0, -10.0, 2.5]
    assert cohort.cases()["target"].tolist() == [2.5, -10.0, 7.0]
    assert cohort.strata(3).to_dict() == {"P1": 1, "P2": 0, "P3": 2}  # tertiles of the cases
    assert cohort.strata(1).tolist() == [0, 0, 0]
    assert cohort.subset(["S3", "S4"]).targets(["S4"]).tolist() == [7.0]


def test_bad_regression_values_name_their_lines(tmp_path):
    text = (
        'slide_id,case_id,tmb\nS1,P1,1.5\nS2,P2,\nS3,P3,NA\nS4,P4,high\nS5,P5,"3,5"\n'
        "S6,P6,inf\nS7,P7,4\n"
    )
    lines = _error(tmp_path, text, REGRESSION).splitlines()
    assert "2 problems" in lines[0] and len(lines) == 3
    assert "missing values in column 'tmb' at line 3, line 4. Fix: fill in" in lines[1]
    assert (
        "column 'tmb' must be finite numbers: line 5 ('high'), line 6 ('3,5'), line 7 ('inf')"
        in lines[2]
    )


def test_regression_case_with_two_values(tmp_path):
    text = "slide_id,case_id,tmb\nS1,P1,1\nS2,P1,2\nS3,P2,3\nS4,P2,3.0\n"
    message = _error(tmp_path, text, REGRESSION)
    assert "P1 (target 1.0, 2.0)" in message and "P2" not in message
    assert "the case's value" in message


def test_regression_needs_values_that_differ(tmp_path):
    message = _error(tmp_path, "slide_id,case_id,tmb\nS1,P1,4\nS2,P2,4\n", REGRESSION)
    assert "holds one value" in message and "cohort.target" in message


def test_missing_regression_column_names_the_key(tmp_path):
    message = _error(tmp_path, "slide_id,case_id,target\nS1,P1,4\n", REGRESSION)
    assert "'tmb'" in message and "cohort.target" in message and "cohort.label" not in message


def test_regression_refuses_classes():
    with pytest.raises(SettingsError, match=r"cohort.classes.*regression.*Fix"):
        CohortSettings(task="regression", classes=["a", "b"])


# --- schema ----------------------------------------------------------------------------------

SCHEMA = COHORT_SCHEMA


def test_schema_accepts_a_good_sheet_and_rejects_bad_ones():
    good = pd.DataFrame(
        {"slide_id": ["001", "TCGA-AB.1_x"], "case_id": ["P1", "P2"], "label": ["A", "B"]}
    )
    validate(good, str(SCHEMA))
    with pytest.raises(WorkflowError, match="does not match"):
        validate(pd.DataFrame({"slide_id": ["S1", "bad id"], "case_id": ["P1", "P2"]}), str(SCHEMA))
    with pytest.raises(WorkflowError, match="'case_id' is a required property"):
        validate(pd.DataFrame({"slide_id": ["S1"]}), str(SCHEMA))
