"""CONCH v1.5's image encoder (TITAN's patch encoder), built with random weights.

The architecture of MahmoodLab's ``conch_v1_5.py`` (TRIDENT, TITAN): an iBOT ViT-L/16 trunk
from timm, a one-query attentional pooler and a LayerNorm. Its registry entry is in
:mod:`extractors.encoders.foundation`.

Axes: ``b`` images, ``n`` tokens, ``d`` features, ``h`` heads, ``e`` features per head,
``gh``/``gw`` rows/columns of the patch grid.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import nn

#: timm arguments of the trunk as published (num_classes=0 is added where it is built).
CONCH_V15_TRUNK_KWARGS = {
    "img_size": 224,
    "patch_size": 16,
    "init_values": 1.0,
    "dynamic_img_size": True,
}


def ibot_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Positional embedding (class entry first) resized to a ``grid`` of patches as iBOT does.

    CONCH v1.5's trunk is iBOT's ViT: its square table is resized with bicubic interpolation
    and a scale factor of ``(grid + 0.1) / side`` (facebookresearch/dino issue 8). timm's
    size-based resampling samples slightly different positions, so it is not used.
    """
    side = math.isqrt(pos_embed.shape[1] - 1)
    if grid == (side, side):
        return pos_embed
    class_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    table = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, d, side, side)
    scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
    table = F.interpolate(table, scale_factor=scale, mode="bicubic")  # (1, d, gh, gw)
    return torch.cat([class_pos, table.flatten(2).transpose(1, 2)], dim=1)


class AttentionalPooler(nn.Module):
    """One learned query attending over all tokens (CoCa's attentional pooler with one query).

    Args:
        dim: Width of the query and of the output.
        context_dim: Width of the tokens attended to.
        heads: Attention heads; must divide ``dim``.
    """

    def __init__(self, *, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.query = nn.Parameter(torch.randn(1, dim))
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool ``(b, n, context_dim)`` tokens into ``(b, dim)``."""
        query = self.to_q(self.ln_q(self.query)).expand(tokens.shape[0], -1, -1)  # (b, 1, d)
        keys, values = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)  # (b, n, d) each
        q, k, v = (self._split_heads(t) for t in (query, keys, values))  # (b, h, n, e)
        pooled = F.scaled_dot_product_attention(q, k, v)  # (b, h, 1, e)
        return self.to_out(pooled.transpose(1, 2).flatten(2)[:, 0])  # (b, d)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (b, n, d) -> (b, h, n, e)


class ConchV15Vision(nn.Module):
    """CONCH v1.5 image encoder: ViT-L/16 trunk, one-query attentional pooling, LayerNorm.

    Parameter names are those of the published ``pytorch_model_vision.bin`` (``trunk.*``,
    ``attn_pool_contrast.*``, ``ln_contrast.*``). The trunk's positional table covers 224 px
    (14 x 14 patches) and is interpolated to the 448 px input on every call, as in iBOT.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = timm.create_model(
            "vit_large_patch16_224", pretrained=False, num_classes=0, **CONCH_V15_TRUNK_KWARGS
        )
        self.attn_pool_contrast = AttentionalPooler(dim=768, context_dim=1024, heads=8)
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed normalised images into ``(b, 768)``."""
        return self.ln_contrast(self.attn_pool_contrast(self.tokens(images)))

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's normalised output tokens ``(b, 1 + gh * gw, 1024)``, class token first."""
        trunk = self.trunk
        patches = trunk.patch_embed(images)  # (b, gh, gw, d): dynamic_img_size gives NHWC
        b, gh, gw, _ = patches.shape
        tokens = torch.cat([trunk.cls_token.expand(b, -1, -1), patches.flatten(1, 2)], dim=1)
        tokens = trunk.norm_pre(tokens + ibot_pos_embed(trunk.pos_embed, (gh, gw)))
        return trunk.norm(trunk.blocks(tokens))
