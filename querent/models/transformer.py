"""Transformer MIL models: ``querent`` (query-aware sparse attention) and ``full_attention``.

Both are: linear projection of the patch features, optional 2D positional encoding of the
lattice cells (:mod:`querent.layers.positional`), ``depth`` pre-norm transformer blocks,
LayerNorm, gated attention pooling and a linear head. They differ only in the attention of the
blocks, so ``full_attention`` is the exact upper reference of ``querent``.
"""

from __future__ import annotations

import torch
from torch import nn

from querent.data.grid import RegionGrid, build_grid
from querent.layers.attention import (
    DenseSelfAttention,
    QueryAwareSelfAttention,
    projection_problems,
    query_aware_problems,
)
from querent.layers.block import PreNormBlock
from querent.layers.linear import Linear
from querent.layers.pooling import GatedAttentionPool
from querent.layers.positional import POSITIONALS, SlidePositions, sincos_2d
from querent.layers.regions import RegionLayout
from querent.models.base import MILModel, MILOutput, below, dropout_problems, refuse
from querent.models.registry import register_model


class TransformerMIL(MILModel):
    """Shared body of the transformer models; subclasses pass the attention of each block."""

    def __init__(
        self,
        *,
        in_dim: int,
        n_outputs: int,
        dim: int,
        depth: int,
        attention: list[nn.Module],
        mlp_ratio: float,
        positional: str,
        dropout: float,
    ) -> None:
        super().__init__(in_dim=in_dim, n_outputs=n_outputs, embed_dim=dim)
        self.positional = positional
        self.positions = SlidePositions(dim=dim) if positional == "relative" else None
        self.embed = nn.Sequential(Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.blocks = nn.ModuleList(
            PreNormBlock(dim=dim, attention=layer, mlp_ratio=mlp_ratio, dropout=dropout)
            for layer in attention
        )
        self.norm = nn.LayerNorm(dim)
        self.pool_patches = GatedAttentionPool(dim=dim, dropout=dropout)

    @staticmethod
    def body_problems(
        *, dim: int, heads: int, depth: int, mlp_ratio: float, positional: str, dropout: float
    ) -> list[str]:
        """What the shared body refuses (the subclasses' ``check_arguments`` start with it)."""
        problems = below(1, depth=depth) + projection_problems(dim=dim, heads=heads)
        if mlp_ratio <= 0:
            problems.append(f"mlp_ratio: must be > 0 (got {mlp_ratio})")
        if positional not in POSITIONALS:
            problems.append(
                f"positional: unknown {positional!r}; choose one of: {', '.join(POSITIONALS)}"
            )
        elif positional != "none" and dim % 4:
            problems.append(f"dim: positional encoding needs dim divisible by 4 (got {dim})")
        return problems + dropout_problems(dropout)

    def layout(self, cells: torch.Tensor, grid: RegionGrid | None) -> RegionLayout | None:
        """Region layout the blocks need (None for dense attention)."""
        return None

    def forward_bag(self, features, cells, grid):  # noqa: D102
        layout = self.layout(cells, grid)
        x = self.embed(features)
        if self.positional == "absolute":
            x = x + sincos_2d(cells, x.shape[-1]).to(x.dtype)
        elif self.positions is not None:
            x = x + self.positions(cells).to(x.dtype)
        selected = None
        for block in self.blocks:
            x, selected = block(x, layout)
        embedding, attention = self.pool_patches(self.norm(x))
        region_of_patch = None if layout is None else layout.region_of_patch
        return MILOutput(embedding, attention, selected=selected, region_of_patch=region_of_patch)


@register_model("querent")
class Querent(TransformerMIL):
    """Querent (Guo et al., ICML 2025): query-aware sparse attention over spatial regions.

    Args:
        in_dim: Patch feature size.
        n_outputs: Head outputs.
        dim: Model features.
        heads: Attention heads.
        depth: Transformer blocks.
        region_size: Lattice cells per region side (regions hold up to region_size² patches).
        top_k: Regions each patch attends to; None = all (exact full attention).
        scorer: ``learned`` (the paper's), ``learned_distance`` (minus a learned multiple of
            the distance to the query's region), ``quest`` (bound on keys), ``mean`` or
            ``random``.
        selection: ``region`` (the patches of a region share the pick of their mean query;
            the default: as accurate here and several times faster, docs/context-study.md)
            or ``patch`` (each patch picks its own regions, the paper's).
        summary: Region summary the scorer reads: ``minmax`` (the paper's), or the ablations
            ``min``, ``max``, ``mean``, ``meanstd``.
        local: Also attend to the query's own and 8 adjacent regions besides its top-k (local
            plus query-aware global context; not in the paper).
        distance_bias: Each head's logits fall linearly with the distance (in regions) from the
            query's region, slopes learned (ALiBi per region; not in the paper).
        mlp_ratio: Hidden width of the blocks' MLP relative to ``dim``.
        positional: ``none``, ``absolute`` (2D sine-cosine of the cells) or ``relative`` (of
            the cells relative to the slide's centre, scaled by a learned gain).
        dropout: Dropout in the blocks and the pooling.
        chunk_size: Queries attended at once (bounds memory).
        kernel: ``tiled`` (gathers in query chunks), ``flex`` (block-sparse FlexAttention,
            compiled; the GPU kernel) or ``auto`` (``flex`` on CUDA, else ``tiled``): the same
            attention, a runtime choice.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        n_outputs: int,
        dim: int = 256,
        heads: int = 4,
        depth: int = 1,
        region_size: int = 4,
        top_k: int | None = 8,
        scorer: str = "learned",
        selection: str = "region",
        summary: str = "minmax",
        local: bool = True,
        distance_bias: bool = True,
        mlp_ratio: float = 2.0,
        positional: str = "none",
        dropout: float = 0.0,
        chunk_size: int = 1024,
        kernel: str = "tiled",
    ) -> None:
        refuse(
            self.check_arguments(
                dim=dim, heads=heads, depth=depth, region_size=region_size, top_k=top_k,
                scorer=scorer, selection=selection, summary=summary, local=local,
                distance_bias=distance_bias, mlp_ratio=mlp_ratio, positional=positional,
                dropout=dropout, chunk_size=chunk_size, kernel=kernel,
            )
        )  # fmt: skip
        attention = [
            QueryAwareSelfAttention(
                dim=dim,
                heads=heads,
                top_k=top_k,
                scorer=scorer,
                selection=selection,
                summary=summary,
                local=local,
                distance_bias=distance_bias,
                chunk_size=chunk_size,
                kernel=kernel,
            )
            for _ in range(depth)
        ]
        super().__init__(
            in_dim=in_dim,
            n_outputs=n_outputs,
            dim=dim,
            depth=depth,
            attention=attention,
            mlp_ratio=mlp_ratio,
            positional=positional,
            dropout=dropout,
        )
        self.region_size = region_size  # the data loader builds grids with it

    @classmethod
    def check_arguments(
        cls,
        *,
        dim: int,
        heads: int,
        depth: int,
        region_size: int,
        top_k: int | None,
        scorer: str,
        selection: str,
        summary: str,
        local: bool,
        distance_bias: bool,
        mlp_ratio: float,
        positional: str,
        dropout: float,
        chunk_size: int,
        kernel: str = "tiled",
    ) -> list[str]:
        """The body's checks, ``region_size`` >= 1 and the query-aware attention's."""
        body = cls.body_problems(
            dim=dim, heads=heads, depth=depth, mlp_ratio=mlp_ratio, positional=positional,
            dropout=dropout,
        )  # fmt: skip
        return (
            body
            + below(1, region_size=region_size)
            + query_aware_problems(
                top_k=top_k,
                local=local,
                selection=selection,
                chunk_size=chunk_size,
                scorer=scorer,
                summary=summary,
                kernel=kernel,
            )
        )

    def layout(self, cells: torch.Tensor, grid: RegionGrid | None) -> RegionLayout:
        """The bag's regions of ``region_size`` cells a side, from its grid or built here."""
        if grid is None:
            grid = build_grid(cells.cpu().numpy(), 1, self.region_size)
        return RegionLayout.from_grid(grid, cells.device)


@register_model("full_attention")
class FullAttention(TransformerMIL):
    """The same transformer with dense softmax attention over all patches (the upper reference).

    Args:
        in_dim: Patch feature size.
        n_outputs: Head outputs.
        dim: Model features.
        heads: Attention heads.
        depth: Transformer blocks.
        mlp_ratio: Hidden width of the blocks' MLP relative to ``dim``.
        positional: ``none``, ``absolute`` or ``relative`` (as for ``querent``).
        dropout: Dropout in the blocks and the pooling.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        n_outputs: int,
        dim: int = 256,
        heads: int = 4,
        depth: int = 1,
        mlp_ratio: float = 2.0,
        positional: str = "none",
        dropout: float = 0.0,
    ) -> None:
        refuse(
            self.check_arguments(
                dim=dim, heads=heads, depth=depth, mlp_ratio=mlp_ratio, positional=positional,
                dropout=dropout,
            )
        )  # fmt: skip
        super().__init__(
            in_dim=in_dim,
            n_outputs=n_outputs,
            dim=dim,
            depth=depth,
            attention=[
                DenseSelfAttention(dim=dim, heads=heads, head_dim=None) for _ in range(depth)
            ],
            mlp_ratio=mlp_ratio,
            positional=positional,
            dropout=dropout,
        )

    @classmethod
    def check_arguments(
        cls,
        *,
        dim: int,
        heads: int,
        depth: int,
        mlp_ratio: float,
        positional: str,
        dropout: float,
    ) -> list[str]:
        """The body's checks."""
        return cls.body_problems(
            dim=dim, heads=heads, depth=depth, mlp_ratio=mlp_ratio, positional=positional,
            dropout=dropout,
        )  # fmt: skip
