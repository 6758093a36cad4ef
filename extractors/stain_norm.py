"""Stain normalisation of patch batches, vectorised over the batch on the encoder's device.

- Macenko et al. 2009, "A method for normalizing histology slides for quantitative analysis"
  (ISBI): each patch's haematoxylin and eosin vectors are the extreme angles (1st and 99th
  percentile) of its tissue pixels' optical densities in the plane of their two main
  directions; the patch is rebuilt from its stain concentrations, scaled so that their 99th
  percentiles match the reference's, with the reference's stain vectors.
- Reinhard et al. 2001, "Color transfer between images" (IEEE CG&A), as used for H&E: each
  CIELAB channel of a patch is shifted and scaled to the reference's mean and spread.

The reference is fitted once, from one image (``features.stain_target``) or, for Macenko, the
built-in one. A patch whose stains cannot be estimated (too little tissue, see
:data:`extractors.stain.MIN_TISSUE_FRACTION`, or a degenerate estimate) is passed on as read and
counted.

Axes: ``n`` patches, ``p`` pixels of a patch, ``c`` colour channels (RGB), ``s`` stains (H, E).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from extractors.errors import SettingsError
from extractors.stain import (
    LIGHT_INTENSITY,
    MIN_TISSUE_FRACTION,
    NO_STAIN_NORM,
    STAIN_METHODS,
    TISSUE_MAX_INTENSITY,
    read_stain_target,
    target_digest,
)

#: The built-in Macenko reference: stain vectors (rows R, G, B; columns H, E) and the 99th
#: percentiles of their concentrations, from the reference implementation of Macenko et al.
#: 2009 (github.com/mitkovetta/staining-normalization, normalizeStaining.m; torchstain ships
#: the same numbers).
BUILTIN_STAINS = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
BUILTIN_MAX_CONCENTRATIONS = (1.9705, 1.0308)
#: Percentile of the angles that gives the stain vectors, and of the concentrations (Macenko).
ANGLE_PERCENTILE = 1.0
CONCENTRATION_PERCENTILE = 99.0


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (n, c, h, w) -> (n, p, c), a view for channels-last images."""
    n, c, h, w = images.shape
    return images.permute(0, 2, 3, 1).reshape(n, h * w, c)


def as_images(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n, p, c) -> (n, c, h, w) in channels-last memory, shaped like ``like``."""
    n, c, h, w = like.shape
    return values.reshape(n, h, w, c).permute(0, 3, 1, 2)


def rounded(values: torch.Tensor) -> list:
    """Values as nested lists of floats to 6 decimals (what float32 holds, without its noise)."""
    return values.double().round(decimals=6).tolist()


def to_uint8(values: torch.Tensor) -> torch.Tensor:
    """Round and clip to uint8."""
    return values.clamp(0, 255).round_().to(torch.uint8)


def enough_tissue(tissue: torch.Tensor) -> torch.Tensor:
    """(n,) whether an image's tissue mask (n, p) covers enough of it to normalise."""
    return tissue.sum(dim=1) >= MIN_TISSUE_FRACTION * tissue.shape[1]


def tissue_mask(rgb: torch.Tensor) -> torch.Tensor:
    """(n, p) stained pixels of uint8 (n, p, c) (see :mod:`extractors.stain`)."""
    return rgb.amax(dim=2) <= TISSUE_MAX_INTENSITY


def optical_density(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 optical density ``-ln((I + 1) / I0)``."""
    return torch.log(LIGHT_INTENSITY / (rgb.float() + 1.0))


def masked_percentile(
    values: torch.Tensor, q: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per row, the ``q``-th percentile (nearest rank) of the values where ``mask`` is set.

    Args:
        values: (n, p).
        q: Percentile, 0 to 100.
        mask: (n, p) bool; None: every value.

    Returns:
        (n,); rows without any value give +-inf.
    """
    if mask is None:
        count = torch.full((len(values), 1), values.shape[1], device=values.device)
    else:
        count = mask.sum(dim=1, keepdim=True)
    rank = torch.round(q / 100 * (count - 1)).clamp(min=0).long()  # from the smallest
    largest = q > 50
    if largest:  # count from the other end: fewer values to rank
        rank = (count - 1 - rank).clamp(min=0)
    if mask is not None:
        values = values.masked_fill(~mask, -math.inf if largest else math.inf)
    k = min(values.shape[1], int(rank.max()) + 1)
    # partial selection of the k extreme values: far cheaper than sorting whole rows
    extremes = values.topk(k, dim=1, largest=largest).values
    return extremes.gather(1, rank.clamp(max=k - 1)).squeeze(1)


@dataclass(frozen=True)
class MacenkoEstimate:
    """Stains of a batch of images (Macenko et al. 2009).

    Attributes:
        od: Optical density of every pixel, (n, p, c).
        stains: Unit stain vectors, (n, c, s), haematoxylin first.
        unmix: (n, c, s): ``od @ unmix`` are the stain concentrations (least squares).
        maxima: 99th percentile of each stain's concentration over the pixels, (n, s).
        ok: (n,) False where the estimate failed (its values are then meaningless).
    """

    od: torch.Tensor
    stains: torch.Tensor
    unmix: torch.Tensor
    maxima: torch.Tensor
    ok: torch.Tensor


def main_plane(od: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
    """(n, c, 2): per image, the two main directions of its tissue pixels' optical densities.

    The first is the main one, signed to point into positive densities.
    """
    count = tissue.sum(dim=1).view(-1, 1, 1).double()
    kept = od.masked_fill(~tissue.unsqueeze(2), 0.0)
    mean = kept.sum(dim=1, keepdim=True).double() / count.clamp(min=1)  # (n, 1, c)
    moment = (kept.transpose(1, 2) @ kept).double()  # (n, c, c)
    cov = (moment - count * mean.transpose(1, 2) @ mean) / (count - 1).clamp(min=1)
    _, vectors = torch.linalg.eigh(cov)  # eigenvalues ascending
    main, second = vectors[..., 2].float(), vectors[..., 1].float()  # (n, c)
    main = main * torch.where(main.sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
    return torch.stack((main, second), dim=2)


def macenko_estimate(images: torch.Tensor) -> MacenkoEstimate:
    """Estimate the stains of each image of a batch.

    Args:
        images: uint8 (n, c, h, w) RGB.
    """
    rgb = pixels(images)
    od = optical_density(rgb)  # (n, p, c)
    tissue = tissue_mask(rgb)  # (n, p)
    plane = main_plane(od, tissue)
    projected = od @ plane  # (n, p, 2)
    angle = torch.atan2(projected[..., 1], projected[..., 0])  # in (-pi/2, pi/2) for tissue
    first, last = (
        (plane @ torch.stack((torch.cos(a), torch.sin(a)), dim=1).unsqueeze(2)).squeeze(2)
        for a in (
            masked_percentile(angle, ANGLE_PERCENTILE, tissue),
            masked_percentile(angle, 100 - ANGLE_PERCENTILE, tissue),
        )
    )
    h_first = (first[:, 0] > last[:, 0]).unsqueeze(1)  # haematoxylin absorbs more red
    stains = torch.stack(
        (torch.where(h_first, first, last), torch.where(h_first, last, first)), dim=2
    )
    inverse, info = torch.linalg.inv_ex(stains.transpose(1, 2) @ stains)  # (n, s, s)
    unmix = stains @ inverse
    concentrations = unmix.transpose(1, 2) @ od.transpose(1, 2)  # (n, s, p)
    maxima = masked_percentile(concentrations.flatten(0, 1), CONCENTRATION_PERCENTILE)
    maxima = maxima.view(len(stains), -1)  # (n, s)
    ok = (
        enough_tissue(tissue)
        & (info == 0)
        & torch.isfinite(stains).flatten(1).all(dim=1)
        & (maxima > 0).all(dim=1)
    )
    return MacenkoEstimate(od, stains, unmix, maxima, ok)


class StainNormaliser(ABC):
    """Normalises uint8 RGB patch batches to a reference fitted once; call it on a batch.

    Args:
        target: The reference image file; None for the built-in reference.

    Raises:
        SettingsError: The target is missing, unreadable or unfit as a reference.
    """

    #: ``macenko`` or ``reinhard``.
    method = NO_STAIN_NORM

    def __init__(self, target: str | Path | None = None) -> None:
        self.target = Path(target) if target else None
        image = None
        if self.target is not None:
            image = torch.from_numpy(read_stain_target(self.target)).permute(2, 0, 1)[None]
        self.target_sha256 = target_digest(self.target)
        self.fit(image)

    @abstractmethod
    def fit(self, image: torch.Tensor | None) -> None:
        """Fit the reference to ``image``, uint8 (1, c, h, w); None: the built-in reference."""

    @abstractmethod
    def reference(self) -> dict:
        """The fitted reference as plain numbers."""

    @abstractmethod
    def normalise(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised pixel values, float (n, p, c) unclipped, and ok (n,).

        Where ok, every value is a number (maybe out of 0..255); elsewhere they may be NaN.
        """

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalise a batch.

        Args:
            images: uint8 (n, c, h, w) RGB, any memory format, on any device.

        Returns:
            uint8 (n, c, h, w) in channels-last memory, with the patches whose stains could not
            be estimated as they were; ok (n,) bool, False for those.
        """
        if not len(images):
            return images, torch.ones(0, dtype=torch.bool, device=images.device)
        values, ok = self.normalise(images)
        out = torch.where(ok.view(-1, 1, 1), to_uint8(values), pixels(images))
        return as_images(out, images), ok

    def recipe(self) -> dict:
        """What the normalised features depend on (for reuse checks)."""
        return {
            "method": self.method,
            "target": str(self.target or ""),
            "target_sha256": self.target_sha256,
        }

    def attrs(self) -> dict:
        """Attributes of a feature file (``stain_*``)."""
        return {
            "stain_norm": self.method,
            "stain_target": str(self.target) if self.target else "built-in",
            "stain_reference": json.dumps(self.reference()),
        }


class MacenkoNormaliser(StainNormaliser):
    """Macenko et al. 2009, to the stains of ``target`` (None: :data:`BUILTIN_STAINS`)."""

    method = "macenko"

    def fit(self, image: torch.Tensor | None) -> None:
        """The stain vectors and concentration maxima of ``image``, or the built-in ones."""
        if image is None:
            self.stains = torch.tensor(BUILTIN_STAINS)
            self.max_concentrations = torch.tensor(BUILTIN_MAX_CONCENTRATIONS)
            return
        estimate = macenko_estimate(image)
        if not estimate.ok.all():
            raise SettingsError(
                f"features.stain_target {self.target}: its two stain vectors cannot be "
                "estimated. Fix: use an H&E image with both stains, or an empty stain_target "
                "for the built-in reference."
            )
        self.stains, self.max_concentrations = estimate.stains[0], estimate.maxima[0]

    def reference(self) -> dict:
        """Stain vectors (rows R, G, B; columns H, E) and concentration maxima."""
        return {
            "stains": rounded(self.stains),
            "max_concentrations": rounded(self.max_concentrations),
        }

    def normalise(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each patch rebuilt from its rescaled concentrations with the reference stains."""
        estimate = macenko_estimate(images)
        device = images.device
        scale = self.max_concentrations.to(device) / estimate.maxima  # (n, s)
        # concentrations, rescaled, back to optical density with the reference stains: one
        # (c x c) matrix per image, applied in the exponent of I0 * exp(-od)
        mixing = estimate.unmix * scale.unsqueeze(1) @ self.stains.to(device).T  # (n, c, c)
        exponent = torch.baddbmm(
            torch.full((1, 1, 1), math.log(LIGHT_INTENSITY), device=device),
            estimate.od,
            mixing,
            alpha=-1,
        )
        return exponent.exp_(), estimate.ok & torch.isfinite(mixing).flatten(1).all(dim=1)


# sRGB (D65) <-> CIE XYZ, and the D65 white point
_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
_EPSILON = (6 / 29) ** 3


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 sRGB (..., c) -> CIELAB (..., 3) float32: L in 0..100, a and b around 0."""
    levels = torch.arange(256, dtype=torch.float32, device=rgb.device) / 255
    linear = torch.where(levels > 0.04045, ((levels + 0.055) / 1.055) ** 2.4, levels / 12.92)
    xyz = linear[rgb.long()] @ (_RGB_TO_XYZ.T / _WHITE).to(rgb.device)  # relative to white
    f = torch.where(xyz > _EPSILON, xyz.clamp(min=_EPSILON) ** (1 / 3), xyz * 7.787 + 16 / 116)
    fx, fy, fz = f.unbind(-1)
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB (..., 3) -> sRGB (..., c) float32 in 0..255, not clipped."""
    light, a, b = lab.unbind(-1)
    fy = (light + 16) / 116
    f = torch.stack((fy + a / 500, fy, fy - b / 200), dim=-1)
    xyz = torch.where(f > 6 / 29, f**3, (f - 16 / 116) / 7.787)
    linear = (xyz * _WHITE.to(lab.device)) @ torch.linalg.inv(_RGB_TO_XYZ).to(lab.device).T
    srgb = torch.where(
        linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, linear * 12.92
    )
    return srgb * 255


def lab_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, CIELAB (n, p, 3) and its channels' mean and standard deviation (n, 3)."""
    lab = rgb_to_lab(pixels(images))
    spread, mean = torch.std_mean(lab, dim=1)
    return lab, mean, spread


class ReinhardNormaliser(StainNormaliser):
    """Reinhard et al. 2001 in CIELAB, to the channel statistics of ``target``.

    A patch with too little tissue (its background would be dyed), or of (nearly) one colour in
    some channel, is left as it was.
    """

    method = "reinhard"
    #: Smallest channel spread (CIELAB units) of a patch that is rescaled.
    MIN_SPREAD = 1e-3

    def fit(self, image: torch.Tensor | None) -> None:
        """The CIELAB channels' mean and standard deviation of ``image`` (required)."""
        if image is None:
            raise SettingsError(
                "features.stain_norm reinhard needs a reference image. Fix: set "
                "features.stain_target to an RGB image of a well-stained H&E region."
            )
        _, mean, spread = lab_statistics(image)
        self.mean, self.spread = mean[0], spread[0]

    def reference(self) -> dict:
        """CIELAB mean and standard deviation per channel."""
        return {"lab_mean": rounded(self.mean), "lab_std": rounded(self.spread)}

    def normalise(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each patch's CIELAB channels moved and scaled to the reference's statistics."""
        lab, mean, spread = lab_statistics(images)
        ok = (spread > self.MIN_SPREAD).all(dim=1) & enough_tissue(tissue_mask(pixels(images)))
        device = images.device
        gain = (self.spread.to(device) / spread.clamp(min=self.MIN_SPREAD)).unsqueeze(1)
        lab = (lab - mean.unsqueeze(1)) * gain + self.mean.to(device)
        return lab_to_rgb(lab), ok & torch.isfinite(gain).flatten(1).all(dim=1)


#: The normaliser of each method of :data:`extractors.stain.STAIN_METHODS`.
NORMALISERS = {cls.method: cls for cls in (MacenkoNormaliser, ReinhardNormaliser)}


def create_normaliser(method: str, target: str | Path | None = None) -> StainNormaliser | None:
    """The normaliser of ``method`` fitted to ``target`` (None: built-in); None for ``none``.

    Raises:
        SettingsError: Unknown method, or a target that cannot serve as a reference.
    """
    if method == NO_STAIN_NORM:
        return None
    if method not in NORMALISERS:
        raise SettingsError(
            f"unknown stain normalisation {method!r}; features.stain_norm takes "
            f"{NO_STAIN_NORM}, {', '.join(STAIN_METHODS)}."
        )
    return NORMALISERS[method](target)
