"""Context-aware MIL models of torchmil, on the surface every model of ours shares.

torchmil (PyPI ``torchmil``, Apache-2.0) is where a user would get PatchGCN, SmABMIL and CAMIL
today; these adapters let them run through our trainer, evaluation, heatmaps and report, so
Querent is compared with them on equal terms. Each adapter builds the torchmil model with its
own defaults (an argument left ``None`` keeps torchmil's default), swaps the model's one-logit
classifier for an identity so that its bag representation becomes our slide embedding, and
puts our head on it.

The graph models read the patch lattice as torchmil's own datasets build it:
``torchmil.utils.build_adj`` on the lattice cells with ``dist_thr=1.5`` (the 8-neighbourhood:
diagonal neighbours are 1.41 cells away), binary edges, symmetrically normalised by
``torchmil.utils.normalize_adj``, as a sparse (1, n, n) matrix.

Patches enter in lattice order (row by row), whatever the order of the bag's rows, so the
models that read a sequence (TransMIL folds it into a square) are permutation invariant too.

Axes: ``n`` patches, ``d`` features.
"""

from __future__ import annotations

from inspect import signature
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from querent.models.base import MILModel, MILOutput
from querent.models.registry import register_model

#: Lattice distance within which two patches are neighbours (torchmil's dataset default).
NEIGHBOUR_DISTANCE = 1.5


def lattice_adjacency(cells: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(1, n, n) sparse normalised adjacency of the 8-neighbourhood of ``cells`` (n, 2)."""
    from torchmil.utils import add_self_loops, build_adj, normalize_adj

    n = len(cells)
    index, weight = build_adj(cells.cpu().numpy(), None, dist_thr=NEIGHBOUR_DISTANCE)
    weight = normalize_adj(index, weight, n_nodes=n)
    if n == 1:  # as torchmil's datasets do: a lone patch is its own neighbour
        index, weight = add_self_loops(index, weight, n)
    index = torch.from_numpy(np.vstack([np.zeros(index.shape[1], np.int64), index]))
    values = torch.as_tensor(weight, dtype=dtype)
    shape = (1, n, n)
    return torch.sparse_coo_tensor(
        index, values, shape, device=cells.device, check_invariants=True
    ).coalesce()


def _in_features(layer: nn.Module) -> int:
    """Input size of a torchmil linear layer (``nn.Linear`` or torchmil's ``LazyLinear``)."""
    return layer.in_features if isinstance(layer, nn.Linear) else layer.module.in_features


class TorchmilModel(MILModel):
    """A torchmil model with our head; subclasses name the model and its parts.

    Args:
        in_dim: Patch feature size.
        n_outputs: Head outputs.
        options: Keyword arguments of the torchmil model; ``None`` values keep its defaults.
    """

    #: Class name in ``torchmil.models``.
    torchmil_class: ClassVar[str]
    #: Attribute of the model's final linear layer (its one-logit classifier).
    classifier: ClassVar[str] = "classifier"
    #: The model's forward takes the adjacency matrix.
    uses_graph: ClassVar[bool] = True
    #: Its attention values are scores before the softmax (else already weights).
    attention_scores: ClassVar[bool] = True

    def __init__(self, *, in_dim: int, n_outputs: int, **options: object) -> None:
        import torchmil.models

        cls = getattr(torchmil.models, self.torchmil_class)
        given = {name: value for name, value in options.items() if value is not None}
        network = cls(in_shape=(in_dim,), **given)
        embed_dim = _in_features(getattr(network, self.classifier))
        if embed_dim < 2:
            raise ValueError(f"{self.torchmil_class}'s bag representation must have >= 2 features")
        super().__init__(in_dim=in_dim, n_outputs=n_outputs, embed_dim=embed_dim)
        setattr(network, self.classifier, nn.Identity())
        self.network = network

    def forward_bag(self, features, cells, grid):
        """The torchmil model on the patches in lattice order; ``grid`` is unused."""
        shifted = cells - cells.min(0).values
        key = shifted[:, 1] * (shifted[:, 0].max() + 1) + shifted[:, 0]
        order = torch.argsort(key, stable=True)
        inputs = [features[order][None]]
        if self.uses_graph:
            inputs.append(lattice_adjacency(cells[order], features.dtype))
        embedding, attention = self.network(*inputs, return_att=True)
        weights = attention[0].softmax(0) if self.attention_scores else attention[0]
        weights = weights / weights.sum()
        unordered = torch.empty_like(weights)
        unordered[order] = weights
        return MILOutput(embedding=embedding[0], attention=unordered)


@register_model("patchgcn")
class PatchGCN(TorchmilModel):
    """PatchGCN (Chen et al., 2021): residual GCN layers on the patch lattice, attention pooling.

    Arguments are torchmil's ``PatchGCN``'s; ``None`` keeps its default.
    """

    torchmil_class = "PatchGCN"

    def __init__(
        self,
        *,
        in_dim: int,
        n_outputs: int,
        n_gcn_layers: int | None = None,
        mlp_depth: int | None = None,
        hidden_dim: int | None = None,
        att_dim: int | None = None,
        dropout: float | None = None,
    ) -> None:
        super().__init__(
            in_dim=in_dim, n_outputs=n_outputs, n_gcn_layers=n_gcn_layers, mlp_depth=mlp_depth,
            hidden_dim=hidden_dim, att_dim=att_dim, dropout=dropout,
        )  # fmt: skip


@register_model("smabmil")
class SmABMIL(TorchmilModel):
    """SmABMIL (Castro-Macías et al., 2024): ABMIL whose attention is smoothed over the lattice.

    Arguments are torchmil's ``SmABMIL``'s; ``None`` keeps its default.
    """

    torchmil_class = "SmABMIL"
    classifier = "last_layer"

    def __init__(
        self,
        *,
        in_dim: int,
        n_outputs: int,
        att_dim: int | None = None,
        att_act: str | None = None,
        sm_mode: str | None = None,
        sm_alpha: float | str | None = None,
        sm_steps: int | None = None,
        sm_where: str | None = None,
    ) -> None:
        super().__init__(
            in_dim=in_dim, n_outputs=n_outputs, att_dim=att_dim, att_act=att_act,
            sm_mode=sm_mode, sm_alpha=sm_alpha, sm_steps=sm_steps, sm_where=sm_where,
        )  # fmt: skip


@register_model("camil")
class CAMIL(TorchmilModel):
    """CAMIL (Fourkioti et al., 2024): Nyström self-attention plus attention to lattice neighbours.

    Arguments are torchmil's ``CAMIL``'s; ``None`` keeps its default, except ``n_landmarks``:
    half of ``nystrom_att_dim``, as torchmil's TransMIL. Its neighbour attention makes the
    adjacency dense: memory grows as n².
    """

    torchmil_class = "CAMIL"

    def __init__(
        self,
        *,
        in_dim: int,
        n_outputs: int,
        nystrom_att_dim: int | None = None,
        pool_att_dim: int | None = None,
        gated_pool: bool | None = None,
        n_heads: int | None = None,
        n_landmarks: int | None = None,
        dropout: float | None = None,
    ) -> None:
        if n_landmarks is None:
            # torchmil 1.0.2's CAMIL passes its default (None) on to a Nyström attention that
            # cannot take it; its TransMIL uses half the width then, and so do we
            from torchmil.models import CAMIL as Network

            width = nystrom_att_dim or signature(Network).parameters["nystrom_att_dim"].default
            n_landmarks = width // 2
        super().__init__(
            in_dim=in_dim, n_outputs=n_outputs, nystrom_att_dim=nystrom_att_dim,
            pool_att_dim=pool_att_dim, gated_pool=gated_pool, n_heads=n_heads,
            n_landmarks=n_landmarks, dropout=dropout,
        )  # fmt: skip


@register_model("torchmil_transmil")
class TorchmilTransMIL(TorchmilModel):
    """torchmil's TransMIL (Shao et al., 2021), a cross-check of ours (``transmil``).

    It folds the patches, in lattice order, into a square as the paper does; ours runs its
    position encoding on the slide's own lattice. Arguments are torchmil's ``TransMIL``'s;
    ``None`` keeps its default. Attention: the class token's, averaged over heads.
    """

    torchmil_class = "TransMIL"
    uses_graph = False
    attention_scores = False

    def __init__(
        self,
        *,
        in_dim: int,
        n_outputs: int,
        att_dim: int | None = None,
        n_layers: int | None = None,
        n_heads: int | None = None,
        n_landmarks: int | None = None,
        dropout: float | None = None,
    ) -> None:
        super().__init__(
            in_dim=in_dim, n_outputs=n_outputs, att_dim=att_dim, n_layers=n_layers,
            n_heads=n_heads, n_landmarks=n_landmarks, dropout=dropout,
        )  # fmt: skip
