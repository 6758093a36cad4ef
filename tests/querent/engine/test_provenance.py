"""Provenance records: what a trained model was made from."""

import hashlib
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from querent.engine.provenance import (
    file_sha256,
    git_revision,
    package_versions,
    provenance,
    provenance_rows,
)

ROOT = Path(__file__).resolve().parents[3]


def test_record_holds_config_sheet_hash_and_versions(tmp_path):
    sheet = tmp_path / "cohort.csv"
    pd.DataFrame({"slide_id": ["a", "b"], "label": ["x", "y"]}).to_csv(sheet, index=False)
    record = provenance({"training": {"epochs": 3}, "paths": [Path("x")]}, sheet)
    assert record["config"] == {"training": {"epochs": 3}, "paths": ["x"]}
    assert record["cohort_sheet_sha256"] == hashlib.sha256(sheet.read_bytes()).hexdigest()
    assert record["packages"]["numpy"] == __import__("numpy").__version__
    sheet.write_text("slide_id,label\na,y\n")  # an edited sheet has another hash
    assert file_sha256(sheet) != record["cohort_sheet_sha256"]


def test_missing_packages_and_sheet_are_said_not_guessed():
    assert package_versions(("no-such-distribution",)) == {"no-such-distribution": "not installed"}
    assert provenance(None, None)["cohort_sheet_sha256"] == ""


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_git_revision_is_the_checkout_head():
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert re.fullmatch(re.escape(head) + r"(\+dirty)?", git_revision())


def test_rows_flatten_nested_keys():
    rows = dict(provenance_rows({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]}))
    assert rows == {"a.b": "1", "a.c.d": "x", "e": "[1, 2]"}
