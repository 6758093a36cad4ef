"""What produced a trained model: settings, input sheet, software versions, source revision.

Recorded in every ``model.pt`` (``provenance``) and, for the whole run, in
``results/provenance.tsv`` (shown in the report), so a result can be traced and reproduced.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path

#: Distributions whose versions change results (the rest of the stack follows from them).
PACKAGES = (
    "querent", "torch", "timm", "numpy", "pandas", "scikit-learn", "scipy", "lifelines",
    "h5py", "einops", "openslide-python", "openslide-bin", "opencv-python-headless",
    "snakemake",
)  # fmt: skip


def querent_version() -> str:
    """The installed querent version."""
    return package_versions(("querent",))["querent"]


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution in ``names`` ("not installed" where absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision() -> str:
    """The git commit of the querent source (``+dirty`` with local changes), or ""."""
    try:
        head, status = (
            subprocess.run(
                ["git", *args],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=10,
            )
            for args in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"])
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if head.returncode != 0:
        return ""
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(config: Mapping | None, sheet: str | Path | None) -> dict:
    """Plain-data record of a run: its config, the cohort sheet and its hash, versions, revision.

    Args:
        config: The workflow's config (None outside the workflow).
        sheet: The cohort sheet the run read (None: none).
    """
    sheet_path = Path(sheet) if sheet else None
    sheet_hash = file_sha256(sheet_path) if sheet_path and sheet_path.is_file() else ""
    return {
        "config": json.loads(json.dumps(config, default=str)) if config is not None else None,
        "cohort_sheet": str(sheet_path) if sheet_path else "",
        "cohort_sheet_sha256": sheet_hash,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "packages": package_versions(),
    }


def provenance_rows(record: Mapping) -> list[tuple[str, str]]:
    """(key, value) rows of a record, nested keys joined by dots (the report's table)."""
    rows = []
    for key, value in record.items():
        if isinstance(value, Mapping):
            rows += [(f"{key}.{k}", v) for k, v in provenance_rows(value)]
        else:
            rows.append((key, value if isinstance(value, str) else json.dumps(value)))
    return rows
