"""TransMIL: two Nyström self-attention layers with a convolutional position encoding.

Shao et al., "TransMIL: Transformer based Correlated Multiple Instance Learning for Whole Slide
Image Classification", NeurIPS 2021.

Axes: ``n`` patches, ``t`` tokens (class token first, then the patch grid), ``h`` heads,
``d`` features, ``y``/``x`` rows/columns of the square token grid.

TransMIL folds its token sequence into a square grid for the position encoding (PPEG), so the
result depends on the order of the patches. Here the patches are first sorted row-major by their
lattice cell (row, then column), which makes the model invariant to the order patches arrive in
and puts patches of one tissue row next to each other. The grid is still the sorted sequence cut
into rows of ``ceil(sqrt(n))`` tokens, not the slide's own layout, as in the paper.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, reduce
from nystrom_attention import NystromAttention
from torch import nn

from querent.models.base import MILModel, MILOutput
from querent.models.registry import register_model


def lattice_order(cells: torch.Tensor) -> torch.Tensor:
    """Indices that sort patches row-major: by row (``cells[:, 1]``), then column (``cells[:, 0]``).

    Cells are assumed unique (one patch per lattice cell); ties keep their input order.
    """
    by_column = torch.sort(cells[:, 0], stable=True).indices
    return by_column[torch.sort(cells[by_column, 1], stable=True).indices]


class PPEG(nn.Module):
    """Pyramid position encoding generator: the grid plus depth-wise 7x7, 5x5 and 3x3 convolutions.

    Args:
        dim: Token features.
    """

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, size, padding=size // 2, groups=dim) for size in (7, 5, 3)
        )

    def forward(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        """Encode position into the patch tokens; the class token passes through.

        Args:
            tokens: (1, 1 + side², d) class token followed by the grid in row-major order.
            side: Rows (and columns) of the grid.

        Returns:
            Tokens of the same shape.
        """
        grid = rearrange(tokens[:, 1:], "b (y x) d -> b d y x", y=side, x=side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([tokens[:, :1], rearrange(grid, "b d y x -> b (y x) d")], dim=1)


class TransLayer(nn.Module):
    """Pre-norm Nyström self-attention with a residual connection.

    Args:
        dim: Token features.
        heads: Attention heads; each has ``dim // heads`` features.
        dropout: Dropout on the attention output.
    """

    def __init__(self, *, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = NystromAttention(
            dim=dim,
            dim_head=dim // heads,
            heads=heads,
            num_landmarks=dim // 2,
            pinv_iterations=6,
            residual=True,
            dropout=dropout,
        )

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend.

        Args:
            tokens: (1, t, d) with the class token first.

        Returns:
            ((1, t, d) updated tokens, (h, t) the class token's attention over all tokens, as
            the Nyström approximation ``A1[cls] @ pinv(A2) @ A3``).
        """
        update, (to_landmarks, landmarks_pinv, from_landmarks) = self.attention(
            self.norm(tokens), return_attn_matrices=True
        )
        # NystromAttention pads the sequence at the front, so the class token is t-th from the end.
        n_tokens = tokens.shape[1]
        class_row = torch.einsum(
            "hm,hml,hlt->ht", to_landmarks[0, :, -n_tokens], landmarks_pinv[0], from_landmarks[0]
        )
        return tokens + update, class_row[:, -n_tokens:]


@register_model("transmil")
class TransMIL(MILModel):
    """Embedding, class token, TransLayer, PPEG, TransLayer, LayerNorm; the class token is read out.

    Patch attention for heatmaps is the class token's row of the last layer's Nyström attention,
    averaged over heads, with the weights of grid tokens that repeat a patch (the padding that
    squares the grid) added back to that patch; the weights on the class token itself and on
    the zero tokens NystromAttention pads with are dropped. The Nyström product is an
    approximation whose entries can be slightly negative; those are clipped to 0 before
    normalising to sum 1.

    Args:
        in_dim: Patch feature size.
        n_outputs: Head outputs.
        dim: Token features, also the slide embedding size; Nyström landmarks are ``dim // 2``.
        heads: Attention heads; must divide ``dim``.
        dropout: Dropout on each attention output.
    """

    def __init__(
        self, *, in_dim: int, n_outputs: int, dim: int = 512, heads: int = 8, dropout: float = 0.0
    ) -> None:
        if dim < 2 or heads < 1 or dim % heads:
            raise ValueError(f"dim must be >= 2 and divisible by heads, got {dim} and {heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        super().__init__(in_dim=in_dim, n_outputs=n_outputs, embed_dim=dim)
        self.embed = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = TransLayer(dim=dim, heads=heads, dropout=dropout)
        self.ppeg = PPEG(dim=dim)
        self.layer2 = TransLayer(dim=dim, heads=heads, dropout=dropout)
        self.norm = nn.LayerNorm(dim)

    def forward_bag(self, features, cells, grid):
        """Class token after both layers, and its attention over the patches."""
        order = lattice_order(cells)
        side = math.isqrt(len(order) - 1) + 1  # ceil(sqrt(n))
        # patch behind every grid token; the grid is squared by repeating the first patches
        source = order[torch.arange(side * side, device=order.device) % len(order)]
        patches = rearrange(self.embed(features)[source], "t d -> 1 t d")
        tokens = torch.cat([self.class_token, patches], dim=1)
        tokens, _ = self.layer1(tokens)
        tokens, class_row = self.layer2(self.ppeg(tokens, side))
        weights = reduce(class_row[:, 1:], "h t -> t", "mean").clamp(min=0)
        attention = features.new_zeros(len(features)).index_add(0, source, weights)
        return MILOutput(embedding=self.norm(tokens[0, 0]), attention=attention / attention.sum())
