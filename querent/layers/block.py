"""Pre-norm transformer block around any patch self-attention."""

from __future__ import annotations

import torch
from torch import nn

from querent.layers.linear import Linear
from querent.layers.regions import RegionLayout


class PreNormBlock(nn.Module):
    """``x + attention(norm(x))``, then ``x + mlp(norm(x))``.

    Args:
        dim: Patch features.
        attention: Module ``(x (n, dim), layout) -> ((n, dim), selected regions or None)``.
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
        dropout: Dropout after the attention and inside the MLP.
    """

    def __init__(
        self, *, dim: int, attention: nn.Module, mlp_ratio: float = 4.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = attention
        self.dropout = nn.Dropout(dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(
        self, x: torch.Tensor, layout: RegionLayout | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns ((n, dim) patches, what the attention selected or None)."""
        attended, selected = self.attention(self.attention_norm(x), layout)
        x = x + self.dropout(attended)
        return x + self.mlp(self.mlp_norm(x)), selected
