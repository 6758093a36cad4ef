"""Attention of query chunks over key blocks, with hand-written backward passes.

Axes: ``s`` slots per region (region_size²), ``h`` heads, ``d`` head features, ``k`` selected
regions, ``b`` key blocks (one per region and head), ``c`` queries in a chunk, ``g`` query
groups in a chunk, ``m`` queries per group, ``t`` tiles, ``u`` pairs per tile
(:data:`BLOCK_PAIRS_PER_TILE`), ``p`` (query, key block) pairs.

Two kernels, each a forward and its backward:

- per query (:func:`attend_per_query`): every query has its own key blocks. The (query, block)
  pairs are packed into tiles of :data:`BLOCK_PAIRS_PER_TILE` pairs sharing one block, one
  small matmul per tile.
- shared (:func:`attend_shared`): the queries of a group share their key blocks, one dense
  matmul per group.

:class:`ChunkedAttention` runs either over all queries chunk by chunk. Memory stays bounded:
the backward pass recomputes each chunk (as flash attention does) and adds its key and value
gradients in place. No (n, n) or (n, k * s, d) tensor ever exists; the largest is one chunk's
gathered keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from einops import rearrange, repeat

#: (Query, key block) pairs per tile in per-patch attention (one small matmul per tile); a
#: tile here is a unit of work, not an image tile. A block is picked by about 5 to 7 queries of
#: a chunk (noisy features, 32k to 128k patches): tiles of 16 were then 31% to 45% full, and
#: 128k steps 4% slower than with 8 (bench_attention).
BLOCK_PAIRS_PER_TILE = 8


class _Tiles(NamedTuple):
    """A chunk's (query, key block) pairs packed into tiles of ``u`` pairs sharing a block.

    Pairs are (head, query, pick) in ``blocks.flatten()`` order; padding slots point one past
    the last pair and one past the last query row (a zero row is appended before gathering).
    """

    block: torch.Tensor  # (t,) key block of each tile
    pos: torch.Tensor  # (p,) flat tile slot of each pair
    pair: torch.Tensor  # (t * u,) pair in each slot
    row: torch.Tensor  # (t * u,) query row, in (head, query) order, in each slot

    @classmethod
    def pack(cls, blocks: torch.Tensor) -> _Tiles:
        """Pack the pairs of ``blocks`` (h, c, k), sorted by key block."""
        heads, c, k = blocks.shape
        flat = blocks.flatten()
        n_pairs = flat.numel()
        order = torch.argsort(flat, stable=True)
        unique, counts = torch.unique_consecutive(flat[order], return_counts=True)
        per_tile = BLOCK_PAIRS_PER_TILE
        tiles = (counts + per_tile - 1) // per_tile
        run = torch.repeat_interleave(torch.arange(len(unique), device=flat.device), counts)
        rank = torch.arange(n_pairs, device=flat.device) - (torch.cumsum(counts, 0) - counts)[run]
        first_tile = torch.cumsum(tiles, 0) - tiles
        pos = torch.empty_like(flat)
        pos[order] = (first_tile[run] + rank // per_tile) * per_tile + rank % per_tile
        pair = flat.new_full((int(tiles.sum()) * per_tile,), n_pairs)
        pair[pos] = torch.arange(n_pairs, device=flat.device)
        row_of_pair = torch.arange(heads * c, device=flat.device).repeat_interleave(k)
        row = torch.cat([row_of_pair, row_of_pair.new_full((1,), heads * c)])[pair]
        return cls(torch.repeat_interleave(unique, tiles), pos, pair, row)

    def gather(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(t, u, f) tiles of ``rows`` (m, f) at ``index`` (``m`` gives zeros)."""
        padded = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
        return padded.index_select(0, index).view(-1, BLOCK_PAIRS_PER_TILE, rows.shape[1])

    def untile(self, tiles: torch.Tensor) -> torch.Tensor:
        """(t, u, f) -> (p, f) in pair order."""
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

    Returns (weights (h, c, k * s), query tiles (t, u, d), key tiles (t, s, d)).
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


def attend_per_query(
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


def attend_per_query_backward(
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
    """Gradients of :func:`attend_per_query`, written out on the same tiles.

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


def attend_shared(
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


def attend_shared_backward(
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
    """Gradients of :func:`attend_shared`, by recomputing it under autograd.

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
        out = attend_shared(
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


class ChunkedAttention(torch.autograd.Function):
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
        """Outputs of every group, ``step`` groups at a time; keeps only the inputs."""
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
        """Gradients of groups, keys, values and bias, recomputing ``step`` groups at a time."""
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
