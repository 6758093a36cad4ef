"""Query-aware sparse attention (Querent): each query attends only to its top-k regions.

Axes: ``n`` patches (queries and keys), ``r`` regions, ``s`` slots per region (region_size²),
``h`` heads, ``d`` head features, ``k`` selected regions per query, ``c`` queries in a chunk.

Regions are summarised by the element-wise min and max of their keys (per head); a query scores
a region by the Quest upper bound ``sum_d max(q_d * kmin_d, q_d * kmax_d)`` (Tang et al., 2024),
which is ``>= q . key`` for every key of the region. Per channel the max picks ``kmax`` where
``q_d >= 0`` and ``kmin`` where ``q_d < 0``, so the bound is two matmuls:
``relu(q) @ kmax.T + (q - relu(q)) @ kmin.T``. Exact softmax attention is then computed over the
keys of the selected regions only. Queries are processed in chunks, so memory is bounded by
``c * h * k * s * d`` whatever ``n``.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange


def region_min_max(keys: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise min and max of each region's keys.

    Args:
        keys: (n, h, d).
        slots: (r, s) patch index per slot, -1 for empty slots (every region has one patch).

    Returns:
        (kmin, kmax), each (r, h, d).
    """
    mask = (slots >= 0)[..., None, None]
    gathered = keys[slots.clamp(min=0)]  # (r, s, h, d)
    kmin = gathered.masked_fill(~mask, math.inf).amin(dim=1)
    kmax = gathered.masked_fill(~mask, -math.inf).amax(dim=1)
    return kmin, kmax


def quest_scores(queries: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """Quest upper bound of ``q . key`` over each region's keys.

    Args:
        queries: (c, h, d).
        kmin: (r, h, d) region minima of keys.
        kmax: (r, h, d) region maxima of keys.

    Returns:
        (h, c, r) scores; ``scores[h, i, j] >= q_i . key`` for every key of region ``j``.
    """
    positive = queries.clamp(min=0)
    negative = queries - positive
    return torch.einsum("chd,rhd->hcr", positive, kmax) + torch.einsum(
        "chd,rhd->hcr", negative, kmin
    )


def query_aware_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    slots: torch.Tensor,
    scores_fn,
    *,
    top_k: int | None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of every query over the keys of its top-k regions.

    Args:
        queries: (n, h, d).
        keys: (n, h, d).
        values: (n, h, d).
        slots: (r, s) patch index per region slot, -1 where empty.
        scores_fn: ``(chunk of queries (c, h, d), query indices (c,)) -> (h, c, r)`` region
            scores; the top-k regions per query and head are attended.
        top_k: Regions per query; None or >= r means all regions (exact full attention).
        chunk_size: Queries processed at once (bounds memory).

    Returns:
        (outputs (n, h, d), selected regions (h, n, k) as region indices).
    """
    n, heads, dim = queries.shape
    n_regions, n_slots = slots.shape
    k = n_regions if top_k is None else min(top_k, n_regions)
    scale = dim**-0.5
    slot_mask = slots >= 0
    safe_slots = slots.clamp(min=0)
    outputs, selections = [], []
    for start in range(0, n, chunk_size):
        index = torch.arange(start, min(start + chunk_size, n), device=queries.device)
        q = queries[index]  # (c, h, d)
        scores = scores_fn(q, index)  # (h, c, r)
        selected = scores.topk(k, dim=-1).indices  # (h, c, k)
        patch = safe_slots[selected]  # (h, c, k, s)
        valid = slot_mask[selected]
        head = torch.arange(heads, device=queries.device)[:, None, None, None]
        key = keys[patch, head]  # (h, c, k, s, d)
        value = values[patch, head]
        logits = torch.einsum("hcd,hcksd->hcks", rearrange(q, "c h d -> h c d"), key) * scale
        logits = logits.masked_fill(~valid, -math.inf)
        weights = rearrange(logits, "h c k s -> h c (k s)").softmax(dim=-1)
        out = torch.einsum("hcm,hcmd->hcd", weights, rearrange(value, "h c k s d -> h c (k s) d"))
        outputs.append(rearrange(out, "h c d -> c h d"))
        selections.append(selected)
    return torch.cat(outputs), torch.cat(selections, dim=1)


class QueryAwareSelfAttention(torch.nn.Module):
    """Multi-head self-attention over patches where each query sees only its top-k regions.

    Args:
        dim: Input and output features.
        heads: Attention heads.
        head_dim: Features per head (default ``dim // heads``).
        top_k: Regions per query; None attends to all regions (exact full attention).
        chunk_size: Queries processed at once (bounds memory).
    """

    def __init__(
        self,
        *,
        dim: int,
        heads: int = 4,
        head_dim: int | None = None,
        top_k: int | None = 8,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        head_dim = head_dim or dim // heads
        if head_dim < 1:
            raise ValueError(f"dim {dim} is too small for {heads} heads; set head_dim")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None (all regions), got {top_k}")
        self.heads, self.top_k, self.chunk_size = heads, top_k, chunk_size
        self.to_qkv = torch.nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = torch.nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend.

        Args:
            x: (n, dim) patch features.
            slots: (r, s) region slots of the slide's grid (-1 where empty).

        Returns:
            ((n, dim) context-enriched patches, (h, n, k) selected regions).
        """
        q, k, v = rearrange(self.to_qkv(x), "n (three h d) -> three n h d", three=3, h=self.heads)
        kmin, kmax = region_min_max(k, slots)
        out, selected = query_aware_attention(
            q,
            k,
            v,
            slots,
            lambda chunk, _: quest_scores(chunk, kmin, kmax),
            top_k=self.top_k,
            chunk_size=self.chunk_size,
        )
        return self.to_out(rearrange(out, "n h d -> n (h d)")), selected
