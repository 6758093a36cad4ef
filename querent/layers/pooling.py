"""Attention pooling: a slide embedding as a learned weighted mean of its patches.

Axes: ``n`` patches, ``d`` features.
"""

from __future__ import annotations

import torch
from torch import nn

from querent.layers.linear import Linear


class GatedAttentionPool(nn.Module):
    """Gated attention pooling (Ilse et al., 2018).

    ``a_n ∝ exp(w . (tanh(V x_n) * sigmoid(U x_n)))``; the embedding is ``sum_n a_n x_n``.

    Args:
        dim: Patch features.
        hidden: Features of the attention network.
        dropout: Dropout on the attention network's hidden layer.
    """

    def __init__(self, *, dim: int, hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.value = nn.Sequential(Linear(dim, hidden), nn.Tanh())
        self.gate = nn.Sequential(Linear(dim, hidden), nn.Sigmoid())
        self.dropout = nn.Dropout(dropout)
        self.score = Linear(hidden, 1, bias=False)  # softmax ignores a shared shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool.

        Args:
            x: (n, dim) patch features.

        Returns:
            ((dim,) slide embedding, (n,) attention weights summing to 1).
        """
        hidden = self.dropout(self.value(x) * self.gate(x))
        weights = self.score(hidden).squeeze(-1).softmax(dim=0)
        return weights @ x, weights
