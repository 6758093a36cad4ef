"""TransMIL: two Nyström self-attention layers with a convolutional position encoding.

Shao et al., "TransMIL: Transformer based Correlated Multiple Instance Learning for Whole Slide
Image Classification", NeurIPS 2021.

Axes: ``n`` patches, ``t`` tokens (class token first, then the patches), ``h`` heads, ``d``
features, ``y``/``x`` rows/columns of the compacted lattice grid.

The paper folds the token sequence into a square for the position encoding (PPEG), so patches
that are neighbours on the slide are generally not neighbours in its convolutions. Here every
patch token is placed at its own lattice cell instead, with zeros at cells without a patch; the
depth-wise convolutions run on that grid and the tokens are read back at their cells, so they
mix lattice neighbours. To bound the grid's memory, rows and columns that hold no patch are
dropped first (:func:`compact_cells`): tissue pieces far apart move next to each other, while
neighbours inside a piece stay neighbours. The memory is ``d`` times the compacted bounding box,
which stays near ``n`` for compact tissue but can approach ``n²`` for long diagonal strips.

The Nyström layers see the token sequence with the patches sorted row-major by their cell
(row, then column), which makes the model invariant to the order patches arrive in; as the
sorting and compaction only depend on relative positions, it is also invariant to translating
all cells.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce
from nystrom_attention import NystromAttention
from torch import nn

from querent.layers.linear import Linear
from querent.models.base import MILModel, MILOutput, below, dropout_problems, refuse
from querent.models.registry import register_model


def lattice_order(cells: torch.Tensor) -> torch.Tensor:
    """Indices that sort patches row-major: by row (``cells[:, 1]``), then column (``cells[:, 0]``).

    Cells are assumed unique (one patch per lattice cell); ties keep their input order.
    """
    by_column = torch.sort(cells[:, 0], stable=True).indices
    return by_column[torch.sort(cells[by_column, 1], stable=True).indices]


def compact_cells(cells: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Drop the rows and columns of the lattice's bounding box that hold no patch.

    Every column is renumbered by its rank among the occupied columns, and every row likewise,
    so the order of cells along each axis is kept, neighbouring cells stay neighbours and any
    gap between occupied rows (or columns) shrinks to nothing. The result does not change when
    all cells are shifted by the same offset.

    Args:
        cells: (n, 2) integer lattice cells (column, row); any integers, negative too.

    Returns:
        ((n, 2) compacted cells (column, row), in ``[0, columns) x [0, rows)``, and the grid
        shape (rows, columns) that holds them).
    """
    columns, compact_column = torch.unique(cells[:, 0], return_inverse=True)
    rows, compact_row = torch.unique(cells[:, 1], return_inverse=True)
    return torch.stack([compact_column, compact_row], dim=1), (len(rows), len(columns))


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

    def forward(
        self, tokens: torch.Tensor, cells: torch.Tensor, shape: tuple[int, int]
    ) -> torch.Tensor:
        """Encode position into the patch tokens; the class token passes through.

        The patch tokens are placed at their cells of a zero grid, convolved there, and read
        back from their cells; what the convolutions write to empty cells is discarded.

        Args:
            tokens: (1, 1 + n, d) class token followed by the patch tokens.
            cells: (n, 2) distinct cells (column, row) of the patch tokens, inside ``shape``
                (see :func:`compact_cells`).
            shape: Rows and columns of the grid.

        Returns:
            Tokens of the same shape.
        """
        rows, columns = shape
        flat = cells[:, 1] * columns + cells[:, 0]
        patches = tokens[0, 1:]
        grid = patches.new_zeros(rows * columns, patches.shape[1]).index_copy(0, flat, patches)
        grid = rearrange(grid, "(y x) d -> 1 d y x", y=rows, x=columns)
        grid = grid + sum(conv(grid) for conv in self.convs)
        patches = rearrange(grid, "1 d y x -> (y x) d")[flat]
        return torch.cat([tokens[:, :1], rearrange(patches, "n d -> 1 n d")], dim=1)


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

    The patch tokens follow the class token in row-major lattice order; PPEG convolves them on
    the compacted lattice (see the module docstring).

    Patch attention for heatmaps is the class token's row of the last layer's Nyström attention,
    averaged over heads; the weights on the class token itself and on the zero tokens
    NystromAttention pads with are dropped. The Nyström product is an approximation whose
    entries can be slightly negative; those are clipped to 0 before normalising to sum 1.

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
        refuse(self.check_arguments(dim=dim, heads=heads, dropout=dropout))
        super().__init__(in_dim=in_dim, n_outputs=n_outputs, embed_dim=dim)
        self.embed = nn.Sequential(Linear(in_dim, dim), nn.ReLU())
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = TransLayer(dim=dim, heads=heads, dropout=dropout)
        self.ppeg = PPEG(dim=dim)
        self.layer2 = TransLayer(dim=dim, heads=heads, dropout=dropout)
        self.norm = nn.LayerNorm(dim)

    @classmethod
    def check_arguments(cls, *, dim: int, heads: int, dropout: float) -> list[str]:
        """``dim`` >= 2 and a multiple of ``heads`` >= 1, ``dropout`` in [0, 1)."""
        problems = below(1, heads=heads) + dropout_problems(dropout)
        if dim < 2 or (heads >= 1 and dim % heads):
            problems.append(f"dim: must be >= 2 and divisible by heads {heads} (got {dim})")
        return problems

    def forward_bag(self, features, cells, grid):
        """Class token after both layers, and its attention over the patches."""
        order = lattice_order(cells)
        compact, shape = compact_cells(cells[order])
        patches = rearrange(self.embed(features[order]), "n d -> 1 n d")
        tokens = torch.cat([self.class_token, patches], dim=1)
        tokens, _ = self.layer1(tokens)
        tokens, class_row = self.layer2(self.ppeg(tokens, compact, shape))
        weights = reduce(class_row[:, 1:], "h n -> n", "mean").clamp(min=0)
        attention = torch.zeros_like(weights).index_copy(0, order, weights)
        return MILOutput(embedding=self.norm(tokens[0, 0]), attention=attention / attention.sum())
