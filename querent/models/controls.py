"""Controls that separate query-aware selection from plain locality.

A context-aware model earns its cost only where it beats these: they see exactly a patch's
lattice neighbourhood, with no scoring and no choice of where to look.

Axes: ``n`` patches, ``d`` features.
"""

from __future__ import annotations

from typing import Any

import torch

from querent.models.abmil import ABMIL
from querent.models.base import MILOutput
from querent.models.registry import register_model
from querent.models.transformer import Querent

#: Querent's selection arguments that make it a fixed window (:class:`LocalWindow`).
WINDOW = {
    "top_k": 0,
    "scorer": "quest",  # never asked: it has no parameters to leave unused
    "summary": "minmax",
    "selection": "region",
    "local": True,
    "distance_bias": False,
}
#: The 8 lattice neighbours of a cell, as (column, row) offsets.
NEIGHBOURS = tuple((dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx, dy) != (0, 0))


def neighbour_mean(features: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """(n, d) mean features of each patch's present 8 lattice neighbours (zeros: none).

    Args:
        features: (n, d) patch features.
        cells: (n, 2) distinct integer lattice cells (column, row).
    """
    n = len(cells)
    shifted = cells - cells.min(0).values + 1  # every neighbour's column and row >= 0
    width = int(shifted[:, 0].max()) + 2
    keys = shifted[:, 1] * width + shifted[:, 0]
    order = torch.argsort(keys)
    ordered = keys[order]
    total, count = torch.zeros_like(features), features.new_zeros(n)
    for dx, dy in NEIGHBOURS:
        wanted = keys + dy * width + dx
        at = torch.searchsorted(ordered, wanted).clamp(max=n - 1)
        found = ordered[at] == wanted
        total += torch.where(found[:, None], features[order[at]], 0.0)
        count += found
    return total / count.clamp(min=1)[:, None]


@register_model("neighbour_abmil")
class NeighbourABMIL(ABMIL):
    """ABMIL on [patch, mean of its 8 lattice neighbours]: locality without any selection.

    Arguments as :class:`~querent.models.abmil.ABMIL`'s; ``in_dim`` is the patch feature size
    (the embedding reads twice as many).
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
        super().__init__(
            in_dim=2 * in_dim,
            n_outputs=n_outputs,
            dim=dim,
            attention_dim=attention_dim,
            dropout=dropout,
        )
        self.in_dim = in_dim

    def forward_bag(self, features, cells, grid) -> MILOutput:
        """ABMIL on each patch's features next to its neighbourhood's mean."""
        context = torch.cat([features, neighbour_mean(features, cells)], dim=1)
        return super().forward_bag(context, cells, grid)


@register_model("local_window")
class LocalWindow(Querent):
    """Querent's block with a fixed window, nothing scored or picked.

    Each region's patches attend to the patches of that region and its 8 adjacent ones.
    Arguments as :class:`~querent.models.transformer.Querent`'s, less the selection ones.
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
        mlp_ratio: float = 2.0,
        positional: str = "none",
        dropout: float = 0.0,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__(
            in_dim=in_dim,
            n_outputs=n_outputs,
            dim=dim,
            heads=heads,
            depth=depth,
            region_size=region_size,
            mlp_ratio=mlp_ratio,
            positional=positional,
            dropout=dropout,
            chunk_size=chunk_size,
            **WINDOW,
        )

    @classmethod
    def check_arguments(cls, **arguments: Any) -> list[str]:
        """Querent's checks, with the window's selection arguments."""
        return super().check_arguments(**{**arguments, **WINDOW})
