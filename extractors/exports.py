"""Copies of our coords and feature files in the layouts that CLAM and STAMP load.

Our own files already open as they are in TRIDENT and Patho-Bench. CLAM and STAMP read other
names and meanings:

- CLAM (``dataset_modules/dataset_generic.py``, ``dataset_h5.py``): ``pt_files/{slide}.pt`` (a
  ``torch.save`` of the features tensor, which ``Generic_MIL_Dataset`` loads), ``h5_files/{slide}
  .h5`` (``features`` + ``coords``), and ``patches/{slide}.h5`` whose ``patch_size`` is the side
  read at ``patch_level``: ``Whole_Slide_Bag_FP`` calls ``read_region(coord, patch_level,
  (patch_size, patch_size))``. Ours means the side at the target resolution (TRIDENT's meaning),
  which differs whenever patches are read with resizing.
- STAMP (``stamp/preprocessing/__init__.py``): ``feats``, ``coords`` in µm, ``extractor`` by
  STAMP's own model names (its slide encoders refuse others), ``tile_size_px`` the side the
  extractor was fed.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from extractors.encoders import get_encoder_spec, list_encoders
from extractors.errors import SettingsError
from extractors.io import atomic_path, read_coords, read_features


def clam_coords_attrs(attrs: dict) -> dict:
    """CLAM's ``coords`` attributes for the patches described by our coords attributes.

    ``patch_size`` becomes the patch side at ``patch_level`` (our ``read_size``); TRIDENT's keys
    are left out so that TRIDENT reads such a file through its CLAM path, not ours.
    """
    level_dim = np.asarray(attrs["level_dim"], dtype=np.int64)
    return {
        "patch_size": int(attrs["read_size"]),
        "patch_level": int(attrs["patch_level"]),
        "downsample": np.asarray(attrs["downsample"], dtype=np.float64),
        "downsampled_level_dim": level_dim,
        "level_dim": level_dim,
        "name": str(attrs["name"]),
    }


def export_clam_patches(source: str | Path, out_path: str | Path) -> None:
    """Write CLAM's ``patches/{slide}.h5`` from a coords (or feature) file of ours."""
    coords, attrs = read_coords(source)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        dataset = h5.create_dataset("coords", data=coords.astype(np.int64).reshape(-1, 2))
        dataset.attrs.update({**clam_coords_attrs(attrs), "save_path": str(Path(out_path).parent)})


def export_clam_features(
    features_path: str | Path, pt_path: str | Path, h5_path: str | Path
) -> None:
    """Write CLAM's ``pt_files/{slide}.pt`` and ``h5_files/{slide}.h5`` of one feature file."""
    features, coords, coords_attrs, _ = read_features(features_path)
    with atomic_path(pt_path) as tmp:
        torch.save(torch.from_numpy(features.astype(np.float32)), tmp)
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("features", data=features.astype(np.float32))
        h5.create_dataset("coords", data=coords.astype(np.int64)).attrs.update(
            clam_coords_attrs(coords_attrs)
        )


def stamp_extractor_name(encoder: str) -> str:
    """STAMP's name of one of our encoders; ours where STAMP has no such model."""
    if encoder not in list_encoders():
        return encoder
    return get_encoder_spec(encoder).stamp_name or encoder


def export_stamp(features_path: str | Path, out_path: str | Path) -> None:
    """Write a STAMP feature file: ``feats`` (float16) and ``coords`` in µm.

    File attributes: ``extractor`` (STAMP's name; ours is kept as ``querent_encoder``),
    ``unit`` ("um"), ``tile_size_um`` (level-0 patch side in µm), ``tile_size_px`` (the side
    the encoder was fed), ``feat_type`` ("tile").
    """
    features, coords, coords_attrs, feature_attrs = read_features(features_path)
    encoder = str(feature_attrs["encoder"])
    fed_size = feature_attrs.get("input_size")
    if fed_size is None:
        fed_size = get_encoder_spec(encoder).input_size
    mpp = float(coords_attrs["level0_mpp"])
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("feats", data=features.astype(np.float16))
        h5.create_dataset("coords", data=coords.astype(np.float64) * mpp)
        h5.attrs.update(
            {
                "extractor": stamp_extractor_name(encoder),
                "querent_encoder": encoder,
                "unit": "um",
                "tile_size_um": float(coords_attrs["patch_size_level0"]) * mpp,
                "tile_size_px": int(fed_size),
                "feat_type": "tile",
            }
        )


def export_file(fmt: str, features_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Export one feature file in ``fmt`` under ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    slide = Path(features_path).stem
    if fmt == "stamp":
        out = out_dir / f"{slide}.h5"
        export_stamp(features_path, out)
        return [out]
    if fmt == "clam":
        pt, h5, patches = (
            out_dir / "pt_files" / f"{slide}.pt",
            out_dir / "h5_files" / f"{slide}.h5",
            out_dir / "patches" / f"{slide}.h5",
        )
        export_clam_features(features_path, pt, h5)
        export_clam_patches(features_path, patches)
        return [pt, h5, patches]
    raise SettingsError(f"unknown export format {fmt!r}; choose clam or stamp")
