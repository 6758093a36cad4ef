"""environment.yml (conda) and pyproject.toml (pip) install the same dependencies."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: conda-forge names of the distributions that conda-forge calls otherwise.
CONDA_NAMES = {"opencv": "opencv-python-headless"}


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement.strip()).groups()
    return CONDA_NAMES.get(name.lower(), name.lower()), spec.replace(" ", "")


def test_environment_and_pyproject_list_the_same_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_split(r) for r in project["dependencies"])
    entries = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip = next(e["pip"] for e in entries if isinstance(e, dict))
    assert "-e ." in pip, "environment.yml must install the project itself (pip: -e .)"
    listed = [e for e in entries if isinstance(e, str) and not e.startswith(("python", "pip"))]
    listed += [e for e in pip if not e.startswith("-e")]
    have = dict(_split(r) for r in listed)
    assert have == wanted, (
        f"only in pyproject.toml: {sorted(set(wanted.items()) - set(have.items()))}; "
        f"only in environment.yml: {sorted(set(have.items()) - set(wanted.items()))}"
    )
