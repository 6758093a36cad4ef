"""Query-aware attention as block-sparse FlexAttention (the GPU kernel).

Axes: ``n`` patches, ``r`` regions, ``s`` slots per region (region_size²), ``h`` heads, ``d``
head features, ``k`` picked regions per query, ``L`` sequence positions.

The patches are laid out as one sequence, region after region (regions in Z-order of their
cells, each region ``s`` slots, empty slots included), so a region's keys are one contiguous
run and neighbouring regions share blocks of the sequence. The picks of a block of queries
then name the key blocks they read: the block mask holds, for each head and query block, the
key blocks of the regions its queries picked, and the mask inside a block keeps a key when its
region is among the query's picks and its slot holds a patch. Per-patch selection (the
paper's) is that per-query mask; region-shared selection is the same with the picks of the
query's region. A bias per pick (the scorer's straight-through gradient, the distance bias)
is added to the logits of that region's keys.

The result equals exact softmax attention restricted to the picked regions, which is what
:mod:`querent.layers.tiled` computes with gathers on the CPU; this path leaves the tiling,
the online softmax and the recomputing backward pass to PyTorch's FlexAttention.
"""

from __future__ import annotations

import functools
import math

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from querent.layers.regions import RegionLayout, regions_by_area

#: Query and key positions per block of the mask. Key blocks of one region (16 slots at the
#: default region_size 4) cost a picked region only its own keys: at 32k patches (random
#: picks, Querent's default layer) blocks of 128 x 128 compute a quarter of full attention's
#: scores, blocks of 64 x 16 a fortieth (``benchmarks/bench_flex_blocks.py`` counts them,
#: ``bench_gpu_attention.py --blocks`` times them).
BLOCK_SIZE = (64, 16)


@functools.cache
def _compiled_flex(dynamic: bool):
    """``flex_attention`` compiled once (a fused kernel; unfused it materialises all scores).

    Dynamic shapes on CUDA, so bags of every size share one kernel; Inductor's CPU template
    builds only with static shapes (it then compiles again for every new sequence length).
    """
    return torch.compile(flex_attention, dynamic=dynamic)


class RegionSequence:
    """Where every region and slot sits in the sequence, and the block mask of the picks.

    Args:
        layout: Region layout of the patches.
        picks: (h, g, k) picked regions of each query group (patches in patch order, or
            regions), ``n_regions`` marking none.
        per_patch: Groups are patches (per-patch selection) rather than regions.
        block_size: (query, key) positions per mask block.
    """

    def __init__(
        self,
        layout: RegionLayout,
        picks: torch.Tensor,
        *,
        per_patch: bool,
        block_size: tuple[int, int] = BLOCK_SIZE,
    ) -> None:
        n_regions, slots = layout.slots.shape
        self.block_size = block_size
        order = regions_by_area(layout)
        step = math.lcm(*block_size)
        self.length = -(-n_regions * slots // step) * step
        padding = self.length - n_regions * slots
        # patch at each position (-1: none), region at each position (n_regions: padding)
        self.patch_at = torch.cat(
            [layout.slots[order].flatten(), layout.slots.new_full((padding,), -1)]
        )
        self.region_at = torch.cat(
            [order.repeat_interleave(slots), order.new_full((padding,), n_regions)]
        )
        self.key_valid = self.patch_at >= 0
        # picks of each query position: by patch, or by the region of the position
        none = picks.new_full((picks.shape[0], 1, picks.shape[2]), n_regions)
        if per_patch:
            rows = torch.where(self.key_valid, self.patch_at, picks.shape[1])
        else:
            rows = self.region_at
        self.query_row = rows
        self.picks = torch.cat([picks, none], dim=1).to(torch.int32)
        self.n_regions = n_regions

    def _blocks_of_regions(self, kv_block: int) -> torch.Tensor:
        """(r + 1, most) the key blocks holding a patch of each region; ``n_kv`` pads rows."""
        n_kv = self.length // kv_block
        position = self.key_valid.nonzero().squeeze(-1)
        pairs = torch.unique(self.region_at[position] * n_kv + position // kv_block)
        region, block = pairs // n_kv, pairs % n_kv
        counts = torch.bincount(region, minlength=self.n_regions + 1)
        rank = torch.arange(len(pairs), device=pairs.device) - (counts.cumsum(0) - counts)[region]
        table = pairs.new_full((self.n_regions + 1, max(int(counts.max()), 1)), n_kv)
        table[region, rank] = block
        return table

    def block_pairs(self) -> torch.Tensor:
        """(p,) the (head, query block, key block) triples to compute, as sorted flat indices.

        A query block lists a key block when one of its queries picked a region with a patch
        in that block: no block it needs is missing, and none is read for nothing.
        """
        q_block, kv_block = self.block_size
        heads, n_rows, _ = self.picks.shape
        n_q, n_kv = self.length // q_block, self.length // kv_block
        device = self.picks.device
        # the (query block, picks row) pairs: one per region and block under region selection
        groups = torch.unique(
            torch.arange(self.length, device=device) // q_block * n_rows + self.query_row
        )
        q_of_group, row = groups // n_rows, groups % n_rows
        blocks = self._blocks_of_regions(kv_block)[self.picks[:, row].long()]  # (h, g, k, span)
        head = torch.arange(heads, device=device).view(-1, 1, 1, 1)
        keys = (head * n_q + q_of_group.view(1, -1, 1, 1)) * n_kv + blocks
        return torch.unique(keys[blocks < n_kv])

    def block_lists(self, full_width: bool = False) -> tuple[torch.Tensor, ...]:
        """The block mask's lists, both ways, from :meth:`block_pairs`.

        Args:
            full_width: Index tables as wide as the other side's blocks (Inductor's CPU
                kernel asks for it); else as wide as the longest list: on a slide of 100k
                patches a few MB where full width (PyTorch's own masks) takes hundreds.

        Returns:
            (kv_num_blocks (1, h, qb), kv_indices (1, h, qb, w), q_num_blocks (1, h, kvb),
            q_indices (1, h, kvb, w')): per query block the key blocks it reads, and per key
            block the query blocks that read it (the backward pass's), each sorted.
        """
        q_block, kv_block = self.block_size
        heads = self.picks.shape[0]
        n_q, n_kv = self.length // q_block, self.length // kv_block
        pairs = self.block_pairs()
        head, rest = pairs // (n_q * n_kv), pairs % (n_q * n_kv)
        q_of, kv_of = rest // n_kv, rest % n_kv
        by_kv = torch.sort((head * n_kv + kv_of) * n_q + q_of).values
        return (
            *_ordered(pairs // n_kv, pairs % n_kv, heads, n_q, n_kv if full_width else None),
            *_ordered(by_kv // n_q, by_kv % n_q, heads, n_kv, n_q if full_width else None),
        )

    def mask_mod(self, b, h, q, kv):
        """Whether query position ``q`` of head ``h`` reads key position ``kv``."""
        region, row = self.region_at[kv], self.query_row[q]
        hit = self.picks[h, row, 0] == region
        for j in range(1, self.picks.shape[2]):
            hit = hit | (self.picks[h, row, j] == region)
        return hit & self.key_valid[kv]

    def block_mask(self) -> BlockMask:
        """The FlexAttention block mask of the picks (full-width tables off CUDA)."""
        kv_counts, kv_indices, q_counts, q_indices = self.block_lists(
            full_width=not self.picks.is_cuda
        )
        return BlockMask(
            seq_lengths=(self.length, self.length),
            kv_num_blocks=kv_counts,
            kv_indices=kv_indices,
            full_kv_num_blocks=None,
            full_kv_indices=None,
            q_num_blocks=q_counts,
            q_indices=q_indices,
            full_q_num_blocks=None,
            full_q_indices=None,
            BLOCK_SIZE=self.block_size,
            mask_mod=self.mask_mod,
        )

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(n, h, d) per patch -> (1, h, L, d) per position (empty positions hold patch 0)."""
        return x.index_select(0, self.patch_at.clamp(min=0)).permute(1, 0, 2).unsqueeze(0)

    def from_sequence(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """(1, h, L, d) per position -> (n, h, d) per patch."""
        position = torch.empty(n, dtype=torch.long, device=x.device)
        valid = self.key_valid.nonzero().squeeze(-1)
        position[self.patch_at[valid]] = valid
        return x[0].index_select(1, position).permute(1, 0, 2)


def _ordered(
    group: torch.Tensor, member: torch.Tensor, heads: int, rows: int, width: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts (1, h, rows), indices (1, h, rows, width)) of sorted (group, member) pairs.

    ``group`` is ``head * rows + row``; ``width`` None: the longest row's count.
    """
    counts = torch.bincount(group, minlength=heads * rows)
    rank = torch.arange(len(group), device=group.device) - (counts.cumsum(0) - counts)[group]
    width = width or max(int(counts.max()), 1)
    indices = torch.zeros(heads * rows, width, dtype=torch.int32, device=group.device)
    indices[group, rank] = member.to(torch.int32)
    return counts.view(1, heads, rows).to(torch.int32), indices.view(1, heads, rows, width)


def tile_sizes(block_size: tuple[int, int]) -> dict[str, int]:
    """Triton tiles that divide the mask's blocks, forward and backward (at most 64 a side)."""
    q_block, kv_block = (min(64, size) for size in block_size)
    tile = min(q_block, kv_block)
    # the backward kernels need BLOCK_N1 % BLOCK_M1 == 0 and BLOCK_M2 % BLOCK_N2 == 0
    return {
        "BLOCK_M": q_block,
        "BLOCK_N": kv_block,
        "BLOCK_M1": tile,
        "BLOCK_N1": kv_block,
        "BLOCK_M2": q_block,
        "BLOCK_N2": tile,
    }


def flex_query_aware(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: RegionLayout,
    picks: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    per_patch: bool,
    block_size: tuple[int, int] | None = None,
    compiled: bool = True,
) -> torch.Tensor:
    """Softmax attention of every query over the keys of its picked regions, with FlexAttention.

    Args:
        q: (n, h, d) queries.
        k: (n, h, d) keys.
        v: (n, h, dv) values.
        layout: Region layout of the patches.
        picks: (h, g, k) picked regions per group (patches, or regions), ``n_regions``: none.
        bias: (h, g, k) added to the logits of each pick's keys, or None.
        per_patch: Groups are patches (per-patch selection) rather than regions.
        block_size: (query, key) positions per mask block; None: :data:`BLOCK_SIZE` (read at
            each call, so a benchmark can set it).
        compiled: Run the fused kernel (``torch.compile``); False runs FlexAttention's
            reference path, which holds all (L, L) scores (small inputs and tests only).

    Returns:
        (n, h, dv) outputs.
    """
    if not q.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError(
            "kernel 'flex': PyTorch's FlexAttention has no backward pass on the CPU; train on "
            "the CPU with kernel: tiled (or auto: flex on CUDA, tiled elsewhere)"
        )
    block_size = block_size or BLOCK_SIZE
    sequence = RegionSequence(layout, picks, per_patch=per_patch, block_size=block_size)
    score_mod = None
    if bias is not None:
        none = bias.new_zeros(bias.shape[0], 1, bias.shape[2])
        table = torch.cat([bias, none], dim=1)

        def score_mod(score, b, h, q_pos, kv_pos):
            region, row = sequence.region_at[kv_pos], sequence.query_row[q_pos]
            for j in range(table.shape[2]):
                hit = sequence.picks[h, row, j] == region
                score = score + torch.where(hit, table[h, row, j], 0.0)
            return score

    attend = _compiled_flex(q.is_cuda) if compiled else flex_attention
    out = attend(
        sequence.to_sequence(q),
        sequence.to_sequence(k),
        sequence.to_sequence(v),
        score_mod=score_mod,
        block_mask=sequence.block_mask(),
        kernel_options=tile_sizes(block_size) if q.is_cuda else None,
    )
    return sequence.from_sequence(out, q.shape[0])
