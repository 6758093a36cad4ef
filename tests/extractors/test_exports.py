"""Our files as CLAM, TRIDENT and STAMP read them.

None of the three is on the package registry, so their loading rules are mirrored here, each
citing the file it mirrors (mahmoodlab/TRIDENT, mahmoodlab/CLAM, KatherLab/STAMP, main branch).
"""

import h5py
import numpy as np
import openslide
import pytest
import torch

from extractors.encoders import get_encoder_spec, list_encoders
from extractors.exports import (
    export_clam_features,
    export_clam_patches,
    export_file,
    export_stamp,
    stamp_extractor_name,
)
from extractors.extract import ExtractionOptions, extract_slide
from extractors.io import read_coords
from extractors.patches import PatchBlocks, PatchGeometry
from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide

#: STAMP's ``ExtractorName`` values (stamp/preprocessing/config.py).
STAMP_EXTRACTORS = {
    "ctranspath", "chief-ctranspath", "conch", "conch1_5", "uni", "uni2", "dino-bloom",
    "gigapath", "h-optimus-0", "h-optimus-1", "virchow", "virchow-full", "virchow2", "musk",
    "mstar", "plip", "keep", "ticon", "empty", "red-dino",
}  # fmt: skip


def trident_level0_side(attrs: dict) -> int:
    """Level-0 pixels TRIDENT reads per patch (trident/wsi_objects/WSIPatcher.py, __init__).

    ``src_pixel_size = 10 / src_mag``, ``dst_pixel_size = 10 / dst_mag``, ``patch_size_src =
    round(patch_size * dst_pixel_size / src_pixel_size)``, with src_mag / dst_mag taken from
    ``level0_magnification`` / ``target_magnification`` (trident/wsi_objects/WSI.py).
    """
    src_pixel_size = 10 / float(attrs["level0_magnification"])
    dst_pixel_size = 10 / float(attrs["target_magnification"])
    return round(int(attrs["patch_size"]) * dst_pixel_size / src_pixel_size)


def clam_read(slide_path, coord, attrs) -> np.ndarray:
    """The patch CLAM reads (dataset_modules/dataset_h5.py, Whole_Slide_Bag_FP.__getitem__)."""
    size = int(attrs["patch_size"])
    with openslide.OpenSlide(str(slide_path)) as osr:
        location = (int(coord[0]), int(coord[1]))
        image = osr.read_region(location, int(attrs["patch_level"]), (size, size))
    return np.asarray(image.convert("RGB"))


def _tile(slide_path, out_dir, **params):
    with Slide(slide_path) as slide:
        polygons = tissue.segment(slide, tissue.tissue_params()).polygons
        tiling.tile_slide(
            slide, polygons, tiling.TilingParams(**params), out_dir / "c.h5", out_dir / "c_qc.jpg"
        )
    return out_dir / "c.h5"


@pytest.fixture(scope="module")
def lite0():
    from extractors.encoders import create_encoder

    return create_encoder("efficientnet_lite0", pretrained=False)


@pytest.fixture(scope="module")
def gt450(relabelled_40x_slide, tmp_path_factory, lite0):
    """The relabelled 40x slide tiled at 20x, and its features."""
    out = tmp_path_factory.mktemp("gt450")
    coords_path = _tile(relabelled_40x_slide, out)
    extract_slide(
        relabelled_40x_slide, coords_path, lite0, out / "f.h5", options=ExtractionOptions()
    )
    return relabelled_40x_slide, coords_path, out / "f.h5"


def _attrs(path, dataset="coords"):
    with h5py.File(path) as h5:
        return dict(h5[dataset].attrs)


def test_trident_reads_our_patch_side_on_a_40x_gt450_slide(gt450):
    _, coords_path, features_path = gt450
    for attrs in (_attrs(coords_path), _attrs(features_path)):
        # 256 px at 0.5 µm/px of a 0.2632 µm/px scan: 486 level-0 px, read with resizing.
        assert attrs["patch_size_level0"] == attrs["step_level0"] == 486
        assert attrs["read_size"] == 486 and attrs["patch_level"] == 0
        assert abs(trident_level0_side(attrs) - attrs["patch_size_level0"]) <= 1
        assert attrs["scanner_objective_power"] == 40  # the label, kept apart
        assert attrs["level0_magnification"] == pytest.approx(20 * 486 / 256)


@pytest.mark.parametrize(
    ("target_mpp", "patch_size", "level", "resized"),
    [(0.5, 256, 0, False), (1.0, 256, 1, False), (1.5, 256, 1, True), (0.75, 224, 0, True)],
)
def test_trident_and_clam_read_what_we_encode(
    cmu_3level_slide, tmp_path, target_mpp, patch_size, level, resized
):
    coords_path = _tile(cmu_3level_slide, tmp_path, target_mpp=target_mpp, patch_size=patch_size)
    coords, ours = read_coords(coords_path)
    assert ours["patch_level"] == level and (ours["read_size"] != patch_size) == resized
    assert abs(trident_level0_side(ours) - ours["patch_size_level0"]) <= 1

    export_clam_patches(coords_path, tmp_path / "clam.h5")
    with h5py.File(tmp_path / "clam.h5") as h5:
        clam_coords, clam = h5["coords"][:], dict(h5["coords"].attrs)
    np.testing.assert_array_equal(clam_coords, coords)
    level0_side = clam["patch_size"] * clam["downsample"][0]
    assert abs(level0_side - ours["patch_size_level0"]) <= 1
    # TRIDENT meets a CLAM file through its legacy path: no TRIDENT keys may mislead it.
    assert not {"level0_magnification", "target_magnification"} & set(clam)

    # Pixel for pixel, the patch CLAM reads is the one we read before resizing for the encoder.
    side = int(ours["read_size"])
    geometry = PatchGeometry(
        level=level,
        downsample=float(ours["downsample"][0]),
        patch_size_level0=int(ours["patch_size_level0"]),
        step_level0=int(ours["step_level0"]),
        read_size=side,
        resize_size=side,
        crop_size=side,
    )
    blocks = PatchBlocks(cmu_3level_slide, {}, coords[:3], geometry, block_cells=1)
    for item in range(len(blocks)):
        (index,), patches = blocks[item]
        expected = clam_read(cmu_3level_slide, clam_coords[index], clam)
        np.testing.assert_array_equal(patches[0].transpose(1, 2, 0), expected)


def test_features_from_stale_coords_get_trident_right(gt450, tmp_path, lite0):
    slide, coords_path, _ = gt450
    stale = tmp_path / "stale.h5"
    stale.write_bytes(coords_path.read_bytes())
    with h5py.File(stale, "r+") as h5:
        h5["coords"].attrs["level0_magnification"] = 40.0  # what earlier versions wrote
    extract_slide(slide, stale, lite0, tmp_path / "f.h5")
    attrs = _attrs(tmp_path / "f.h5")
    assert trident_level0_side(attrs) == attrs["patch_size_level0"] == 486


def test_clam_features_export(gt450, tmp_path):
    _, _, features_path = gt450
    export_clam_features(features_path, tmp_path / "s.pt", tmp_path / "s.h5")
    with h5py.File(features_path) as h5:
        features, coords = h5["features"][:], h5["coords"][:]
    # CLAM: features = torch.load(pt_files/{slide_id}.pt) (dataset_generic.py,
    # Generic_MIL_Dataset.__getitem__); torch >= 2.6 loads with weights_only=True.
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert isinstance(loaded, torch.Tensor) and loaded.dtype == torch.float32
    np.testing.assert_array_equal(loaded.numpy(), features)
    with h5py.File(tmp_path / "s.h5") as h5:
        np.testing.assert_array_equal(h5["features"][:], features)
        np.testing.assert_array_equal(h5["coords"][:], coords)
        assert h5["coords"].attrs["patch_size"] == 486  # the side at patch_level 0


def _features_file(path, encoder, *, input_size=224):
    with h5py.File(path, "w") as h5:
        h5.create_dataset("features", data=np.ones((3, 8), np.float32)).attrs.update(
            {"encoder": encoder, "input_size": input_size}
        )
        h5.create_dataset("coords", data=np.array([[0, 0], [256, 0], [0, 256]])).attrs.update(
            {"level0_mpp": 0.25, "patch_size_level0": 512, "patch_size": 256}
        )


@pytest.mark.parametrize(
    ("ours", "stamp"),
    [
        ("uni_v1", "uni"),
        ("uni_v2", "uni2"),
        ("conch_v15", "conch1_5"),
        ("h_optimus_0", "h-optimus-0"),
        ("h_optimus_1", "h-optimus-1"),
        ("virchow2", "virchow2"),
        ("gigapath", "gigapath"),
        ("efficientnet_lite0", "efficientnet_lite0"),
        ("my_lab_encoder", "my_lab_encoder"),
    ],
)
def test_stamp_export_uses_stamp_names(tmp_path, ours, stamp):
    _features_file(tmp_path / "f.h5", ours, input_size=448 if ours == "conch_v15" else 224)
    export_stamp(tmp_path / "f.h5", tmp_path / "stamp.h5")
    with h5py.File(tmp_path / "stamp.h5") as h5:
        assert h5.attrs["extractor"] == stamp and h5.attrs["querent_encoder"] == ours
        assert h5.attrs["tile_size_px"] == (448 if ours == "conch_v15" else 224)
        assert h5.attrs["tile_size_um"] == pytest.approx(512 * 0.25)
        assert h5.attrs["unit"] == "um" and h5.attrs["feat_type"] == "tile"
        np.testing.assert_allclose(h5["coords"][:], [[0, 0], [64, 0], [0, 64]])
        assert h5["feats"].dtype == np.float16


def test_every_stamp_name_is_one_stamp_knows():
    names = {name: get_encoder_spec(name).stamp_name for name in list_encoders()}
    assert {n for n in names.values() if n} <= STAMP_EXTRACTORS
    assert {stamp_extractor_name(name) for name in names} & STAMP_EXTRACTORS == {
        "uni", "uni2", "virchow2", "h-optimus-0", "h-optimus-1", "gigapath", "conch1_5"
    }  # fmt: skip


def test_stamp_export_of_real_features(gt450, tmp_path):
    _, _, features_path = gt450
    export_stamp(features_path, tmp_path / "stamp.h5")
    with h5py.File(features_path) as h5:
        features, coords = h5["features"][:], h5["coords"][:]
        mpp = h5["coords"].attrs["level0_mpp"]
    with h5py.File(tmp_path / "stamp.h5") as h5:
        np.testing.assert_allclose(h5["feats"][:], features, rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(h5["coords"][:], coords * mpp)
        # STAMP's tile size in px is what the extractor was fed (EfficientNet-Lite0: 224).
        assert h5.attrs["tile_size_px"] == 224
        assert h5.attrs["tile_size_um"] == pytest.approx(486 * 0.2632)


def test_export_file_writes_each_layout(gt450, tmp_path):
    _, _, features_path = gt450
    written = export_file("clam", features_path, tmp_path / "clam")
    assert [p.relative_to(tmp_path / "clam").as_posix() for p in written] == [
        "pt_files/f.pt",
        "h5_files/f.h5",
        "patches/f.h5",
    ]
    assert all(p.is_file() for p in written)
    assert export_file("stamp", features_path, tmp_path / "stamp") == [tmp_path / "stamp/f.h5"]
    with pytest.raises(ValueError, match="clam or stamp"):
        export_file("trident", features_path, tmp_path)
