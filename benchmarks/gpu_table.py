"""One table of the GPU check: the gpu-marked tests, then every benchmark's goals and rows.

Reads the JSON the GPU benchmarks wrote (``{"benchmark", "device", "rows", "goals"}``) and
pytest's JUnit XML of the gpu-marked tests; writes their summary to ``--out``.

    python benchmarks/gpu_table.py --tests junit.xml results/gpu_*.json [--out gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def test_counts(junit: Path) -> dict:
    """Passed, failed (errors included) and skipped gpu-marked tests, and the failures' names."""
    if not junit.exists():
        return {"passed": 0, "failed": 0, "skipped": 0, "failures": ["the tests did not run"]}
    cases = ET.parse(junit).getroot().iter("testcase")
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in cases:
        outcome = {child.tag for child in case} & {"failure", "error", "skipped"}
        if outcome & {"failure", "error"}:
            counts["failed"] += 1
            counts["failures"].append(f"{case.get('classname')}::{case.get('name')}")
        elif outcome:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def _short(value) -> str:
    """A goal's value in at most 40 characters."""
    text = f"{value:.3g}" if isinstance(value, float) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="*", help="benchmark JSON files")
    parser.add_argument("--tests", type=Path, required=True, help="JUnit XML of the gpu tests")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.json")
    args = parser.parse_args()
    tests = test_counts(args.tests)
    summary = {"tests": tests, "benchmarks": {}}
    goals = []
    for path in args.results:
        if not path.exists():
            goals.append({"benchmark": path.stem, "goal": "ran", "value": None, "met": False})
            continue
        result = json.loads(path.read_text())
        summary["benchmarks"][result["benchmark"]] = result
        print(f"\n## {result['benchmark']} on {result['device']}")
        print(pd.DataFrame(result["rows"]).to_string(index=False, float_format="{:.3g}".format))
        goals += [{"benchmark": result["benchmark"], **goal} for goal in result["goals"]]
    print(f"\ngpu tests: {tests['passed']} passed, {tests['failed']} failed, "
          f"{tests['skipped']} skipped {' '.join(tests['failures'])}")  # fmt: skip
    if goals:
        table = pd.DataFrame(goals)
        table["value"] = [_short(value) for value in table["value"]]
        print(table[["benchmark", "met", "value", "goal"]].to_string(index=False))
    summary["goals"] = goals
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".json.partial")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    partial.replace(args.out)


if __name__ == "__main__":
    main()
