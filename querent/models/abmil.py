"""ABMIL: gated attention pooling over embedded patches (Ilse et al., 2018).

Axes: ``n`` patches, ``d`` features.
"""

from __future__ import annotations

from torch import nn

from querent.layers.linear import Linear
from querent.layers.pooling import GatedAttentionPool
from querent.models.base import MILModel, MILOutput, below, dropout_problems, refuse
from querent.models.registry import register_model


@register_model("abmil")
class ABMIL(MILModel):
    """Patch embedding (linear, ReLU, dropout), gated attention pooling, linear head.

    Patches are pooled as a set, so ``cells`` is ignored.

    Args:
        in_dim: Patch feature size.
        n_outputs: Head outputs.
        dim: Patch embedding size, also the slide embedding size.
        attention_dim: Hidden size of the gated attention network.
        dropout: Dropout after the patch embedding and inside the attention network.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        n_outputs: int,
        dim: int = 256,
        attention_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        refuse(self.check_arguments(dim=dim, attention_dim=attention_dim, dropout=dropout))
        super().__init__(in_dim=in_dim, n_outputs=n_outputs, embed_dim=dim)
        self.embed = nn.Sequential(Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention_pool = GatedAttentionPool(dim=dim, hidden=attention_dim, dropout=dropout)

    @classmethod
    def check_arguments(cls, *, dim: int, attention_dim: int, dropout: float) -> list[str]:
        """``dim`` and ``attention_dim`` >= 1, ``dropout`` in [0, 1)."""
        return below(1, dim=dim, attention_dim=attention_dim) + dropout_problems(dropout)

    def forward_bag(self, features, cells, grid):
        """Attention-weighted mean of the embedded patches; ``cells`` and ``grid`` are unused."""
        embedding, attention = self.attention_pool(self.embed(features))
        return MILOutput(embedding=embedding, attention=attention)
