"""The import floors of ../shared/DESIGN.md, checked in fresh interpreters."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def _loaded(*modules: str) -> set[str]:
    """Top-level and package names that importing ``modules`` loads."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


def _hits(loaded: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        (("querent.models", "querent.layers"), ("h5py", "openslide", "cv2", "extractors")),
        (("querent.data.grid",), ("h5py", "torch", "openslide", "cv2", "extractors")),
        (
            (
                "querent.engine.train",
                "querent.engine.evaluate",
                "querent.engine.experiment",
                "querent.engine.aggregate",
                "querent.engine.cli",
            ),
            ("openslide", "cv2", "extractors.wsi", "extractors.encoders"),
        ),
        (
            (
                "querent.data.cohort",
                "querent.data.splits",
                "querent.data.bags",
                "querent.data.grid_files",
                "querent.data.synthetic",
            ),
            ("openslide", "cv2", "extractors.wsi", "extractors.encoders"),
        ),
        (("querent.data.cohort", "querent.data.splits"), ("torch",)),
        (
            (
                "querent.plots.curves",
                "querent.plots.confusion",
                "querent.plots.survival",
                "querent.plots.summary",
                "querent.plots.heatmap",
                "querent.plots.qupath",
                "querent.plots.mosaic",
                "querent.plots.thumbnails",
            ),
            ("torch", "openslide", "cv2", "extractors.wsi", "querent.engine", "querent.models"),
        ),
        (("extractors.io", "extractors.errors"), ("torch", "openslide", "cv2", "querent")),
        # planning runs while Snakemake builds the DAG: no torch, no timm
        (
            (
                "querent.pipeline.plan",
                "querent.pipeline.housekeeping",
                "querent.pipeline.registries",
            ),
            ("torch", "timm"),
        ),
    ],
)
def test_lower_floors_load_nothing_from_above(modules, forbidden):
    assert _hits(_loaded(*modules), forbidden) == []


def test_extractors_never_import_querent():
    loaded = _loaded(
        "extractors.cli",
        "extractors.extract",
        "extractors.exports",
        "extractors.demo",
        "extractors.encoders",
        "extractors.wsi.tiling",
        "extractors.qc",
    )
    assert "extractors.wsi.reader" in loaded  # the check itself reaches the slide code
    assert _hits(loaded, ("querent",)) == []


def test_no_floor_below_the_app_loads_the_pipeline_package():
    """querent.pipeline (app floor) may import every floor; none of them imports it back."""
    loaded = _loaded(
        "querent.engine.train",
        "querent.engine.evaluate",
        "querent.engine.cli",
        "querent.figures",
        "querent.data.cli",
        "querent.models",
        "extractors.cli",
        "extractors.qc",
    )
    assert _hits(loaded, ("querent.pipeline", "snakemake")) == []
