"""Exact top-k regions under the Quest bound: branch and bound, or a lean full scoring.

Axes: ``c`` queries in a chunk, ``h`` heads, ``d`` head features, ``e = 2d`` signed features,
``r`` regions, ``R`` super-regions, ``u`` regions per super-region (``group²``), ``b`` query
blocks of a chunk, ``m`` queries per block, ``w`` candidate columns of a block.

The Quest score of a region is ``q⁺ . kmax + q⁻ . kmin`` (``q⁻ = min(q, 0)``): monotone in the
region's box ``[kmin, kmax]``. A super-region (``group x group`` adjacent regions) has the box
of its members' boxes, so its score bounds the score of every member. Per chunk of queries:

1. bound every super-region for every query (``1 / u`` of the work of scoring every region);
2. score exactly the members of each query's best few super-regions (pooled per block of ``m``
   neighbouring queries, one matmul per block); the k-th best exact score so far is a floor
   of the query's true k-th best;
3. score exactly the members of every super-region whose bound reaches some query's floor;
   any other region scores at most its super-region's bound, below the floor, so it is not
   in the query's top k and cannot tie its k-th score;
4. top k over the scored candidates.

When step 3 would still score more than :data:`MAX_FRACTION` of the regions (keys whose regions
differ little, e.g. noisy features), the chunk scores every region instead, still exactly and
at close to matmul speed: region-major blocks of scores small enough to be reused rather than
mapped afresh (:data:`SCORE_BYTES`), and ``topk`` (slow per element on CPU) only over the
maxima of groups of :data:`SPAN` regions and the members of the best groups. After two such
fallbacks in a majority of a pass's chunks, its later chunks score every region directly.

The bounds and the full scoring are float32 matmuls with a short inner dimension (``2d``);
on the CPU they run through oneDNN (:mod:`querent.layers.linear`).

What bounds can prune depends on the keys: the box of regions that differ (e.g. 2 x 2 regions
spanning two tissue patterns) bounds too loosely to prune anything, and with noisy patches the
queries of one block reach different super-regions, so their union is most of them.

Ties: candidates hold every region that can reach the k-th score, with the same score formula
as brute force, so the picked set equals ``topk`` of all scores wherever the k-th and
(k+1)-th best scores differ. Exactly equal scores (e.g. two regions with the same box) are
broken by position among the candidates rather than among all regions; in float32 two scores
within rounding (~1e-7 relative) of each other may also order differently, since a matmul over
a subset of columns need not round exactly as one over all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from einops import rearrange

from querent.layers.linear import matmul_nt

#: Regions per super-region side: 2 x 2 regions (wider groups bound too loosely to prune).
GROUP = 2
#: Neighbouring queries that share candidate columns (one matmul per block).
BLOCK = 64
#: Score every region instead when a block's candidates exceed this share of them: the
#: measured break-even against :meth:`QuestTable._top_of_all` (0.15 to 0.24 of 8k to 2k
#: regions, CPU), as candidates cost gathers and a ``topk`` over every candidate column.
MAX_FRACTION = 0.2
#: Fewest regions for which pruning is tried (below, scoring every region is cheaper).
MIN_REGIONS = 256
#: Regions per rank group when every region is scored (see :meth:`QuestTable._top_of_all`).
SPAN = 16
#: Largest block of scores made at once when every region is scored: under the 32 MB above
#: which glibc maps memory afresh (:mod:`querent.engine.allocator`), as touching fresh pages
#: costs about as much as the matmul that fills them. (Blocks of 2 MB, to stay in a core's L2
#: cache, made a 128k step 7% slower.)
SCORE_BYTES = 16 * 2**20


def signed_queries(queries: torch.Tensor) -> torch.Tensor:
    """(c, h, d) -> (h, c, 2d) ``[q⁺, q⁻]``, so the Quest score is one dot product."""
    positive = queries.clamp(min=0)
    return rearrange(torch.cat([positive, queries - positive], dim=-1), "c h e -> h c e")


def group_regions(region_cells: torch.Tensor, group: int) -> torch.Tensor:
    """Super-regions of ``group x group`` adjacent regions.

    Args:
        region_cells: (r, 2) region (column, row) on the region lattice.
        group: Regions per super-region side.

    Returns:
        (R, group²) member regions of every super-region, ``r`` where a place is empty.
    """
    n_regions = len(region_cells)
    cells = torch.div(region_cells, group, rounding_mode="floor")
    local = region_cells - cells * group
    cells = cells - cells.min(dim=0).values
    width = int(cells[:, 0].max()) + 1
    _, super_of = torch.unique(cells[:, 1] * width + cells[:, 0], return_inverse=True)
    place = local[:, 1] * group + local[:, 0]
    members = region_cells.new_full((int(super_of.max()) + 1, group * group), n_regions)
    members[super_of, place] = torch.arange(n_regions, device=region_cells.device)
    return members


@dataclass(frozen=True)
class QuestTable:
    """Region and super-region boxes of one forward pass, laid out for matmuls.

    Attributes:
        regions: (h, r + 1, 2d) ``[kmax, kmin]`` of every region; row ``r`` is padding.
        supers: (h, R, 2d) ``[kmax, kmin]`` of every super-region.
        members: (R + 1, u) member regions of every super-region (``r`` for none); row ``R``
            is padding.
        tries: Chunks pruned and chunks that fell back to scoring every region in this pass;
            after two fallbacks in a majority, the pass stops trying (the keys' regions are too
            alike for bounds to prune; each try costs about ``1 / u`` of a full scoring).
    """

    regions: torch.Tensor
    supers: torch.Tensor
    members: torch.Tensor
    tries: dict[str, int] = field(default_factory=lambda: {"pruned": 0, "full": 0})

    @classmethod
    def build(
        cls,
        kmin: torch.Tensor,
        kmax: torch.Tensor,
        region_cells: torch.Tensor | None,
        group: int = GROUP,
    ) -> QuestTable:
        """Tables of region boxes ``kmin``, ``kmax`` (r, h, d); no super-regions without cells."""
        n_regions = len(kmin)
        boxes = rearrange(torch.cat([kmax, kmin], dim=-1), "r h e -> h r e")
        regions = torch.cat([boxes, boxes.new_zeros(boxes.shape[0], 1, boxes.shape[2])], dim=1)
        if region_cells is None or n_regions == 0:
            members = kmin.new_full((1, group * group), n_regions, dtype=torch.long)
            return cls(regions, boxes.new_zeros(boxes.shape[0], 0, boxes.shape[2]), members)
        members = group_regions(region_cells, group)
        heads, dim = kmin.shape[1:]
        low = kmin.new_full((len(members), heads, dim), math.inf)
        high = kmax.new_full((len(members), heads, dim), -math.inf)
        owner = torch.zeros(n_regions + 1, dtype=torch.long, device=kmin.device)
        owner[members.flatten()] = torch.arange(len(members), device=kmin.device).repeat_interleave(
            members.shape[1]
        )
        owner = owner[:n_regions, None, None].expand(-1, heads, dim)
        # the box of the members' boxes, whichever way round a summary's pair lies
        low = low.scatter_reduce(0, owner, torch.minimum(kmin, kmax), "amin")
        high = high.scatter_reduce(0, owner, torch.maximum(kmin, kmax), "amax")
        supers = rearrange(torch.cat([high, low], dim=-1), "R h e -> h R e").contiguous()
        members = torch.cat([members, members.new_full((1, members.shape[1]), n_regions)])
        return cls(regions, supers, members)

    @property
    def n_regions(self) -> int:
        """Regions (without the padding row)."""
        return self.regions.shape[1] - 1

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """(c, h, d) -> (h, c, r) Quest score of every region (brute force)."""
        return torch.bmm(signed_queries(queries), self.regions[:, :-1].transpose(1, 2))

    def top_regions(
        self,
        queries: torch.Tensor,
        top: int,
        *,
        block: int = BLOCK,
        max_fraction: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``top`` best regions of every query, as ``scores(queries).topk(top)`` finds them.

        Args:
            queries: (c, h, d) neighbouring queries (e.g. in region order).
            top: Regions per query, at most ``r``.
            block: Queries that share candidate columns.
            max_fraction: Score every region instead when a block's candidates exceed this
                share of them (default :data:`MAX_FRACTION`).

        Returns:
            (values (h, c, top), indices (h, c, top)), best first.
        """
        if self.n_regions < MIN_REGIONS:
            return self.scores(queries).topk(top, dim=-1)
        signed = signed_queries(queries)
        full = self.tries["full"]
        if self.supers.shape[1] == 0 or (full >= 2 and full > self.tries["pruned"]):
            return self._top_of_all(signed, top)
        share = MAX_FRACTION if max_fraction is None else max_fraction
        found = self._top_pruned(signed, top, block, share)
        self.tries["full" if found is None else "pruned"] += 1
        return self._top_of_all(signed, top) if found is None else found

    def _top_pruned(
        self, signed: torch.Tensor, top: int, block: int, share: float
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Steps 1 to 4 of the module docstring; None where the candidates exceed ``share``."""
        heads, chunk, _ = signed.shape
        n_supers = self.supers.shape[1]
        padded = signed.new_zeros(heads, -(-chunk // block) * block, signed.shape[2])
        padded[:, :chunk] = signed
        rows = padded.shape[1]
        bounds = torch.stack([matmul_nt(padded[h], self.supers[h]) for h in range(heads)])
        per = self.members.shape[1]
        seeds = bounds.topk(min(n_supers, -(-top // per) + 1), dim=-1).indices
        first = torch.zeros_like(bounds, dtype=torch.bool).scatter_(-1, seeds, True)
        first = first.view(heads, -1, block, n_supers).any(dim=2)  # (h, b, R)
        ids, scores = self._score_candidates(padded, first, block)
        floor = _kth_best(scores, top).view(heads, rows)  # (h, b * m)
        floor[:, chunk:] = math.inf  # padding queries need nothing
        floor = floor.view(heads, -1, block)
        reach = bounds.view(heads, -1, block, n_supers) >= floor[..., None]
        more = reach.any(dim=2) & ~first
        if int((first | more).sum(dim=-1).max()) * per > share * self.n_regions:
            return None
        if more.any():
            more_ids, more_scores = self._score_candidates(padded, more, block)
            ids, scores = torch.cat([ids, more_ids], -1), torch.cat([scores, more_scores], -1)
        best = scores.topk(top, dim=-1)
        picked = ids[:, :, None].expand(-1, -1, block, -1).gather(-1, best.indices)
        shape = (heads, rows, top)
        return best.values.view(shape)[:, :chunk], picked.view(shape)[:, :chunk]

    def _top_of_all(self, signed: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``top`` of all regions' scores, by blocks of queries of at most SCORE_BYTES.

        Args:
            signed: (h, c, 2d) signed queries.
            top: Regions per query, at most ``r``.

        Returns:
            (values (h, c, top), indices (h, c, top)), best first.
        """
        heads, chunk, _ = signed.shape
        signed = signed.contiguous()
        blocks = max(1, -(-chunk * signed.element_size() * self.n_regions // SCORE_BYTES))
        step = -(-chunk // blocks)  # blocks of equal size, none tiny
        values = signed.new_empty(heads, chunk, top)
        picked = torch.empty(heads, chunk, top, dtype=torch.long, device=signed.device)
        for head in range(heads):
            for start in range(0, chunk, step):
                part = slice(start, start + step)
                scores = matmul_nt(self.regions[head, :-1], signed[head, part])
                values[head, part], picked[head, part] = _top_by_groups(scores, top)
        return values, picked

    def _score_candidates(
        self, signed: torch.Tensor, wanted: torch.Tensor, block: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact scores of the members of each block's wanted super-regions.

        Args:
            signed: (h, b * m, 2d) signed queries.
            wanted: (h, b, R) super-regions to score for each block's queries.
            block: Queries per block (``m``).

        Returns:
            (region ids (h, b, w), scores (h, b, m, w)); ``-inf`` on padding columns.
        """
        heads, n_blocks, n_supers = wanted.shape
        count = wanted.sum(dim=-1)
        width = max(int(count.max()), 1)
        order = torch.argsort(wanted.to(torch.int8), dim=-1, descending=True, stable=True)
        chosen = order[..., :width].masked_fill(
            torch.arange(width, device=wanted.device) >= count[..., None], n_supers
        )
        ids = self.members[chosen].flatten(2)  # (h, b, w)
        rows = self.regions.shape[1]
        head = torch.arange(heads, device=ids.device)[:, None, None] * rows
        boxes = self.regions.flatten(0, 1).index_select(0, (ids + head).flatten())
        boxes = boxes.view(heads * n_blocks, -1, self.regions.shape[2])
        queries = signed.reshape(heads * n_blocks, block, -1)
        scores = torch.bmm(queries, boxes.transpose(1, 2)).view(heads, n_blocks, block, -1)
        return ids, scores.masked_fill_((ids == self.n_regions)[:, :, None], -math.inf)


def _top_by_groups(scores: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``top`` of (r, c) region-major scores for each query: (values, indices), each (c, top).

    A full ``topk`` runs only over the maxima of groups of :data:`SPAN` regions and over the
    members of the ``top`` best groups: a region that beats the ``top``-th best group maximum
    lies in a group whose maximum beats it too.
    """
    n_regions, chunk = scores.shape
    whole = n_regions - n_regions % SPAN
    maxima = scores[:whole].view(-1, SPAN, chunk).amax(dim=1)
    if whole < n_regions:
        maxima = torch.cat([maxima, scores[whole:].amax(dim=0, keepdim=True)])
    groups = maxima.topk(min(top, len(maxima)), dim=0).indices.T  # (c, g)
    span = torch.arange(SPAN, device=scores.device)
    ids = (groups[..., None] * SPAN + span).flatten(1)  # (c, g * SPAN)
    members = scores.T.gather(1, ids.clamp(max=n_regions - 1))
    best = members.masked_fill_(ids >= n_regions, -math.inf).topk(top, dim=-1)
    return best.values, ids.gather(1, best.indices)


def _kth_best(scores: torch.Tensor, top: int) -> torch.Tensor:
    """k-th largest along the last axis, ``-inf`` where fewer than ``top`` columns exist."""
    if scores.shape[-1] < top:
        return scores.new_full(scores.shape[:-1], -math.inf)
    return scores.topk(top, dim=-1).values[..., -1]
