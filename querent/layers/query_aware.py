"""Query-aware sparse attention (Querent): each query attends only to its top-k regions.

Axes: ``n`` patches, ``r`` regions, ``s`` slots per region (region_size²), ``h`` heads, ``d``
head features, ``e`` scoring features, ``k`` selected regions, ``b`` key blocks (one per region
and head), ``g`` query groups in a chunk, ``m`` queries per group.

A scorer (:mod:`querent.layers.scorers`) rates every region for each query from a per-region
summary; the top k regions are kept and exact softmax attention runs over their keys only.

Two ways to select:

- ``"patch"`` (the paper's): every patch picks its own k regions. Scoring costs ``n * r``, or
  less where the scorer bounds groups of regions (``quest``: :mod:`querent.layers.pruning`).
- ``"region"`` (faster): the patches of one region share the k regions picked by their mean
  scoring query. Scoring costs ``r * r`` (``s²`` times less) and each region's queries attend
  as one dense block.

Memory stays bounded whatever ``n``: queries run in chunks, and the backward pass recomputes
each chunk (as flash attention does) and adds its key and value gradients in place. No (n, n)
or (n, k * s, d) tensor ever exists; the largest is one chunk's gathered keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from querent.layers.linear import Linear
from querent.layers.regions import (
    RegionLayout,
    from_regions,
    patches_by_area,
    region_mean,
    to_regions,
)
from querent.layers.scorers import Scoring, make_scorer

SELECTIONS = ("patch", "region")

#: Query-block pairs per tile in per-patch attention (one small matmul per tile). A block is
#: picked by about 5 to 7 queries of a chunk (noisy features, 32k to 128k patches): tiles of 16
#: were then 31% to 45% full, and 128k steps 4% slower than with 8 (bench_attention).
TILE = 8


class _Tiles(NamedTuple):
    """A chunk's (query, key block) pairs packed into tiles of ``TILE`` pairs sharing a block.

    Pairs are (head, query, pick) in ``blocks.flatten()`` order; padding slots point one past
    the last pair and one past the last query row (a zero row is appended before gathering).
    """

    block: torch.Tensor  # (t,) key block of each tile
    pos: torch.Tensor  # (p,) flat tile slot of each pair
    pair: torch.Tensor  # (t * TILE,) pair in each slot
    row: torch.Tensor  # (t * TILE,) query row, in (head, query) order, in each slot

    @classmethod
    def pack(cls, blocks: torch.Tensor) -> _Tiles:
        """Pack the pairs of ``blocks`` (h, c, k), sorted by key block."""
        heads, c, k = blocks.shape
        flat = blocks.flatten()
        n_pairs = flat.numel()
        order = torch.argsort(flat, stable=True)
        unique, counts = torch.unique_consecutive(flat[order], return_counts=True)
        tiles = (counts + TILE - 1) // TILE
        run = torch.repeat_interleave(torch.arange(len(unique), device=flat.device), counts)
        rank = torch.arange(n_pairs, device=flat.device) - (torch.cumsum(counts, 0) - counts)[run]
        first_tile = torch.cumsum(tiles, 0) - tiles
        pos = torch.empty_like(flat)
        pos[order] = (first_tile[run] + rank // TILE) * TILE + rank % TILE
        pair = flat.new_full((int(tiles.sum()) * TILE,), n_pairs)
        pair[pos] = torch.arange(n_pairs, device=flat.device)
        row_of_pair = torch.arange(heads * c, device=flat.device).repeat_interleave(k)
        row = torch.cat([row_of_pair, row_of_pair.new_full((1,), heads * c)])[pair]
        return cls(torch.repeat_interleave(unique, tiles), pos, pair, row)

    def gather(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(t, TILE, f) tiles of ``rows`` (m, f) at ``index`` (``m`` gives zeros)."""
        padded = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
        return padded.index_select(0, index).view(-1, TILE, rows.shape[1])

    def untile(self, tiles: torch.Tensor) -> torch.Tensor:
        """(t, TILE, f) -> (p, f) in pair order."""
        return tiles.reshape(-1, tiles.shape[-1]).index_select(0, self.pos)


def _per_query_weights(
    tiles: _Tiles,
    rows: torch.Tensor,
    blocks: torch.Tensor,
    bias: torch.Tensor | None,
    keys: torch.Tensor,
    block_valid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention weights of each query over its blocks' keys.

    Returns (weights (h, c, k * s), query tiles (t, TILE, d), key tiles (t, s, d)).
    """
    heads, c, k = blocks.shape
    query_tiles = tiles.gather(rows, tiles.row)
    key_tiles = keys.index_select(0, tiles.block)
    logits = tiles.untile(torch.bmm(query_tiles, key_tiles.transpose(1, 2)))
    logits = logits.view(heads, c, k, -1)
    if bias is not None:
        logits = logits + bias[..., None]
    logits = logits.masked_fill(~block_valid[blocks], -math.inf)
    return rearrange(logits, "h c k s -> h c (k s)").softmax(dim=-1), query_tiles, key_tiles


def _attend_per_query(
    queries: torch.Tensor,
    blocks: torch.Tensor,
    bias: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    block_valid: torch.Tensor,
) -> torch.Tensor:
    """Softmax attention of each query over the keys of its own selected blocks.

    Gathering k * s keys per query would move ``s`` times more memory than the queries
    themselves. Instead the (query, block) pairs are sorted by block and packed into tiles of
    pairs that share one key block; a tile is one small matmul against that block.

    Args:
        queries: (c, h, d).
        blocks: (h, c, k) key block (region and head) of each selected region.
        bias: (h, c, k) added to the logits of every key of a selected region, or None.
        keys: (b, s, d) keys by block.
        values: (b, s, dv).
        block_valid: (b, s) True where a slot holds a patch.

    Returns:
        (c, h, dv) outputs.
    """
    heads, c, k = blocks.shape
    slots, dim = keys.shape[1:]
    tiles = _Tiles.pack(blocks)
    rows = rearrange(queries, "c h d -> (h c) d") * dim**-0.5
    weights, _, _ = _per_query_weights(tiles, rows, blocks, bias, keys, block_valid)
    weight_tiles = tiles.gather(weights.view(-1, slots), tiles.pair)
    out = tiles.untile(torch.bmm(weight_tiles, values.index_select(0, tiles.block)))
    return rearrange(out.view(heads, c, k, -1).sum(dim=2), "h c d -> c h d")


def _attend_per_query_backward(
    queries: torch.Tensor,
    blocks: torch.Tensor,
    bias: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    block_valid: torch.Tensor,
    grad_out: torch.Tensor,
    grad_keys: torch.Tensor,
    grad_values: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`_attend_per_query`, written out on the same tiles.

    Autograd through the forward would add a scatter for every gather; here each gradient is
    a gather of tiles (or, for keys and values, one add into ``grad_keys`` and ``grad_values``
    by block, in place).

    Returns:
        (grad of queries (c, h, d), grad of bias (h, c, k) or None).
    """
    heads, c, k = blocks.shape
    slots, dim = keys.shape[1:]
    scale = dim**-0.5
    tiles = _Tiles.pack(blocks)
    rows = rearrange(queries, "c h d -> (h c) d") * scale
    weights, query_tiles, key_tiles = _per_query_weights(
        tiles, rows, blocks, bias, keys, block_valid
    )
    value_tiles = values.index_select(0, tiles.block)
    grad_out_tiles = tiles.gather(rearrange(grad_out, "c h d -> (h c) d"), tiles.row)
    grad_weights = tiles.untile(torch.bmm(grad_out_tiles, value_tiles.transpose(1, 2)))
    grad_weights = grad_weights.view(heads, c, k * slots)
    grad_logits = weights * (grad_weights - (weights * grad_weights).sum(-1, keepdim=True))
    grad_logit_tiles = tiles.gather(grad_logits.view(-1, slots), tiles.pair)
    weight_tiles = tiles.gather(weights.view(-1, slots), tiles.pair)
    grad_values.index_add_(0, tiles.block, torch.bmm(weight_tiles.transpose(1, 2), grad_out_tiles))
    grad_keys.index_add_(0, tiles.block, torch.bmm(grad_logit_tiles.transpose(1, 2), query_tiles))
    grad_rows = tiles.untile(torch.bmm(grad_logit_tiles, key_tiles)).view(heads, c, k, dim)
    grad_queries = rearrange(grad_rows.sum(dim=2) * scale, "h c d -> c h d")
    grad_bias = None if bias is None else grad_logits.view(heads, c, k, slots).sum(-1)
    return grad_queries, grad_bias


def _attend_shared(
    groups: torch.Tensor,
    blocks: torch.Tensor,
    bias: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    block_valid: torch.Tensor,
) -> torch.Tensor:
    """Softmax attention of groups of queries over the keys of their group's selected blocks.

    Args:
        groups: (g, m, h, d); the m queries of a group share its selection.
        blocks: (h, g, k) key block (region and head) of each selected region.
        bias: (h, g, k) added to the logits of every key of a selected region, or None.
        keys: (b, s, d) keys by block.
        values: (b, s, dv).
        block_valid: (b, s) True where a slot holds a patch.

    Returns:
        (g, m, h, dv) outputs.
    """
    heads, n_groups, k = blocks.shape
    _, slots, dim = keys.shape
    flat = blocks.flatten()
    key = keys.index_select(0, flat).view(heads * n_groups, k * slots, dim)
    value = values.index_select(0, flat).view(heads * n_groups, k * slots, -1)
    query = rearrange(groups, "g m h d -> (h g) m d") * dim**-0.5
    logits = torch.bmm(query, key.transpose(1, 2))  # ((h g), m, (k s))
    if bias is not None:
        logits = logits + repeat(bias, "h g k -> (h g) 1 (k s)", s=slots)
    mask = rearrange(block_valid[blocks], "h g k s -> (h g) 1 (k s)")
    weights = logits.masked_fill(~mask, -math.inf).softmax(dim=-1)
    return rearrange(torch.bmm(weights, value), "(h g) m d -> g m h d", h=heads)


def _attend_shared_backward(
    groups: torch.Tensor,
    blocks: torch.Tensor,
    bias: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    block_valid: torch.Tensor,
    grad_out: torch.Tensor,
    grad_keys: torch.Tensor,
    grad_values: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`_attend_shared`, by recomputing it under autograd.

    Autograd through a gather from the whole key table would allocate a zero gradient of the
    table; here the gradient is taken with respect to just the key blocks used, then added
    into ``grad_keys`` and ``grad_values`` in place.

    Returns:
        (grad of groups (g, m, h, d), grad of bias (h, g, k) or None).
    """
    used, local = torch.unique(blocks, return_inverse=True)
    leaves = [t.detach().requires_grad_() for t in (groups, keys[used], values[used])]
    if bias is not None:
        leaves.append(bias.detach().requires_grad_())
    with torch.enable_grad():
        out = _attend_shared(
            leaves[0],
            local,
            leaves[3] if bias is not None else None,
            *leaves[1:3],
            block_valid[used],
        )
        grads = torch.autograd.grad(out, leaves, grad_out)
    grad_keys.index_add_(0, used, grads[1])
    grad_values.index_add_(0, used, grads[2])
    return grads[0], grads[3] if bias is not None else None


Attend = Callable[..., torch.Tensor]
AttendBackward = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


class _ChunkedAttention(torch.autograd.Function):
    """Attention of query groups in chunks; the backward pass recomputes chunk by chunk.

    ``attend`` gives a chunk's outputs and ``attend_backward`` its gradients, adding those of
    keys and values in place into one table for all chunks (as flash attention, nothing of
    the forward pass is kept but its inputs).
    """

    @staticmethod
    def forward(
        ctx,
        groups,
        keys,
        values,
        bias,
        blocks,
        block_valid,
        attend: Attend,
        attend_backward: AttendBackward,
        step: int,
    ):
        ctx.attend_backward, ctx.step = attend_backward, step
        ctx.save_for_backward(groups, keys, values, bias, blocks, block_valid)
        chunks = []
        for start in range(0, len(groups), step):
            part = slice(start, start + step)
            chunk_bias = None if bias is None else bias[:, part]
            chunks.append(
                attend(groups[part], blocks[:, part], chunk_bias, keys, values, block_valid)
            )
        return torch.cat(chunks)

    @staticmethod
    def backward(ctx, grad_out):
        groups, keys, values, bias, blocks, block_valid = ctx.saved_tensors
        grad_groups = torch.empty_like(groups)
        grad_keys, grad_values = torch.zeros_like(keys), torch.zeros_like(values)
        grad_bias = None if bias is None else torch.empty_like(bias)
        for start in range(0, len(groups), ctx.step):
            part = slice(start, start + ctx.step)
            grad_groups[part], chunk_grad_bias = ctx.attend_backward(
                groups[part],
                blocks[:, part],
                None if bias is None else bias[:, part],
                keys,
                values,
                block_valid,
                grad_out[part],
                grad_keys,
                grad_values,
            )
            if bias is not None:
                grad_bias[:, part] = chunk_grad_bias
        return grad_groups, grad_keys, grad_values, grad_bias, None, None, None, None, None


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
        top: Regions picked by score.
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of every query over the keys of its top-k regions.

    Args:
        q: (n, h, d) queries.
        k: (n, h, d) keys.
        v: (n, h, dv) values.
        layout: Region layout of the patches.
        scoring: Region scores from a scorer's ``prepare``.
        top_k: Regions per query; None or >= r means all regions (exact full attention).
        selection: ``"patch"`` (own selection per patch) or ``"region"`` (shared per region).
        local: Besides its top-k, every query attends to its own region and the 8 adjacent
            ones (ignored when ``top_k`` is None: all regions are attended anyway).
        chunk_size: Queries processed at once (bounds memory).
        prune: With ``selection="patch"``, find each query's top k by bounding groups of
            regions where the scorer can (``quest``; :mod:`querent.layers.pruning`): the same
            regions as scoring them all. False scores every region.

    Returns:
        (outputs (n, h, dv), selected regions (h, n, k); -1 marks no region, where a query had
        fewer than k regions to pick from).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of: {SELECTIONS}")
    n_regions, n_slots = layout.slots.shape
    heads = q.shape[1]
    top = n_regions if top_k is None else min(top_k, n_regions)
    local = local and top_k is not None
    keys = rearrange(to_regions(k, layout), "r s h d -> (r h) s d")
    values = rearrange(to_regions(v, layout), "r s h d -> (r h) s d")
    block_valid = repeat(layout.valid, "r s -> (r h) s", h=heads)
    if local:  # one empty region at index n_regions stands for "no region"
        keys = torch.cat([keys, keys.new_zeros(heads, *keys.shape[1:])])
        values = torch.cat([values, values.new_zeros(heads, *values.shape[1:])])
        block_valid = torch.cat([block_valid, block_valid.new_zeros(heads, n_slots)])
    near = layout.neighbours.masked_fill(layout.neighbours < 0, n_regions) if local else None
    if selection == "patch":
        # queries by area, so a chunk's queries are neighbours that share key blocks
        order = patches_by_area(layout)
        groups, group_queries = q.index_select(0, order), scoring.queries.index_select(0, order)
        step, attend, attend_backward = chunk_size, _attend_per_query, _attend_per_query_backward
        if local:
            near = near.index_select(0, layout.region_of_patch.index_select(0, order))
    else:
        groups = to_regions(q, layout)
        group_queries = region_mean(scoring.queries, layout)
        step = max(1, chunk_size // n_slots)
        attend, attend_backward = _attend_shared, _attend_shared_backward
    prune = prune and selection == "patch"
    selected, bias = _select(scoring, group_queries, top, step, near, n_regions, prune)
    blocks = selected * heads + torch.arange(heads, device=q.device)[:, None, None]
    out = _ChunkedAttention.apply(
        groups, keys, values, bias, blocks, block_valid, attend, attend_backward, step
    )
    selected = selected.masked_fill(selected == n_regions, -1)
    if selection == "patch":
        back = torch.empty_like(order)
        back[order] = torch.arange(len(order), device=order.device)
        return out.index_select(0, back), selected[:, back]
    return from_regions(out, layout), selected[:, layout.region_of_patch]


class MultiHeadProjections(nn.Module):
    """Query, key and value projections and the output projection of multi-head attention.

    Args:
        dim: Input and output features.
        heads: Attention heads.
        head_dim: Features per head (default ``dim // heads``).
    """

    def __init__(self, *, dim: int, heads: int, head_dim: int | None) -> None:
        super().__init__()
        head_dim = head_dim or dim // heads
        if heads < 1 or head_dim < 1:
            raise ValueError(f"dim {dim} is too small for {heads} heads; set head_dim")
        self.heads, self.head_dim = heads, head_dim
        self.to_qkv = Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = Linear(heads * head_dim, dim)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n, dim) -> queries, keys, values, each (n, h, d)."""
        return rearrange(self.to_qkv(x), "n (three h d) -> three n h d", three=3, h=self.heads)

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """(n, h, d) head outputs -> (n, dim)."""
        return self.to_out(rearrange(out, "n h d -> n (h d)"))


class DenseSelfAttention(MultiHeadProjections):
    """Full multi-head self-attention through ``scaled_dot_product_attention``.

    Same projections (and parameter names) as :class:`QueryAwareSelfAttention`, so weights
    carry over between the two.
    """

    def forward(
        self, x: torch.Tensor, layout: RegionLayout | None = None
    ) -> tuple[torch.Tensor, None]:
        """Attend over all patches; ``layout`` is ignored. Returns ((n, dim), None)."""
        q, k, v = (rearrange(t, "n h d -> 1 h n d") for t in self.split(x))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.merge(rearrange(out, "1 h n d -> n h d")), None


class QueryAwareSelfAttention(MultiHeadProjections):
    """Multi-head self-attention where each query sees only the patches of its top-k regions.

    Args:
        dim: Input and output features.
        heads: Attention heads.
        head_dim: Features per head (default ``dim // heads``).
        top_k: Regions per query; None attends to all regions (exact full attention).
        scorer: How queries rate regions: one of ``quest``, ``learned``, ``mean``, ``random``.
        selection: ``patch`` (per-patch selection, the paper's) or ``region`` (shared, faster).
        summary: Region summary the scorer reads (``minmax``, the paper's, or an ablation).
        local: Also attend to the query's own and adjacent regions, besides its top-k.
        chunk_size: Queries processed at once (bounds memory).
        prune: Exact top-k by bounding groups of regions (``patch`` selection with the
            ``quest`` scorer); False scores every region (same picks, for comparison).
    """

    def __init__(
        self,
        *,
        dim: int,
        heads: int = 4,
        head_dim: int | None = None,
        top_k: int | None = 8,
        scorer: str = "quest",
        selection: str = "patch",
        summary: str = "minmax",
        local: bool = False,
        chunk_size: int = 1024,
        prune: bool = True,
    ) -> None:
        super().__init__(dim=dim, heads=heads, head_dim=head_dim)
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None (all regions), got {top_k}")
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; choose one of: {SELECTIONS}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.top_k, self.selection, self.chunk_size = top_k, selection, chunk_size
        self.local, self.prune = local, prune
        self.scorer = make_scorer(
            scorer, dim=dim, heads=heads, head_dim=self.head_dim, summary=summary
        )

    def forward(self, x: torch.Tensor, layout: RegionLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend.

        Args:
            x: (n, dim) patch features.
            layout: Region layout of the patches.

        Returns:
            ((n, dim) context-enriched patches, (h, n, k) selected regions).
        """
        q, k, v = self.split(x)
        out, selected = query_aware_attention(
            q,
            k,
            v,
            layout,
            self.scorer.prepare(x, q, k, layout),
            top_k=self.top_k,
            selection=self.selection,
            local=self.local,
            chunk_size=self.chunk_size,
            prune=self.prune,
        )
        return self.merge(out), selected
