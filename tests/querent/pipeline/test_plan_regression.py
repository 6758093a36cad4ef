"""A regression cohort is planned like the others: good sheets train, bad ones stop the plan."""

import pandas as pd
import yaml

from querent.pipeline.plan import CohortInputs, Findings, plan_workflow
from querent.schemas import COHORT_SCHEMA
from tests.helpers import default_config

WHERE = CohortInputs(
    "resources/demo/cohort.csv",
    "results/features/{encoder}",
    yaml.safe_load(COHORT_SCHEMA.read_text()),
)


def _problems(tmp_path, features, sheet, **cohort):
    config = default_config(
        demo={"enabled": "auto"},
        features={"dir": str(features), "encoder": "synthetic"},
        cohort={"sheet": str(sheet), "task": "regression", **cohort},
        splits={"folds": 3},
    )
    findings = Findings()
    plan = plan_workflow(
        config,
        demo_slides="resources/demo/slides/{slide}.svs",
        where=WHERE,
        mpp_cache=tmp_path / "slide_mpp.json",
        findings=findings,
    )
    return plan, findings.problems


def test_a_regression_sheet_plans_and_its_bad_values_stop_the_plan(tmp_path, synthetic_cohort):
    sheet, features = synthetic_cohort
    plan, problems = _problems(tmp_path, features, sheet, target="signal_share")
    assert problems == [] and plan.train_slides == sorted(p.stem for p in features.glob("*.h5"))

    table = pd.read_csv(sheet, dtype=str)
    table.loc[2, "signal_share"] = "n/a%"  # line 4
    table.loc[6, "signal_share"] = ""  # line 8
    table.loc[5, "signal_share"] = "0.99"  # line 7: case_004's second slide (line 6) differs
    bad = tmp_path / "bad.csv"
    table.to_csv(bad, index=False)
    _, problems = _problems(tmp_path, features, bad, target="signal_share")
    (message,) = problems
    assert str(bad) in message and "3 problems" in message
    assert "missing values in column 'signal_share' at line 8" in message
    assert "must be finite numbers: line 4 ('n/a%')" in message
    assert "case_004 (target 0.1604, 0.99)" in message
    assert message.count("Fix:") == 3

    _, problems = _problems(tmp_path, features, sheet)  # cohort.target left at its default
    (message,) = problems
    assert "missing column(s) 'target'" in message and "set cohort.target" in message
