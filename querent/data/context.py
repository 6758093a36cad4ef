"""Slides whose label lives in the arrangement of their patches, not in any patch.

A slide is a tissue-shaped piece of lattice (a thresholded smooth random field) tiled by patches
of four types: stroma, tumour, immune and fat. Tumour grows as a few compact foci; the other
types fill the rest. Every type's count is drawn from the same distribution whatever the label,
so a bag statistic that ignores positions (counts, means, any set function of the features)
carries no signal. What differs is where the immune patches sit:

- ``margin``: at the tumour margin (within ``range`` cells of a tumour patch) in a positive slide,
  and away from the tumour (more than ``2 * range + 1`` cells) in a negative one.
- ``aggregate``: in clumps of radius about ``range`` in a positive slide, scattered in a negative
  one.
- ``control``: placed at random in both, but immune patches of positive slides have their own
  feature prototype: single patches carry the label (every model should learn it).

A slide's ``score`` in [0, 1] is the share of its immune patches placed by the positive rule;
cohorts use 0 (negative) and 1 (positive), and the survival task's hazard grows with it.

Features are ``prototype[type] + noise * N(0, I)``; prototypes sit ``separation`` apart (in
noise units), so single patches are confused across types. Pure numpy and scipy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

#: Patch types, in the order of their type index.
TYPES = ("stroma", "tumour", "immune", "fat")
STROMA, TUMOUR, IMMUNE, FAT = range(4)
#: Arrangements that set the label (see the module docstring).
KINDS = ("margin", "aggregate", "control")
#: Share of the slide's patches of each type besides stroma: (low, high) of a uniform draw.
_TYPE_SHARES = {TUMOUR: (0.2, 0.3), IMMUNE: (0.08, 0.12), FAT: (0.04, 0.08)}
#: The 8-neighbourhood on the lattice.
_NEIGHBOURS = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]


@dataclass(frozen=True)
class ContextSettings:
    """How a context cohort is generated (the knobs of ``querent synthetic``)."""

    kind: str = field(
        default="margin", metadata={"help": "arrangement that sets the label", "choices": KINDS}
    )
    task: str = field(
        default="classification",
        metadata={"help": "label or survival", "choices": ("classification", "survival")},
    )
    slides: int = field(default=100, metadata={"help": "slides (one per case)"})
    patches: int = field(
        default=2000, metadata={"help": "mean patches per slide (each within 15 percent)"}
    )
    dim: int = field(default=32, metadata={"help": "feature width"})
    range: int = field(default=2, metadata={"help": "interaction range in lattice cells"})
    noise: float = field(default=1.0, metadata={"help": "feature noise (sd per channel)"})
    separation: float = field(
        default=3.0, metadata={"help": "distance between type prototypes, in noise sd"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        """Reject settings that cannot make a cohort."""
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.task not in ("classification", "survival"):
            problems.append(f"task must be classification or survival, got {self.task!r}")
        if self.slides < 4 or self.patches < 50 or self.dim < 8 or self.range < 1:
            problems.append("slides >= 4, patches >= 50, dim >= 8 and range >= 1 are needed")
        if self.noise <= 0 or self.separation < 0:
            problems.append("noise must be > 0 and separation >= 0")
        if problems:
            raise ValueError("context cohort: " + "; ".join(problems))


@dataclass(frozen=True)
class ContextSlide:
    """One generated slide.

    Attributes:
        cells: (n, 2) int64 lattice cells (column, row).
        types: (n,) type index of every patch (see :data:`TYPES`).
        features: (n, dim) float32.
        score: Share of immune patches placed by the positive rule.
    """

    cells: np.ndarray
    types: np.ndarray
    features: np.ndarray
    score: float


def prototypes(settings: ContextSettings) -> np.ndarray:
    """(types + 1, dim) feature prototypes; the last row is the control's positive immune.

    Rows are orthogonal directions in a random rotation (fixed by the seed, shared by every
    slide of a cohort), all pairwise ``separation * noise`` apart.
    """
    rng = np.random.default_rng([settings.seed, 1])
    basis, _ = np.linalg.qr(rng.normal(size=(settings.dim, len(TYPES) + 1)))
    return (basis.T * settings.separation * settings.noise / np.sqrt(2)).astype(np.float32)


def tissue_mask(rng: np.random.Generator, n: int) -> np.ndarray:
    """(h, w) bool mask of exactly ``n`` cells: an irregular, mostly connected tissue shape."""
    side = int(np.ceil(np.sqrt(n / 0.45))) + 4
    field = ndimage.gaussian_filter(rng.normal(size=(side, side)), side / 8, mode="constant")
    field /= field.std() + 1e-12
    y, x = np.mgrid[0:side, 0:side]
    centre = (side - 1) / 2
    field -= 2.5 * ((x - centre) ** 2 + (y - centre) ** 2) / centre**2
    mask = np.zeros(side * side, bool)
    mask[np.argsort(-field.ravel(), kind="stable")[:n]] = True
    return mask.reshape(side, side)


def _distance_to(target: np.ndarray) -> np.ndarray:
    """Euclidean distance (cells) of every cell of the grid to the nearest ``target`` cell."""
    if not target.any():
        return np.full(target.shape, np.inf)
    return ndimage.distance_transform_edt(~target)


def _grow_foci(rng: np.random.Generator, free: np.ndarray, count: int, foci: int) -> np.ndarray:
    """``count`` cells of ``free`` in ``foci`` compact blobs (nearest to random seeds)."""
    ys, xs = np.nonzero(free)
    seeds = rng.choice(len(ys), size=min(foci, len(ys)), replace=False)
    distance = np.min(
        np.hypot(xs[:, None] - xs[seeds], ys[:, None] - ys[seeds])
        * rng.uniform(0.7, 1.3, size=len(seeds)),
        axis=1,
    )
    distance += 0.8 * rng.random(len(ys))  # ragged edges
    chosen = np.zeros_like(free)
    pick = np.argsort(distance, kind="stable")[:count]
    chosen[ys[pick], xs[pick]] = True
    return chosen


def _pick(rng: np.random.Generator, free: np.ndarray, count: int, weight: np.ndarray) -> np.ndarray:
    """``count`` cells of ``free`` drawn without replacement with probability ~ ``weight``."""
    ys, xs = np.nonzero(free)
    w = weight[ys, xs] + 1e-9
    pick = rng.choice(len(ys), size=min(count, len(ys)), replace=False, p=w / w.sum())
    chosen = np.zeros_like(free)
    chosen[ys[pick], xs[pick]] = True
    return chosen


def _place_immune(
    rng: np.random.Generator,
    free: np.ndarray,
    tumour: np.ndarray,
    count: int,
    positive: bool,
    settings: ContextSettings,
) -> np.ndarray:
    """Cells of ``count`` immune patches among ``free`` by the positive or negative rule."""
    reach = settings.range
    if settings.kind == "margin":
        distance = _distance_to(tumour)
        if positive:
            weight = (distance <= reach + 0.5).astype(float)
        else:
            weight = (distance > 2 * reach + 1).astype(float)
        return _pick(rng, free, count, weight + 1e-6)
    if settings.kind == "aggregate" and positive:
        clumps = max(1, round(count / (np.pi * (reach + 0.5) ** 2)))
        return _grow_foci(rng, free, count, clumps)
    return _pick(rng, free, count, np.ones(free.shape))


def generate_slide(
    rng: np.random.Generator, settings: ContextSettings, score: float, protos: np.ndarray
) -> ContextSlide:
    """One slide whose immune patches follow the positive rule with probability ``score``."""
    n = int(settings.patches * rng.uniform(0.85, 1.15))
    tissue = tissue_mask(rng, n)
    counts = {t: int(round(n * rng.uniform(*share))) for t, share in _TYPE_SHARES.items()}
    tumour = _grow_foci(rng, tissue, counts[TUMOUR], int(rng.integers(1, 4)))
    n_positive = int(rng.binomial(counts[IMMUNE], score))
    immune = np.zeros_like(tissue)
    for count, positive in ((n_positive, True), (counts[IMMUNE] - n_positive, False)):
        if count:
            immune |= _place_immune(
                rng, tissue & ~tumour & ~immune, tumour, count, positive, settings
            )
    fat = _pick(rng, tissue & ~tumour & ~immune, counts[FAT], np.ones(tissue.shape))
    types = np.full(tissue.shape, STROMA)
    types[tumour], types[immune], types[fat] = TUMOUR, IMMUNE, FAT
    ys, xs = np.nonzero(tissue)
    patch_types = types[ys, xs]
    centres = protos[patch_types].copy()
    if settings.kind == "control":
        positive_immune = (patch_types == IMMUNE) & (rng.random(len(ys)) < score)
        centres[positive_immune] = protos[len(TYPES)]
    noise = rng.normal(scale=settings.noise, size=centres.shape).astype(np.float32)
    cells = np.stack([xs, ys], axis=1).astype(np.int64) + rng.integers(0, 1000, size=2)
    return ContextSlide(cells, patch_types.astype(np.int8), centres + noise, float(score))


def neighbour_cooccurrence(cells: np.ndarray, types: np.ndarray, a: int, b: int) -> float:
    """Share of type-``a`` patches with at least one type-``b`` patch among their 8 neighbours."""
    cells = np.asarray(cells, np.int64)
    lookup = {tuple(c): t for c, t in zip(cells.tolist(), types.tolist(), strict=True)}
    of_a = cells[types == a]
    if not len(of_a):
        return 0.0
    hits = sum(
        any(lookup.get((x + dx, y + dy)) == b for dx, dy in _NEIGHBOURS) for x, y in of_a.tolist()
    )
    return hits / len(of_a)


def bag_statistics(features: np.ndarray) -> np.ndarray:
    """Permutation-invariant summary of a bag: mean, sd, min and max of each feature, and size."""
    features = np.asarray(features, np.float64)
    return np.concatenate(
        [
            features.mean(0),
            features.std(0),
            features.min(0),
            features.max(0),
            [np.log(len(features))],
        ]
    )
