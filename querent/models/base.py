"""The surface every MIL model shares: one bag of patch features in, slide logits out.

Axes: ``n`` patches, ``d`` features, ``h`` heads, ``k`` selected regions per patch.

A bag is one slide: ``features`` (n, in_dim), ``cells`` (n, 2) integer lattice cells (column,
row) of the patches (level-0 coordinates divided by the lattice step), and optionally ``mask``
(n,) with False on padded rows. Padded rows are removed before any computation, so padding can
never change a result; per-patch outputs are scattered back to all n rows.

A model may read clinical covariates besides the bag (:meth:`MILModel.add_covariates`): the
head then reads the slide embedding and the slide's (c,) encoded covariates side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from querent.data.grid import RegionGrid
from querent.layers.linear import Linear


def refuse(problems: list[str]) -> None:
    """Raise ValueError listing ``problems`` (what a ``check_arguments`` found), if any."""
    if problems:
        raise ValueError("; ".join(problems))


def below(minimum: int, **values: int) -> list[str]:
    """``name: must be >= minimum (got value)`` for each of ``values`` below ``minimum``."""
    return [f"{name}: must be >= {minimum} (got {v})" for name, v in values.items() if v < minimum]


def dropout_problems(dropout: float) -> list[str]:
    """``dropout`` outside [0, 1), as one line."""
    return [] if 0.0 <= dropout < 1.0 else [f"dropout: must be in [0, 1) (got {dropout})"]


@dataclass(frozen=True)
class MILOutput:
    """What a model returns for one bag.

    Attributes:
        embedding: (d,) slide embedding fed to the head.
        attention: (n,) pooling weight of every patch (0 on padded rows), for heatmaps.
        logits: (n_outputs,) head output; None from ``forward_features``.
        selected: (h, n, k) regions each patch attended to in the last query-aware layer (-1 on
            padded rows), or None for models without region selection.
        region_of_patch: (n,) region index of every patch (-1 on padded rows), the key to
            ``selected``; None for models without regions.
    """

    embedding: torch.Tensor
    attention: torch.Tensor
    logits: torch.Tensor | None = None
    selected: torch.Tensor | None = None
    region_of_patch: torch.Tensor | None = None


class MILModel(nn.Module):
    """Base class: subclasses implement :meth:`forward_bag` on a bag without padding.

    Args:
        in_dim: Patch feature size.
        n_outputs: Head outputs (classes, survival time bins, or 1 for a Cox risk).
        embed_dim: Size of the slide embedding the head reads.

    Attributes:
        region_size: Lattice cells per region side for models that group patches into regions
            (their data loader builds each bag's grid with it), None for the others.
        covariate_dim: Width of the encoded covariates the head reads besides the embedding
            (0: none; :meth:`add_covariates`).
    """

    region_size: int | None = None
    covariate_dim: int = 0

    def __init__(self, *, in_dim: int, n_outputs: int, embed_dim: int) -> None:
        super().__init__()
        if in_dim < 1 or n_outputs < 1:
            raise ValueError(f"in_dim and n_outputs must be >= 1, got {in_dim} and {n_outputs}")
        self.in_dim, self.n_outputs, self.embed_dim = in_dim, n_outputs, embed_dim
        self.head = Linear(embed_dim, n_outputs)

    def add_covariates(self, dim: int) -> None:
        """Give the head ``dim`` more inputs, the encoded covariates (a new, untrained head)."""
        if dim < 1:
            raise ValueError(f"covariate_dim must be >= 1, got {dim}")
        self.covariate_dim = dim
        self.head = Linear(self.embed_dim + dim, self.n_outputs).to(self.head.weight.device)

    @classmethod
    def check_arguments(cls, **arguments: Any) -> list[str]:
        """What the constructor refuses in ``arguments``, one line each (``name: problem``).

        Args:
            arguments: Every constructor argument but ``in_dim`` and ``n_outputs`` (defaults
                filled in). Nothing is built, so planning runs it on the config's model runs.
        """
        return []

    def forward_bag(
        self, features: torch.Tensor, cells: torch.Tensor, grid: RegionGrid | None
    ) -> MILOutput:
        """The whole forward pass of a bag without padding, up to the slide embedding.

        Args:
            features: (n, in_dim) patch features.
            cells: (n, 2) integer lattice cells.
            grid: The bag's region grid (models with a ``region_size``); None: built here.
        """
        raise NotImplementedError

    def forward_features(
        self,
        features: torch.Tensor,
        cells: torch.Tensor,
        mask: torch.Tensor | None = None,
        grid: RegionGrid | None = None,
    ) -> MILOutput:
        """Embed one bag; ``logits`` is left None.

        Args:
            features: (n, in_dim) patch features.
            cells: (n, 2) integer lattice cells (any integers: centred or shifted cells too).
            mask: (n,) False on padded rows.
            grid: Region grid of the unpadded rows, built by the data loader with
                ``build_grid(cells, 1, model.region_size)`` so that ``forward`` needs no host
                round trip; None: the model builds it.
        """
        self._check_bag(features, cells, mask, grid)
        if mask is None:
            return self.forward_bag(features, cells, grid)
        out = self.forward_bag(features[mask], cells[mask], grid)
        attention = features.new_zeros(len(features))
        attention[mask] = out.attention
        selected = region_of_patch = None
        if out.selected is not None:
            heads, _, k = out.selected.shape
            selected = out.selected.new_full((heads, len(mask), k), -1)
            selected[:, mask] = out.selected
        if out.region_of_patch is not None:
            region_of_patch = out.region_of_patch.new_full((len(mask),), -1)
            region_of_patch[mask] = out.region_of_patch
        return replace(out, attention=attention, selected=selected, region_of_patch=region_of_patch)

    def forward_head(
        self, embedding: torch.Tensor, covariates: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(n_outputs,) logits of a slide embedding and its (covariate_dim,) covariates."""
        if (covariates is None) != (self.covariate_dim == 0):
            raise ValueError(
                f"this model's head reads {self.covariate_dim} covariate values, got "
                f"{'none' if covariates is None else tuple(covariates.shape)}"
            )
        if covariates is None:
            return self.head(embedding)
        if covariates.shape != (self.covariate_dim,):
            raise ValueError(
                f"covariates must be ({self.covariate_dim},), got {tuple(covariates.shape)}"
            )
        return self.head(torch.cat([embedding, covariates.to(embedding.dtype)]))

    def forward(
        self,
        features: torch.Tensor,
        cells: torch.Tensor,
        mask: torch.Tensor | None = None,
        grid: RegionGrid | None = None,
        covariates: torch.Tensor | None = None,
    ) -> MILOutput:
        """Embed one bag and apply the head (arguments as in :meth:`forward_features`).

        ``covariates`` are the slide's (covariate_dim,) encoded covariates, for a model with
        covariates only.
        """
        out = self.forward_features(features, cells, mask, grid)
        return replace(out, logits=self.forward_head(out.embedding, covariates))

    def _check_bag(
        self,
        features: torch.Tensor,
        cells: torch.Tensor,
        mask: torch.Tensor | None,
        grid: RegionGrid | None,
    ) -> None:
        if features.ndim != 2 or features.shape[1] != self.in_dim:
            raise ValueError(
                f"features must be (n, {self.in_dim}) for this model, got {tuple(features.shape)}"
            )
        if cells.shape != (len(features), 2):
            raise ValueError(
                f"cells must be (n, 2) lattice cells matching {len(features)} patches, "
                f"got {tuple(cells.shape)}"
            )
        if cells.dtype == torch.bool or cells.is_floating_point() or cells.is_complex():
            raise TypeError(f"cells must be integer lattice cells, got dtype {cells.dtype}")
        if mask is not None and (mask.shape != (len(features),) or mask.dtype != torch.bool):
            raise ValueError(f"mask must be a bool tensor of shape ({len(features)},)")
        n_valid = len(features) if mask is None else int(mask.sum())
        if n_valid == 0:
            raise ValueError("the bag has no patches; slides without tissue cannot be classified")
        if grid is not None and (
            grid.region_size != self.region_size or len(grid.region_of_patch) != n_valid
        ):
            raise ValueError(
                f"grid must be of the {n_valid} unpadded patches with region_size "
                f"{self.region_size}, got {len(grid.region_of_patch)} patches and region_size "
                f"{grid.region_size}"
            )
