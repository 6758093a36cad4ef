import numpy as np

from extractors.io import read_coords
from extractors.patches import read_patch_images
from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide


def test_patch_images_are_the_tiled_patches_at_the_target_size(cmu_3level_slide, tmp_path):
    with Slide(cmu_3level_slide) as slide:
        polygons = tissue.segment(slide, tissue.tissue_params()).polygons
        params = tiling.TilingParams(target_mpp=1.5, patch_size=128)  # level 1, resized
        tiling.tile_slide(slide, polygons, params, tmp_path / "c.h5", tmp_path / "c_qc.jpg")
        coords, attrs = read_coords(tmp_path / "c.h5")
        images = read_patch_images(slide, coords[:3], attrs)
        first = slide.read_region(tuple(int(c) for c in coords[0]), 1, (attrs["read_size"],) * 2)
    assert attrs["patch_level"] == 1 and attrs["read_size"] != 128
    assert [image.shape for image in images] == [(128, 128, 3)] * 3
    assert images[0].dtype == np.uint8
    # the picture is the region read at the level, resized: the same mean colour
    assert np.abs(images[0].mean(axis=(0, 1)) - first.mean(axis=(0, 1))).max() < 2
