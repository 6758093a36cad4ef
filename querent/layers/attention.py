"""Multi-head self-attention modules: dense, and query-aware over the top-k regions.

Axes: ``n`` patches, ``h`` heads, ``d`` head features, ``k`` selected regions.

Both share :class:`MultiHeadProjections` (same parameter names), so weights carry over between
a dense and a query-aware model; the query-aware one runs
:func:`querent.layers.query_aware.query_aware_attention`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from querent.layers.linear import Linear
from querent.layers.query_aware import KERNELS, SELECTIONS, query_aware_attention
from querent.layers.regions import RegionLayout
from querent.layers.scorers import make_scorer, scorer_problems


def projection_problems(*, dim: int, heads: int, head_dim: int | None = None) -> list[str]:
    """What :class:`MultiHeadProjections` refuses, one line per argument."""
    if heads < 1:
        return [f"heads: must be >= 1 (got {heads})"]
    if (head_dim or dim // heads) < 1:
        return [
            f"heads: dim {dim} is too small for {heads} heads (head_dim {dim // heads}); use "
            "fewer heads or a larger dim"
        ]
    return []


def query_aware_problems(
    *,
    top_k: int | None,
    local: bool,
    selection: str,
    chunk_size: int,
    scorer: str,
    summary: str,
    kernel: str = "tiled",
) -> list[str]:
    """What :class:`QueryAwareSelfAttention` refuses besides its projections, one line each."""
    problems = []
    if top_k is not None and top_k < (0 if local else 1):
        problems.append(
            f"top_k: must be >= 1, null (all regions) or 0 with local (the local regions only) "
            f"(got {top_k}{'' if local else ' without local'})"
        )
    if selection not in SELECTIONS:
        problems.append(f"selection: unknown {selection!r}; choose one of: {', '.join(SELECTIONS)}")
    if chunk_size < 1:
        problems.append(f"chunk_size: must be >= 1 (got {chunk_size})")
    if kernel not in (*KERNELS, "auto"):
        problems.append(f"kernel: unknown {kernel!r}; choose one of: auto, {', '.join(KERNELS)}")
    return problems + scorer_problems(scorer, summary)


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


class MultiHeadProjections(nn.Module):
    """Query, key and value projections and the output projection of multi-head attention.

    Args:
        dim: Input and output features.
        heads: Attention heads.
        head_dim: Features per head (default ``dim // heads``).
    """

    def __init__(self, *, dim: int, heads: int, head_dim: int | None) -> None:
        super().__init__()
        _refuse(projection_problems(dim=dim, heads=heads, head_dim=head_dim))
        head_dim = head_dim or dim // heads
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
        top_k: Regions per query; None attends to all regions (exact full attention); 0 with
            ``local`` scores none (a fixed window: own and adjacent regions).
        scorer: How queries rate regions: a key of :data:`~querent.layers.scorers.SCORERS`.
        selection: ``patch`` (per-patch selection, the paper's) or ``region`` (shared, faster).
        summary: Region summary the scorer reads (``minmax``, the paper's, or an ablation).
        local: Also attend to the query's own and adjacent regions, besides its top-k.
        chunk_size: Queries processed at once (bounds memory).
        prune: Exact top-k by bounding groups of regions (``patch`` selection with the
            ``quest`` scorer); False scores every region (same picks, for comparison).
        distance_bias: Add ``-slope * distance`` (in regions, from the query's region) to each
            head's logits, slopes learned from ``1, 1/2, 1/4, ...`` (not in the paper; see
            :mod:`querent.layers.query_aware`).
        kernel: How the attention over the picks runs: ``tiled`` (gathers in query chunks),
            ``flex`` (block-sparse FlexAttention, compiled) or ``auto`` (``flex`` on CUDA,
            ``tiled`` elsewhere). The same picks and attention either way.
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
        distance_bias: bool = False,
        kernel: str = "tiled",
    ) -> None:
        super().__init__(dim=dim, heads=heads, head_dim=head_dim)
        _refuse(
            query_aware_problems(
                top_k=top_k,
                local=local,
                selection=selection,
                chunk_size=chunk_size,
                scorer=scorer,
                summary=summary,
                kernel=kernel,
            )
        )
        self.top_k, self.selection, self.chunk_size = top_k, selection, chunk_size
        self.kernel = kernel
        self.local, self.prune = local, prune
        self.scorer = make_scorer(
            scorer, dim=dim, heads=heads, head_dim=self.head_dim, summary=summary
        )
        # softplus(raw) = 2**-head at the start: from near (e^-1 per region) to the whole slide
        start = 2.0 ** -torch.arange(heads, dtype=torch.float32)
        self.distance_slope = nn.Parameter(start.expm1().log()) if distance_bias else None

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
            distance_slopes=(
                None
                if self.distance_slope is None
                else nn.functional.softplus(self.distance_slope).to(q.dtype)
            ),
            kernel=("flex" if x.is_cuda else "tiled") if self.kernel == "auto" else self.kernel,
        )
        return self.merge(out), selected
