"""2D sine-cosine positional encoding of lattice cells."""

from __future__ import annotations

import torch


def sincos_2d(cells: torch.Tensor, dim: int, *, base: float = 10_000.0) -> torch.Tensor:
    """Fixed encoding of (column, row) lattice cells: sines and cosines of both axes.

    A quarter of the channels each holds sin(column), cos(column), sin(row), cos(row) at
    geometrically spaced frequencies (Vaswani et al., 2017, on each axis).

    Args:
        cells: (n, 2) integer lattice cells.
        dim: Output features; a multiple of 4.
        base: Longest wavelength, in lattice cells.

    Returns:
        (n, dim) float32 encoding.
    """
    if dim % 4:
        raise ValueError(f"2D positional encoding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float32, device=cells.device) / quarter)
    angles = cells.to(torch.float32)[:, :, None] * freqs  # (n, 2, quarter)
    return torch.cat(
        [angles[:, 0].sin(), angles[:, 0].cos(), angles[:, 1].sin(), angles[:, 1].cos()], -1
    )
