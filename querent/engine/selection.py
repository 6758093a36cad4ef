"""Is Querent's selection query-aware? Measures of its picks, and random picks as an ablation.

Axes: ``h`` heads, ``n`` patches (queries), ``k`` picks per query, ``r`` regions.

Measures of one slide's picks (:func:`pick_statistics`), each next to what uniformly random
picks of the same number would give:

- ``own``: share of queries whose own region is among their picks (random: ``k / r``).
- ``distance``: mean lattice distance (cells, between region centroids) from a query's region
  to its picks (random: the mean distance to all regions).
- ``top8``: share of all picks that go to the slide's 8 most picked regions (random: ``8 / r``);
  near 1, every query picks the same few regions.
- ``overlap``: mean Jaccard overlap of the pick sets of two queries of the slide (random:
  about ``k / (2r - k)``).

:func:`random_picks` swaps every query-aware layer's scorer for uniformly random scores at the
same ``top_k``: a trained model that scores as well with random picks does not use its
selection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from querent.layers.attention import QueryAwareSelfAttention
from querent.layers.scorers import RandomScorer

#: Query pairs sampled per slide for ``overlap``.
PAIRS = 2000


def pick_statistics(
    selected: torch.Tensor, region_of_patch: torch.Tensor, cells: torch.Tensor, seed: int = 0
) -> dict[str, float]:
    """Measures of one slide's picks and their values under random picks (``*_random``).

    Args:
        selected: (h, n, k) regions each query picked, -1 for none (``MILOutput.selected``).
        region_of_patch: (n,) region of every patch.
        cells: (n, 2) lattice cells of the patches.
        seed: Seed of the sampled query pairs.
    """
    selected = selected.cpu().numpy()
    own = region_of_patch.cpu().numpy()
    cells = cells.cpu().numpy().astype(float)
    n_regions = int(own.max()) + 1
    centroid = np.zeros((n_regions, 2))
    np.add.at(centroid, own, cells)
    centroid /= np.bincount(own, minlength=n_regions)[:, None]
    apart = np.linalg.norm(centroid[:, None] - centroid[None], axis=-1)  # (r, r)
    valid = selected >= 0
    k = valid.sum(-1).mean()
    picks = np.where(valid, selected, 0)
    distance = apart[own[None, :, None], picks]
    counts = np.stack(
        [np.bincount(p[v], minlength=n_regions) for p, v in zip(picks, valid, strict=True)]
    )
    top = np.sort(counts, axis=1)[:, ::-1][:, :8].sum(1) / counts.sum(1)
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(own), size=(2, PAIRS))
    member = np.zeros((*selected.shape[:2], n_regions + 1), bool)
    np.put_along_axis(member, np.where(valid, selected, n_regions), True, axis=-1)
    member = member[..., :n_regions]
    both = (member[:, a] & member[:, b]).sum(-1)
    either = (member[:, a] | member[:, b]).sum(-1)
    return {
        "own": float(((selected == own[None, :, None]) & valid).any(-1).mean()),
        "own_random": float(min(k, n_regions) / n_regions),
        "distance": float(distance[valid].mean()),
        "distance_random": float(apart[own].mean()),
        "top8": float(top.mean()),
        "top8_random": float(min(8, n_regions) / n_regions),
        "overlap": float((both / np.maximum(either, 1)).mean()),
        "overlap_random": float(k / max(2 * n_regions - k, 1)),
    }


@contextmanager
def random_picks(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every query-aware layer of ``model`` picks random regions.

    Each query (or region, with ``selection="region"``) gets ``top_k`` regions drawn uniformly
    anew every forward pass, local regions kept; the scorer's weights are left as they are and
    come back on exit.

    Raises:
        ValueError: ``model`` has no query-aware layer.
    """
    layers = [m for m in model.modules() if isinstance(m, QueryAwareSelfAttention)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no query-aware layer to pick at random")
    scorers = [layer.scorer for layer in layers]
    try:
        for layer, scorer in zip(layers, scorers, strict=True):
            layer.scorer = RandomScorer(dim=1, heads=1, head_dim=1, summary=scorer.summary)
        yield model
    finally:
        for layer, scorer in zip(layers, scorers, strict=True):
            layer.scorer = scorer
