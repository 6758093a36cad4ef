"""Patch features: run an encoder over a slide's coords and write the features HDF5.

The output opens as it is in CLAM (``features``, ``coords``) and TRIDENT / Patho-Bench (the
coords attributes, ``patch_size_level0`` among them, are copied from the coords file).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from extractors.encoders import Encoder, EncoderSpec
from extractors.errors import FileFormatError, SettingsError, SlideError
from extractors.io import read_coords, trident_magnifications, write_features
from extractors.patches import PatchBlocks, PatchGeometry, collate_blocks
from extractors.stain import feature_set
from extractors.stain_norm import StainNormaliser
from extractors.wsi.reader import Slide

logger = logging.getLogger(__name__)

#: Largest relative difference between the patches' effective MPP and the encoder's native MPP.
#: 256 px at 0.5 µm/px resized to 224 (the CLAM / TRIDENT convention) is 14% off and passes.
MPP_MISMATCH_TOLERANCE = 0.2


@dataclass(frozen=True)
class ExtractionOptions:
    """How to run an extraction; none of these changes the features.

    Attributes:
        batch_size: Patches per encoder call (about; blocks are not split); None: 256 on CUDA,
            16 on CPU (larger CPU batches run slower, measured on EfficientNet-Lite0).
        num_workers: Reader processes (0: read in the main process); None: on CUDA one per
            core this process may run on (a cluster job's own cores) but one, up to 16 (the
            GPU waits on reading for small encoders); on CPU none for two torch threads or
            fewer (a reader would slow the encoder down more than it saves), else one.
        block_cells: Lattice cells per side of one region read.
        skip_errors: Skip patches whose region fails to decode twice (recorded) or fail.
        allow_mpp_mismatch: Encode even if the patch resolution differs from the encoder's.
        device: ``cuda``, ``cpu`` or None (CUDA when available).
    """

    batch_size: int | None = None
    num_workers: int | None = None
    block_cells: int = 4
    skip_errors: bool = False
    allow_mpp_mismatch: bool = False
    device: str | None = None

    def resolved_batch_size(self, device: torch.device) -> int:
        """Patches per encoder call for ``device`` (see ``batch_size``)."""
        return self.batch_size or (256 if device.type == "cuda" else 16)

    def resolved_workers(self, device: torch.device) -> int:
        """Reader processes for ``device`` (see ``num_workers``)."""
        if self.num_workers is not None:
            return self.num_workers
        if device.type == "cuda":
            return max(1, min(16, len(os.sched_getaffinity(0)) - 1))
        return 0 if torch.get_num_threads() <= 2 else 1


def check_same_slide(attrs: dict, slide: Slide, coords_path: str | Path) -> None:
    """Raise unless the coords file was made from this slide (id and level-0 size)."""
    found = (attrs.get("name"), int(attrs["level0_width"]), int(attrs["level0_height"]))
    expected = (slide.slide_id, *slide.dimensions)
    if found != expected:
        raise FileFormatError(
            f"{coords_path} was made for slide {found[0]!r} of {found[1]} x {found[2]} px, but "
            f"the slide given is {expected[0]!r} of {expected[1]} x {expected[2]} px "
            f"({slide.path}); pass the matching coords file or tile this slide again."
        )


def patch_geometry(attrs: dict, spec: EncoderSpec) -> PatchGeometry:
    """Read level and sizes of the patches, and how they are shaped for ``spec``."""
    return PatchGeometry(
        level=int(attrs["patch_level"]),
        downsample=float(np.asarray(attrs["downsample"]).ravel()[0]),
        patch_size_level0=int(attrs["patch_size_level0"]),
        step_level0=int(attrs["step_level0"]),
        read_size=int(attrs["read_size"]),
        resize_size=spec.resize_size or spec.input_size,
        crop_size=spec.input_size,
    )


def effective_mpp(attrs: dict, spec: EncoderSpec) -> float:
    """Microns per pixel of what the encoder sees, after resizing the patch."""
    return (
        float(attrs["target_mpp"])
        * int(attrs["patch_size"])
        / (spec.resize_size or spec.input_size)
    )


def check_resolution(attrs: dict, spec: EncoderSpec, *, allow: bool, where: str) -> None:
    """Refuse patches whose resolution does not suit the encoder, unless ``allow``."""
    seen = effective_mpp(attrs, spec)
    if abs(seen / spec.native_mpp - 1) <= MPP_MISMATCH_TOLERANCE:
        return
    message = (
        f"{where}: patches of {attrs['patch_size']} px at {attrs['target_mpp']} µm/px reach "
        f"encoder {spec.name} at {seen:.3f} µm/px, but it expects {spec.native_mpp} µm/px."
    )
    if not allow:
        raise SettingsError(
            f"{message} Fix: tile at target_mpp {spec.native_mpp} with patch_size about "
            f"{spec.resize_size or spec.input_size}, or set features.allow_mpp_mismatch "
            "(CLI --allow-mpp-mismatch) if you mean it."
        )
    logger.warning("%s Going on: allow_mpp_mismatch is set.", message)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 (fp16 on older GPUs) autocast on CUDA; None (fp32) elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def encode_patches(
    dataset: PatchBlocks,
    encoder: Encoder,
    options: ExtractionOptions,
    *,
    desc: str,
    normaliser: StainNormaliser | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Embed every patch of a dataset, stain-normalised first if ``normaliser`` is given.

    Returns:
        (features (N, D) float32 with NaN rows for skipped patches, skipped indices, number of
        patches the normaliser left as they were).
    """
    device = next(encoder.parameters()).device
    dtype = autocast_dtype(device)
    n_patches = len(dataset.coords)
    features = np.full((n_patches, encoder.embed_dim), np.nan, np.float32)
    per_block = max(1.0, n_patches / max(1, len(dataset)))
    batch_size = options.resolved_batch_size(device)
    workers = options.resolved_workers(device)
    loader = DataLoader(
        dataset,
        batch_size=max(1, round(batch_size / per_block)),
        num_workers=workers,
        collate_fn=collate_blocks,
        pin_memory=device.type == "cuda",
        # No per-worker thread settings: cv2.setNumThreads in a forked child hangs once the
        # parent has used OpenCV's thread pool (tests/extractors/test_extract.py).
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    skipped, unnormalised = [], 0
    with torch.inference_mode(), tqdm(total=n_patches, desc=desc, unit="patch") as progress:
        for indices, patches, failed in loader:
            skipped.append(failed.numpy())
            if len(indices):
                images = patches.to(device, non_blocking=True)
                if normaliser is not None:
                    images, normalised = normaliser(images)
                    unnormalised += int((~normalised).sum())
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    embeddings = encoder(images)
                features[indices.numpy()] = embeddings.float().cpu().numpy()
            progress.update(len(indices) + len(failed))
    skipped = np.concatenate(skipped) if skipped else np.empty(0, np.int64)
    return features, skipped, unnormalised


def extract_slide(
    slide_path: str | Path,
    coords_path: str | Path,
    encoder: Encoder,
    out_path: str | Path,
    *,
    slide_kwargs: dict | None = None,
    options: ExtractionOptions = ExtractionOptions(),
    normaliser: StainNormaliser | None = None,
) -> int:
    """Extract the features of one slide into ``out_path``.

    With a stain ``normaliser``, the file's ``encoder`` attribute is the feature-set name
    (``uni_v2-macenko``) and its ``stain_*`` attributes say how the patches were normalised.

    Args:
        slide_path: The slide.
        coords_path: Its coords file (from ``querent tile`` / rule ``tile_slide``).
        encoder: A loaded encoder on its device.
        out_path: Output ``.h5``.
        slide_kwargs: Keyword arguments of :class:`Slide` (slide_id, mpp_override, ...).
        options: Batch size, workers, error handling.
        normaliser: Stain normalisation of the patches before the encoder; None: none.

    Returns:
        Number of patches written.
    """
    slide_kwargs = slide_kwargs or {}
    coords, attrs = read_coords(coords_path)
    # Coords files of earlier versions carry the scanner's objective power here; TRIDENT needs
    # the value that matches the patch geometry.
    attrs["level0_magnification"], _ = trident_magnifications(
        float(attrs["target_mpp"]), int(attrs["patch_size"]), int(attrs["patch_size_level0"])
    )
    with Slide(slide_path, **slide_kwargs) as slide:
        check_same_slide(attrs, slide, coords_path)
        slide_id = slide.slide_id
    spec = encoder.spec
    check_resolution(attrs, spec, allow=options.allow_mpp_mismatch, where=f"slide {slide_id!r}")
    dataset = PatchBlocks(
        slide_path,
        {**slide_kwargs, "slide_id": slide_id},
        coords,
        patch_geometry(attrs, spec),
        block_cells=options.block_cells,
        skip_errors=options.skip_errors,
    )
    try:
        features, skipped, unnormalised = encode_patches(
            dataset, encoder, options, desc=slide_id, normaliser=normaliser
        )
    except SlideError as err:
        raise SlideError(
            f"{err} Fix: re-copy the slide, or set features.on_decode_error: skip (CLI "
            "--skip-errors) to leave such patches out and record them."
        ) from err
    keep = np.ones(len(coords), bool)
    keep[skipped] = False
    if len(skipped):
        logger.warning("%s: %d patches skipped after decode errors", slide_id, len(skipped))
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[
        autocast_dtype(next(encoder.parameters()).device)
    ]
    feature_attrs = {
        "encoder": spec.name if normaliser is None else feature_set(spec.name, normaliser.method),
        "embed_dim": spec.embed_dim,
        "precision": precision,
        "weights_source": encoder.weights_source,
        "input_size": spec.input_size,
        "effective_mpp": effective_mpp(attrs, spec),
        "n_skipped": len(skipped),
    }
    if normaliser is not None:
        feature_attrs |= {**normaliser.attrs(), "stain_unnormalised": unnormalised}
        logger.info(
            "%s: %s normalised %d of %d patches; %d left as read (too little tissue to "
            "estimate their stains)",
            slide_id, normaliser.method, keep.sum() - unnormalised, keep.sum(), unnormalised,
        )  # fmt: skip
    write_features(out_path, features[keep], coords[keep], attrs, feature_attrs, coords[skipped])
    logger.info("%s: %d x %d features -> %s", slide_id, keep.sum(), spec.embed_dim, out_path)
    return int(keep.sum())
