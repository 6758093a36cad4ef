"""Stain normalisation settings: method names, feature-set names and the reference image.

Normalised features are a feature set of their own: the encoder's name and the method,
``uni_v2-macenko``, which names their folder (``results/features/uni_v2-macenko/``) and stands
where an encoder name stands downstream (models, evaluation, summary rows), so the plain
features and the normalised ones coexist. This module loads no torch: planning checks the
settings with it (the normalisers are in :mod:`extractors.stain_norm`).

Pixels count as tissue (stained) when their optical density is at least
:data:`OD_THRESHOLD` in every channel (Macenko et al. 2009); for uint8 RGB that is every
channel at most :data:`TISSUE_MAX_INTENSITY`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np

from extractors.errors import SettingsError

#: The methods, as config values (``features.stain_norm``); ``none`` leaves patches as read.
NO_STAIN_NORM = "none"
STAIN_METHODS = ("macenko", "reinhard")

#: A feature-set name: an encoder's name, then ``-`` and the method if the patches were
#: normalised (the wildcard ``{encoder}`` of the workflow's paths).
FEATURE_SET_PATTERN = rf"[A-Za-z0-9_]+(?:-(?:{'|'.join(STAIN_METHODS)}))?"

#: Transmitted light intensity and optical density threshold of Macenko et al. 2009.
LIGHT_INTENSITY = 240.0
OD_THRESHOLD = 0.15
#: Brightest channel value of a tissue pixel: OD = -ln((I + 1) / 240) >= 0.15 <=> I <= this.
TISSUE_MAX_INTENSITY = math.floor(LIGHT_INTENSITY * math.exp(-OD_THRESHOLD) - 1)
#: Share of tissue pixels below which an image's stains are not estimated (a patch is left as
#: it was; a reference image is refused).
MIN_TISSUE_FRACTION = 0.05

_TARGET_FIX = (
    "Fix: point features.stain_target at an RGB image (PNG, JPEG or TIFF) of a well-stained "
    "H&E tissue region"
)


def stain_methods(value: str | Iterable[str]) -> list[str]:
    """The methods of ``features.stain_norm`` (one name or a list), in the config's order."""
    return [value] if isinstance(value, str) else list(value)


def feature_set(encoder: str, method: str) -> str:
    """The feature-set name of ``encoder``'s features of patches normalised by ``method``."""
    return encoder if method == NO_STAIN_NORM else f"{encoder}-{method}"


def split_feature_set(name: str) -> tuple[str, str]:
    """(encoder, method) of a feature-set name; the method is ``none`` without a suffix.

    Raises:
        SettingsError: ``name`` is no feature-set name.
    """
    if not re.fullmatch(FEATURE_SET_PATTERN, name):
        raise SettingsError(
            f"{name!r} is not a feature-set name: an encoder's name, optionally followed by "
            f"-{' or -'.join(STAIN_METHODS)}."
        )
    encoder, _, method = name.partition("-")
    return encoder, method or NO_STAIN_NORM


def feature_sets(encoders: Iterable[str], methods: Iterable[str]) -> list[str]:
    """Every encoder with every method: encoder-major, in the config's orders."""
    methods = list(methods)
    return [feature_set(encoder, method) for encoder in encoders for method in methods]


def tissue_fraction(rgb: np.ndarray) -> float:
    """Share of the pixels of a uint8 RGB image (..., 3) that count as tissue."""
    return float((rgb.max(axis=-1) <= TISSUE_MAX_INTENSITY).mean()) if rgb.size else 0.0


def read_stain_target(path: str | Path) -> np.ndarray:
    """The reference image as uint8 RGB (h, w, 3), checked for tissue.

    Raises:
        SettingsError: The file is missing, not an image or has too little tissue; the message
            names ``features.stain_target`` and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"features.stain_target {path} does not exist. {_TARGET_FIX}.")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SettingsError(
            f"features.stain_target {path} is not an image that OpenCV can read. {_TARGET_FIX}."
        )
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    share = tissue_fraction(rgb)
    if share < MIN_TISSUE_FRACTION:
        raise SettingsError(
            f"features.stain_target {path} is {share:.1%} tissue (stained pixels), too little to "
            f"estimate its stains from (at least {MIN_TISSUE_FRACTION:.0%}). {_TARGET_FIX}, "
            "not background."
        )
    return rgb


def target_digest(path: str | Path | None) -> str:
    """SHA-256 of the reference image's bytes; empty for the built-in reference."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else ""


def stain_findings(features: Mapping, *, own_features: bool) -> tuple[list[str], list[str]]:
    """Problems and notes of the ``features`` section's stain settings, each with its fix.

    Args:
        features: The config's ``features`` section (validated against the schema).
        own_features: ``features.dir`` is set: no extraction runs.

    Returns:
        (problems, notes).
    """
    methods = [m for m in stain_methods(features["stain_norm"]) if m != NO_STAIN_NORM]
    target = features["stain_target"]
    if not methods:
        note = f"features.stain_target {target} is not used: features.stain_norm is none."
        return [], [note] if target else []
    if own_features:
        return [
            "features.stain_norm normalises patches before the encoder, but features.dir is set "
            "(no extraction runs). Fix: set features.stain_norm: none, or empty features.dir."
        ], []
    if not target:
        if "reinhard" in methods:
            return [
                "features.stain_norm reinhard needs a reference image, and features.stain_target "
                f"is empty. {_TARGET_FIX}, or use macenko, which has a built-in reference."
            ], []
        return [], []
    try:
        read_stain_target(target)
    except SettingsError as err:
        return [str(err)], []
    return [], []
