"""The torch device a command runs on; torch loads only when a device is picked."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(name: str | None = None) -> torch.device:
    """The device ``name`` (``cuda``, ``cuda:1``, ``cpu``), or CUDA when available, else CPU."""
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
