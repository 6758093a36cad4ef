"""2D sine-cosine positional encodings of lattice cells.

Axes: ``n`` patches, ``q`` frequencies per axis and function (``dim // 4``).

``absolute`` (:func:`sincos_2d`) encodes the raw cells, as in ViTs: most of its energy is the
same for every patch of a slide (cells far from 0 at long wavelengths), a fingerprint of where
the slide sits that makes memorising slides easy. ``relative`` (:class:`SlidePositions`)
encodes cells relative to the slide's centre at wavelengths from a few cells to a large slide,
scaled by a learned gain that starts small, so content dominates the token at first.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Positional encodings of the transformer models, by name.
POSITIONALS = ("none", "absolute", "relative")


def sincos_2d(
    cells: torch.Tensor,
    dim: int,
    *,
    base: float = 10_000.0,
    shortest: float = 2 * math.pi,
) -> torch.Tensor:
    """Fixed encoding of (column, row) lattice cells: sines and cosines of both axes.

    A quarter of the channels each holds sin(column), cos(column), sin(row), cos(row) at
    geometrically spaced wavelengths from ``shortest`` to ``shortest * base`` cells (Vaswani et
    al., 2017, on each axis; their wavelengths are the defaults).

    Args:
        cells: (n, 2) lattice cells (integer or float).
        dim: Output features; a multiple of 4.
        base: Ratio of the longest to the shortest wavelength.
        shortest: Shortest wavelength, in lattice cells.

    Returns:
        (n, dim) float32 encoding.
    """
    if dim % 4:
        raise ValueError(f"2D positional encoding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    steps = torch.arange(quarter, dtype=torch.float32, device=cells.device) / max(quarter - 1, 1)
    freqs = 2 * math.pi / shortest * base**-steps
    angles = cells.to(torch.float32)[:, :, None] * freqs  # (n, 2, q)
    return torch.cat(
        [angles[:, 0].sin(), angles[:, 0].cos(), angles[:, 1].sin(), angles[:, 1].cos()], -1
    )


class SlidePositions(nn.Module):
    """Slide-relative encoding: of the cells minus their mean, times a learned gain.

    Wavelengths run from 4 to 256 cells; the gain starts at ``gain``.

    The same for any translation of the slide; flips and rotations of the lattice change it,
    which training augmentation teaches the model to ignore.

    Args:
        dim: Output features; a multiple of 4.
        gain: Initial scale of the encoding (content embeddings have an RMS near 0.3).
    """

    def __init__(self, *, dim: int, gain: float = 0.1) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"2D positional encoding needs dim divisible by 4, got {dim}")
        self.dim = dim
        self.gain = nn.Parameter(torch.tensor(float(gain)))

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        """(n, 2) cells -> (n, dim) encoding."""
        centred = cells.to(torch.float32) - cells.to(torch.float32).mean(dim=0)
        return self.gain * sincos_2d(centred, self.dim, base=64.0, shortest=4.0)
