"""Pooling baselines without learned pooling weights: embed every patch, then mean or max.

Axes: ``n`` patches, ``d`` features.
"""

from __future__ import annotations

from einops import reduce
from torch import nn

from querent.layers.linear import Linear
from querent.models.base import MILModel, MILOutput, below, dropout_problems, refuse
from querent.models.registry import register_model


class _EmbedAndReduce(MILModel):
    """Patch embedding (linear, ReLU, dropout) followed by a fixed reduction over patches.

    Patches are pooled as a set, so ``cells`` is ignored.

    Args:
        in_dim: Patch feature size.
        n_outputs: Head outputs.
        dim: Patch embedding size, also the slide embedding size.
        dropout: Dropout after the patch embedding.
    """

    def __init__(
        self, *, in_dim: int, n_outputs: int, dim: int = 256, dropout: float = 0.0
    ) -> None:
        refuse(self.check_arguments(dim=dim, dropout=dropout))
        super().__init__(in_dim=in_dim, n_outputs=n_outputs, embed_dim=dim)
        self.embed = nn.Sequential(Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))

    @classmethod
    def check_arguments(cls, *, dim: int, dropout: float) -> list[str]:
        """``dim`` >= 1, ``dropout`` in [0, 1)."""
        return below(1, dim=dim) + dropout_problems(dropout)


@register_model("mean_pool")
class MeanPool(_EmbedAndReduce):
    """Mean of the embedded patches; every patch gets attention ``1 / n``."""

    def forward_bag(self, features, cells, grid):
        """Mean over patches; ``cells`` and ``grid`` are unused."""
        embedding = reduce(self.embed(features), "n d -> d", "mean")
        attention = features.new_full((len(features),), 1.0 / len(features))
        return MILOutput(embedding=embedding, attention=attention)


@register_model("max_pool")
class MaxPool(_EmbedAndReduce):
    """Channel-wise max of the embedded patches.

    A patch's attention is the fraction of channels whose max it supplies; a channel where
    several patches tie for the max is shared equally among them, so the attention sums to 1
    and does not depend on patch order.
    """

    def forward_bag(self, features, cells, grid):
        """Max over patches; ``cells`` and ``grid`` are unused."""
        x = self.embed(features)
        embedding = reduce(x, "n d -> d", "max")
        is_max = (x == embedding).to(x.dtype)
        share = is_max / reduce(is_max, "n d -> d", "sum")
        attention = reduce(share, "n d -> n", "mean")
        return MILOutput(embedding=embedding, attention=attention)
