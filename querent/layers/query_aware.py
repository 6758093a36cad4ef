"""Query-aware sparse attention (Querent): each query attends only to its top-k regions.

Axes: ``n`` patches, ``r`` regions, ``s`` slots per region (region_size²), ``h`` heads, ``d``
head features, ``e`` scoring features, ``k`` selected regions, ``b`` key blocks (one per region
and head), ``g`` query groups (patches or regions), ``l`` local regions of a group.

A scorer (:mod:`querent.layers.scorers`) rates every region for each query from a per-region
summary; the top k regions are kept and exact softmax attention runs over their keys only.

Two ways to select:

- ``"patch"`` (the paper's): every patch picks its own k regions. Scoring costs ``n * r``, or
  less where the scorer bounds groups of regions (``quest``: :mod:`querent.layers.pruning`).
- ``"region"`` (faster): the patches of one region share the k regions picked by their mean
  scoring query. Scoring costs ``r * r`` (``s²`` times less) and each region's queries attend
  as one dense block.

With ``distance_slopes`` (not in the paper), each head adds ``-slope * distance`` to the
attention logits of a region's keys, the lattice distance in regions from the query's region
(ALiBi's linear bias, per region): a head with a steep slope stays near its query, a flat one
reads the whole slide, and the keys of a far picked region are told apart from near ones.

Memory stays bounded whatever ``n``: queries run in chunks through the kernels of
:mod:`querent.layers.tiled`, whose backward pass recomputes each chunk.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch.utils.checkpoint import checkpoint

from querent.layers.flex import flex_query_aware
from querent.layers.regions import (
    RegionLayout,
    from_regions,
    patches_by_area,
    region_mean,
    to_regions,
)
from querent.layers.scorers import Scoring
from querent.layers.tiled import (
    ChunkedAttention,
    attend_per_query,
    attend_per_query_backward,
    attend_shared,
    attend_shared_backward,
)

SELECTIONS = ("patch", "region")
#: How the attention over the picks runs: gathers in query chunks, or block-sparse FlexAttention.
KERNELS = ("tiled", "flex")


def _select(
    scoring: Scoring,
    group_queries: torch.Tensor,
    top: int,
    step: int,
    local: torch.Tensor | None,
    n_regions: int,
    prune: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Regions of every group: its ``local`` ones, if any, then its top regions among the rest.

    Args:
        scoring: Region scores.
        group_queries: (g, h, e) the query standing for each group.
        top: Regions picked by score (0: none, ``local`` only).
        step: Groups scored at once.
        local: (g, l) regions every group keeps whatever their score (``n_regions`` marks
            none), or None.
        n_regions: Regions of the slide; index ``n_regions`` is an empty region that stands
            for "no pick" where fewer than ``top`` regions are left to pick from.
        prune: Find the top regions through ``scoring.top_regions`` where it exists (the same
            picks without scoring every region; not combined with ``local``).

    Returns:
        (selected (h, g, l + top) region indices, bias (h, g, l + top) or None): the bias is
        ``score - stopgrad(score)`` on picked regions (zero on local ones), zero forward and
        the score's gradient backward.
    """
    if top == 0:  # a fixed window: the local regions only, nothing scored
        return local.expand(group_queries.shape[1], -1, -1), None
    selections, biases = [], []
    for start in range(0, len(group_queries), step):
        chunk = group_queries[start : start + step]
        with torch.no_grad():
            if prune and local is None and scoring.top_regions is not None:
                values, indices = scoring.top_regions(chunk, top)
            else:
                scores = scoring.score_all(chunk)
                if local is not None:
                    near = local[start : start + step].expand(scores.shape[0], -1, -1)
                    scores = torch.cat([scores, scores.new_zeros(*scores.shape[:2], 1)], dim=-1)
                    scores = scores.scatter(-1, near, -math.inf)
                values, indices = scores.topk(top, dim=-1)
            picked = indices.masked_fill(values == -math.inf, n_regions)
        if scoring.score_selected is not None:
            if torch.is_grad_enabled() and chunk.requires_grad:
                score = checkpoint(
                    scoring.score_selected,
                    chunk,
                    picked.clamp(max=n_regions - 1),
                    use_reentrant=False,
                )
            else:
                score = scoring.score_selected(chunk, picked.clamp(max=n_regions - 1))
            bias = (score - score.detach()).masked_fill(picked == n_regions, 0)
            if local is not None:
                bias = torch.cat([bias.new_zeros(near.shape), bias], dim=-1)
            biases.append(bias)
        selections.append(picked if local is None else torch.cat([near, picked], dim=-1))
    bias = torch.cat(biases, dim=1) if biases else None
    return torch.cat(selections, dim=1), bias


def distance_bias(
    layout: RegionLayout, group_regions: torch.Tensor, selected: torch.Tensor, slopes: torch.Tensor
) -> torch.Tensor:
    """(h, g, k) ``-slope_h`` times the lattice distance from each group's region to its picks.

    Args:
        layout: Region layout (with ``region_cells``).
        group_regions: (g,) region of each query group.
        selected: (h, g, k) selected regions (``n_regions`` marks none; its bias is unused).
        slopes: (h,) non-negative slope of each head.
    """
    cells = layout.region_cells.to(slopes.dtype)
    picked = cells[selected.clamp(max=layout.n_regions - 1)]  # (h, g, k, 2)
    distance = (picked - cells[group_regions][None, :, None]).norm(dim=-1)
    return -slopes[:, None, None] * distance


def query_aware_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: RegionLayout,
    scoring: Scoring,
    *,
    top_k: int | None,
    selection: str = "patch",
    local: bool = False,
    chunk_size: int = 1024,
    prune: bool = True,
    distance_slopes: torch.Tensor | None = None,
    kernel: str = "tiled",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of every query over the keys of its top-k regions.

    Args:
        q: (n, h, d) queries.
        k: (n, h, d) keys.
        v: (n, h, dv) values.
        layout: Region layout of the patches.
        scoring: Region scores from a scorer's ``prepare``.
        top_k: Regions per query; None or >= r means all regions (exact full attention);
            0 (with ``local``) scores none: a fixed window of the local regions.
        selection: ``"patch"`` (own selection per patch) or ``"region"`` (shared per region).
        local: Besides its top-k, every query attends to its own region and the 8 adjacent
            ones (ignored when ``top_k`` is None: all regions are attended anyway).
        chunk_size: Queries processed at once (bounds memory).
        prune: With ``selection="patch"``, find each query's top k by bounding groups of
            regions where the scorer can (``quest``; :mod:`querent.layers.pruning`): the same
            regions as scoring them all. False scores every region.
        distance_slopes: (h,) non-negative slopes of a distance bias on the logits (see the
            module docstring), or None for none.
        kernel: ``tiled`` (gathers in query chunks, :mod:`querent.layers.tiled`) or ``flex``
            (block-sparse FlexAttention, :mod:`querent.layers.flex`; the GPU kernel). The
            same picks and the same attention either way.

    Returns:
        (outputs (n, h, dv), selected regions (h, n, k); -1 marks no region, where a query had
        fewer than k regions to pick from).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of: {SELECTIONS}")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of: {KERNELS}")
    n_regions = layout.n_regions
    top = n_regions if top_k is None else min(top_k, n_regions)
    local = local and top_k is not None
    if top == 0 and not local:
        raise ValueError("top_k=0 picks no region: it needs local=True (a fixed local window)")
    near = layout.neighbours.masked_fill(layout.neighbours < 0, n_regions) if local else None
    if selection == "patch":
        # queries by area, so a chunk's queries are neighbours that share key blocks
        order = patches_by_area(layout)
        group_queries = scoring.queries.index_select(0, order)
        group_regions = layout.region_of_patch.index_select(0, order)
        step = chunk_size
        if local:
            near = near.index_select(0, group_regions)
    else:
        group_queries = region_mean(scoring.queries, layout)
        group_regions = torch.arange(n_regions, device=q.device)
        step = max(1, chunk_size // layout.slots.shape[1])
    prune = prune and selection == "patch"
    selected, bias = _select(scoring, group_queries, top, step, near, n_regions, prune)
    if distance_slopes is not None:
        near_bias = distance_bias(layout, group_regions, selected, distance_slopes)
        bias = near_bias if bias is None else bias + near_bias
    back = None
    if selection == "patch":  # from area order back to patch order
        back = torch.empty_like(order)
        back[order] = torch.arange(len(order), device=order.device)
    if kernel == "flex":
        if back is not None:
            selected, bias = selected[:, back], None if bias is None else bias[:, back]
        out = flex_query_aware(q, k, v, layout, selected, bias, per_patch=back is not None)
    else:
        out = _tiled(q, k, v, layout, selected, bias, order if back is not None else None, step)
        if back is not None:
            selected = selected[:, back]
    selected = selected.masked_fill(selected == n_regions, -1)
    return out, selected if selection == "patch" else selected[:, layout.region_of_patch]


def _tiled(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: RegionLayout,
    selected: torch.Tensor,
    bias: torch.Tensor | None,
    order: torch.Tensor | None,
    step: int,
) -> torch.Tensor:
    """(n, h, dv) attention over the picks through the gather kernels of the tiled module.

    Args:
        q: (n, h, d) queries.
        k: (n, h, d) keys.
        v: (n, h, dv) values.
        layout: Region layout of the patches.
        selected: (h, g, k) picks of each patch (in ``order``) or of each region;
            ``n_regions`` marks none.
        bias: (h, g, k) logit bias of each pick, or None.
        order: The patches in the order of ``selected`` (per-patch selection), or None
            (per-region selection).
        step: Query groups attended at once.
    """
    n_regions, n_slots = layout.slots.shape
    heads = q.shape[1]
    keys = rearrange(to_regions(k, layout), "r s h d -> (r h) s d")
    values = rearrange(to_regions(v, layout), "r s h d -> (r h) s d")
    block_valid = repeat(layout.valid, "r s -> (r h) s", h=heads)
    if (selected == n_regions).any():  # one empty region at index n_regions stands for none
        keys = torch.cat([keys, keys.new_zeros(heads, *keys.shape[1:])])
        values = torch.cat([values, values.new_zeros(heads, *values.shape[1:])])
        block_valid = torch.cat([block_valid, block_valid.new_zeros(heads, n_slots)])
    if order is not None:
        groups = q.index_select(0, order)
        attend, attend_backward = attend_per_query, attend_per_query_backward
    else:
        groups = to_regions(q, layout)
        attend, attend_backward = attend_shared, attend_shared_backward
    blocks = selected * heads + torch.arange(heads, device=q.device)[:, None, None]
    out = ChunkedAttention.apply(
        groups, keys, values, bias, blocks, block_valid, attend, attend_backward, step
    )
    if order is None:
        return from_regions(out, layout)
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order), device=order.device)
    return out.index_select(0, back)
