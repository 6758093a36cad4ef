from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_SLIDES = ROOT.parent / "shared" / "slides"


def shared_slide(name: str) -> Path:
    """A real slide from ../shared/slides, or skip when that folder is absent."""
    path = SHARED_SLIDES / name
    if not path.is_file():
        pytest.skip(f"real slide {path} not available (../shared/slides is absent)")
    return path


@pytest.fixture
def cmu_slide() -> Path:
    return shared_slide("cmu-1-small-region.svs")


@pytest.fixture
def cmu_3level_slide() -> Path:
    return shared_slide("derived_cmu_small_region_3level.svs")


@pytest.fixture
def tcga_slide() -> Path:
    return shared_slide("tcga-cr-7395-01a-01-ts1.svs")


@pytest.fixture
def blank_slide(tmp_path) -> Path:
    """A real pyramidal SVS with no tissue at all."""
    from extractors.demo import write_synthetic_slide

    path = tmp_path / "blank.svs"
    write_synthetic_slide(path, np.zeros((64, 96), np.uint8), level0_size=(3072, 2048))
    return path
