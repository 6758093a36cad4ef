"""Slides whose label lives in the arrangement of their patches, not in any patch.

A slide is a tissue-shaped piece of lattice (a thresholded smooth random field) tiled by patches
of four types: stroma, tumour, immune and fat. Every type's count is drawn from the same
distribution whatever the label, so a bag statistic that ignores positions (counts, means, any
set function of the features) carries no signal. What differs is the arrangement (``kind``;
``range`` is its interaction range in lattice cells):

- ``margin``: immune patches at the tumour margin (within ``range`` cells of a tumour patch) in a
  positive slide, away from the tumour (more than ``2 * range + 1`` cells) in a negative one.
- ``aggregate``: immune patches in clumps of radius about ``range`` in a positive slide,
  scattered in a negative one.
- ``contact``: immune patches touching a fat patch (8-neighbourhood) in a positive slide, more
  than 2 cells from any fat in a negative one. A patch's neighbour mean is exactly what tells
  them apart: the design where smoothing over neighbours is enough.
- ``pair``: one tumour focus and one fat focus, ``range`` stroma cells apart in a positive slide,
  ``2 * range + 1`` or more apart in a negative one (a relation between two structures that
  never touch; immune scattered).
- ``layers``: parallel bands across the tissue, tumour | ``range`` stroma | immune | ``range``
  stroma | fat in a positive slide, tumour | stroma | fat | stroma | immune in a negative one (the
  order of layers; no two of the three ever touch).
- ``motif``: rings of immune patches (the border of a 5 x 5 square, stroma inside), about one per
  16 immune patches, the rest scattered; two thirds of the rings (rounded up) hold a fat patch
  at their centre in a positive slide, one third (rounded down) in a negative one (the number
  of a specific local motif, of radius 2: a fat patch's 8 neighbours are stroma either way).
- ``control``: immune placed at random in both, but immune patches of positive slides have their
  own feature prototype: single patches carry the label (every model should learn it).

In ``margin``, a slide's ``score`` in [0, 1] is the share of its immune patches placed by the
positive rule; cohorts use 0 (negative) and 1 (positive), and the survival task's hazard grows
with it. The other kinds read a score above one half as positive.

Features are ``prototype[type] + noise * N(0, I)``; prototypes sit ``separation`` apart (in
noise units), so single patches are confused across types. With a :class:`FeatureBank` instead,
a patch of a type gets the features of a real patch of that type's cluster. Pure numpy and scipy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

#: Patch types, in the order of their type index.
TYPES = ("stroma", "tumour", "immune", "fat")
STROMA, TUMOUR, IMMUNE, FAT = range(4)
#: Arrangements that set the label (see the module docstring).
KINDS = ("margin", "aggregate", "contact", "pair", "layers", "motif", "control")
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


def _grow_from(
    rng: np.random.Generator, allowed: np.ndarray, count: int, seeds: np.ndarray
) -> np.ndarray:
    """``count`` cells of ``allowed`` nearest to the (k, 2) ``seeds`` (row, column): blobs."""
    ys, xs = np.nonzero(allowed)
    distance = np.min(
        np.hypot(xs[:, None] - seeds[:, 1], ys[:, None] - seeds[:, 0])
        * rng.uniform(0.7, 1.3, size=len(seeds)),
        axis=1,
    )
    distance += 0.8 * rng.random(len(ys))  # ragged edges
    chosen = np.zeros_like(allowed)
    pick = np.argsort(distance, kind="stable")[:count]
    chosen[ys[pick], xs[pick]] = True
    return chosen


def _grow_foci(rng: np.random.Generator, free: np.ndarray, count: int, foci: int) -> np.ndarray:
    """``count`` cells of ``free`` in ``foci`` compact blobs (nearest to random seeds)."""
    cells = np.argwhere(free)
    seeds = cells[rng.choice(len(cells), size=min(foci, len(cells)), replace=False)]
    return _grow_from(rng, free, count, seeds)


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


def _immune_by_share(rng, tissue, counts, score, settings) -> np.ndarray:
    """``margin``, ``aggregate``, ``control``: tumour foci, immune by the rules, fat at random."""
    tumour = _grow_foci(rng, tissue, counts[TUMOUR], int(rng.integers(1, 4)))
    n_positive = int(rng.binomial(counts[IMMUNE], score))
    immune = np.zeros_like(tissue)
    for count, positive in ((n_positive, True), (counts[IMMUNE] - n_positive, False)):
        if count:
            immune |= _place_immune(
                rng, tissue & ~tumour & ~immune, tumour, count, positive, settings
            )
    fat = _pick(rng, tissue & ~tumour & ~immune, counts[FAT], np.ones(tissue.shape))
    return _type_map(tissue, tumour=tumour, immune=immune, fat=fat)


def _contact(rng, tissue, counts, score, settings) -> np.ndarray:
    """Immune touching fat (positive) or more than 2 cells from any fat (negative)."""
    tumour = _grow_foci(rng, tissue, counts[TUMOUR], int(rng.integers(1, 4)))
    fat = _pick(rng, tissue & ~tumour, counts[FAT], np.ones(tissue.shape))
    distance = _distance_to(fat)
    near = distance <= 1.5 if score > 0.5 else distance > 2.5
    immune = _pick(rng, tissue & ~tumour & ~fat, counts[IMMUNE], near + 1e-6)
    return _type_map(tissue, tumour=tumour, immune=immune, fat=fat)


def _pair(rng, tissue, counts, score, settings) -> np.ndarray:
    """One tumour focus, one fat focus ``range`` (positive) or ``2 range + 1`` cells apart."""
    tumour = _grow_foci(rng, tissue, counts[TUMOUR], 1)
    gap = settings.range if score > 0.5 else 2 * settings.range + 1
    distance = np.where(tissue & ~tumour, _distance_to(tumour), -np.inf)
    allowed = distance >= gap + 1
    band = allowed & (distance < gap + 2)
    if not band.any():  # the tissue is too small for the gap: as far as it goes
        band = distance == distance.max()
        allowed = distance >= distance.max() - 1
    seeds = np.argwhere(band)
    fat = _grow_from(rng, allowed, counts[FAT], seeds[rng.integers(len(seeds))][None])
    immune = _pick(rng, tissue & ~tumour & ~fat, counts[IMMUNE], np.ones(tissue.shape))
    return _type_map(tissue, tumour=tumour, immune=immune, fat=fat)


def _layers(rng, tissue, counts, score, settings) -> np.ndarray:
    """Parallel bands: tumour, gap, immune, gap, fat (positive) or tumour, gap, fat, gap, immune."""
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.nonzero(tissue)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    order = np.argsort(along, kind="stable")
    along = along[order]
    bands = [TUMOUR, IMMUNE, FAT] if score > 0.5 else [TUMOUR, FAT, IMMUNE]

    def lay_out(start: int) -> list[tuple[int, int, int]]:
        spans, at = [], start
        for band in bands:
            spans.append((band, at, at + counts[band]))
            at = int(
                np.searchsorted(
                    along, along[min(at + counts[band], len(along)) - 1] + settings.range + 0.5
                )
            )
        return spans

    slack = len(along) - lay_out(0)[-1][2]
    spans = lay_out(int(rng.integers(0, slack + 1)) if slack > 0 else 0)
    if spans[-1][2] > len(along):
        spans = lay_out(0)
    types = np.full(tissue.shape, STROMA)
    for band, first, last in spans:
        chosen = order[first:last]
        types[ys[chosen], xs[chosen]] = band
    return np.where(tissue, types, -1)


#: Cells of a motif ring: the border of a 5 x 5 square around its centre (radius 2).
_RING = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if max(abs(dy), abs(dx)) == 2]


def _motif(rng, tissue, counts, score, settings) -> np.ndarray:
    """Immune rings (one per 16 immune), 2/3 (positive) or 1/3 of them around a fat patch."""
    tumour = _grow_foci(rng, tissue, counts[TUMOUR], int(rng.integers(1, 4)))
    centres_ok = ndimage.binary_erosion(tissue & ~tumour, np.ones((5, 5)), border_value=0)
    centres = []
    while len(centres) < max(1, counts[IMMUNE] // len(_RING)) and centres_ok.any():
        cells = np.argwhere(centres_ok)
        y, x = cells[rng.integers(len(cells))]
        centres.append((y, x))
        centres_ok[max(0, y - 5) : y + 6, max(0, x - 5) : x + 6] = False  # rings 1 cell apart
    immune, fat, kept = (np.zeros_like(tissue) for _ in range(3))
    ringed = -(-2 * len(centres) // 3) if score > 0.5 else len(centres) // 3  # ceil, floor
    with_fat = set(rng.permutation(len(centres))[:ringed].tolist())
    for index, (y, x) in enumerate(centres):
        kept[y - 2 : y + 3, x - 2 : x + 3] = True  # ring, inside and centre: no scatter here
        for dy, dx in _RING:
            immune[y + dy, x + dx] = True
        fat[y, x] = index in with_fat
    free = tissue & ~tumour & ~kept
    immune |= _pick(rng, free, counts[IMMUNE] - int(immune.sum()), np.ones(tissue.shape))
    fat |= _pick(rng, free & ~immune, counts[FAT] - int(fat.sum()), np.ones(tissue.shape))
    return _type_map(tissue, tumour=tumour, immune=immune, fat=fat)


def _type_map(tissue, *, tumour, immune, fat) -> np.ndarray:
    """(h, w) type of every cell (-1 outside the tissue)."""
    types = np.full(tissue.shape, STROMA)
    types[tumour], types[immune], types[fat] = TUMOUR, IMMUNE, FAT
    return np.where(tissue, types, -1)


#: How each kind lays out a slide's types: (rng, tissue, counts, score, settings) -> type map.
_ARRANGE = {
    "margin": _immune_by_share,
    "aggregate": _immune_by_share,
    "control": _immune_by_share,
    "contact": _contact,
    "pair": _pair,
    "layers": _layers,
    "motif": _motif,
}


@dataclass(frozen=True)
class FeatureBank:
    """Real patch features grouped into types by clustering (the real-feature cohorts).

    Attributes:
        features: (m, d) float32 features of real patches.
        types: (m,) the type each stands for: an index of :data:`TYPES`, or ``len(TYPES)`` for
            the control's positive immune.
    """

    features: np.ndarray
    types: np.ndarray

    def draw(self, rng: np.random.Generator, types: np.ndarray) -> np.ndarray:
        """(n, d) features of real patches of the given (n,) types, drawn with replacement."""
        out = np.empty((len(types), self.features.shape[1]), np.float32)
        for t in np.unique(types):
            rows = np.flatnonzero(self.types == t)
            if not len(rows):
                raise ValueError(f"the feature bank has no patch of type {t}")
            out[types == t] = self.features[rng.choice(rows, size=int((types == t).sum()))]
        return out


def generate_slide(
    rng: np.random.Generator,
    settings: ContextSettings,
    score: float,
    protos: np.ndarray,
    bank: FeatureBank | None = None,
) -> ContextSlide:
    """One slide arranged by ``settings.kind`` at ``score`` (see the module docstring).

    Features are ``protos[type]`` plus noise, or drawn from ``bank`` where one is given.
    """
    n = int(settings.patches * rng.uniform(0.85, 1.15))
    tissue = tissue_mask(rng, n)
    counts = {t: int(round(n * rng.uniform(*share))) for t, share in _TYPE_SHARES.items()}
    types = _ARRANGE[settings.kind](rng, tissue, counts, score, settings)
    ys, xs = np.nonzero(tissue)
    patch_types = types[ys, xs]
    feature_types = patch_types.copy()
    if settings.kind == "control":
        feature_types[(patch_types == IMMUNE) & (rng.random(len(ys)) < score)] = len(TYPES)
    if bank is None:
        noise = rng.normal(scale=settings.noise, size=(len(ys), protos.shape[1]))
        features = protos[feature_types] + noise.astype(np.float32)
    else:
        features = bank.draw(rng, feature_types)
    cells = np.stack([xs, ys], axis=1).astype(np.int64) + rng.integers(0, 1000, size=2)
    return ContextSlide(cells, patch_types.astype(np.int8), features, float(score))


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


def _type_grid(cells: np.ndarray, types: np.ndarray) -> np.ndarray:
    """(h, w) type of every lattice cell of a slide, -1 where it has no patch."""
    cells = np.asarray(cells, np.int64)
    cells = cells - cells.min(0)
    grid = np.full((cells[:, 1].max() + 1, cells[:, 0].max() + 1), -1)
    grid[cells[:, 1], cells[:, 0]] = types
    return grid


def _mean_distance(grid: np.ndarray, source: int, target: int) -> float:
    """Mean distance (cells) of ``source`` patches to the nearest ``target`` patch."""
    if not (grid == source).any():
        return 0.0
    return float(_distance_to(grid == target)[grid == source].mean())


def _ringed_fat(grid: np.ndarray) -> float:
    """Fat patches at the centre of a full immune ring, per 16 immune patches."""
    immune = np.pad(grid == IMMUNE, 2)
    full = np.ones(grid.shape, bool)
    for dy, dx in _RING:
        full &= immune[2 + dy : 2 + dy + grid.shape[0], 2 + dx : 2 + dx + grid.shape[1]]
    return float((full & (grid == FAT)).sum() / max(1, (grid == IMMUNE).sum() / len(_RING)))


def defining_statistic(kind: str, cells: np.ndarray, types: np.ndarray, reach: int) -> float:
    """The statistic of the true types that each arrangement sets (higher: more positive).

    See :data:`STATISTICS` for what it measures per kind; ``reach`` is the cohort's ``range``.
    """
    grid = _type_grid(cells, types)
    if kind == "margin":
        near = _distance_to(grid == TUMOUR)[grid == IMMUNE] <= reach + 0.5
        return float(near.mean()) if near.size else 0.0
    if kind == "aggregate":
        return neighbour_cooccurrence(cells, types, IMMUNE, IMMUNE)
    if kind == "contact":
        return neighbour_cooccurrence(cells, types, IMMUNE, FAT)
    if kind == "pair":
        return -float(_distance_to(grid == TUMOUR)[grid == FAT].min(initial=np.inf))
    if kind == "layers":
        return _mean_distance(grid, FAT, TUMOUR) - _mean_distance(grid, IMMUNE, TUMOUR)
    if kind == "motif":
        return _ringed_fat(grid)
    return neighbour_cooccurrence(cells, types, IMMUNE, TUMOUR)  # control: at chance


#: What :func:`defining_statistic` measures, per kind.
STATISTICS = {
    "margin": "share of immune within range of tumour",
    "aggregate": "share of immune next to immune",
    "contact": "share of immune next to fat",
    "pair": "minus the distance from fat to tumour",
    "layers": "mean distance to tumour, fat minus immune",
    "motif": "fat-centred immune rings per 16 immune",
    "control": "share of immune next to tumour",
}


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
