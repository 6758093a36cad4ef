import numpy as np
import pytest

from extractors.cli import check_coords_mpp
from extractors.errors import SettingsError
from extractors.io import write_coords


def _coords(path, **attrs):
    write_coords(path, np.zeros((1, 2), np.int64), np.ones(1), attrs)
    return path


def _kwargs(mpp=None, mpp_default=None):
    return {"slide_id": "s", "mpp_override": mpp, "mpp_default": mpp_default}


def test_an_mpp_other_than_the_tiling_one_names_slide_both_mpps_and_the_fix(cmu_slide, tmp_path):
    coords = _coords(tmp_path / "s.h5", level0_mpp=0.499, mpp_source="aperio.MPP")
    with pytest.raises(SettingsError) as info:
        check_coords_mpp(_kwargs(mpp=0.25), cmu_slide, coords)
    message = str(info.value)
    for part in ("'s'", "--mpp 0.25", "0.499 µm/px", str(coords), "querent tile --mpp 0.25"):
        assert part in message


def test_an_mpp_default_that_applies_is_checked_too(tcga_slide, tmp_path):
    coords = _coords(tmp_path / "s.h5", level0_mpp=0.5, mpp_source="slide_sheet")
    with pytest.raises(SettingsError, match="--mpp-default 0.25 µm/px differs from the 0.5"):
        check_coords_mpp(_kwargs(mpp_default=0.25), tcga_slide, coords)
    check_coords_mpp(_kwargs(mpp_default=0.5), tcga_slide, coords)


@pytest.mark.parametrize(
    ("kwargs", "attrs"),
    [
        (_kwargs(mpp=0.499), {"level0_mpp": 0.499}),  # the same MPP
        (_kwargs(), {"level0_mpp": 0.25}),  # tiled with --mpp, extracted without: as tiled
        (_kwargs(mpp_default=0.25), {"level0_mpp": 0.499}),  # the slide's metadata wins
        (_kwargs(mpp=0.25), {"patch_size": 256}),  # another tool's coords: no MPP to compare
    ],
)
def test_mpps_that_change_nothing_pass(cmu_slide, tmp_path, kwargs, attrs):
    check_coords_mpp(kwargs, cmu_slide, _coords(tmp_path / "s.h5", **attrs))
