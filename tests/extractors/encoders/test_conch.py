"""CONCH v1.5's architecture: the iBOT positional table, the trunk and the attentional pooler."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from extractors.encoders import conch


def test_ibot_pos_embed_keeps_the_native_grid():
    pos_embed = torch.randn(1, 1 + 14 * 14, 8)
    assert conch.ibot_pos_embed(pos_embed, (14, 14)) is pos_embed


def test_ibot_pos_embed_uses_dino_scale_factor_not_target_size():
    pos_embed = torch.randn(1, 1 + 14 * 14, 8, dtype=torch.float64)
    resized = conch.ibot_pos_embed(pos_embed, (28, 28))
    assert resized.shape == (1, 1 + 28 * 28, 8)
    assert torch.equal(resized[:, 0], pos_embed[:, 0])
    table = pos_embed[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    reference = F.interpolate(table, scale_factor=(28.1 / 14, 28.1 / 14), mode="bicubic")
    torch.testing.assert_close(resized[:, 1:], reference.permute(0, 2, 3, 1).reshape(1, -1, 8))
    by_size = resample_abs_pos_embed(pos_embed, new_size=(28, 28), num_prefix_tokens=1)
    assert not torch.allclose(resized, by_size)


def test_conch_v15_trunk_matches_timm_at_the_native_size():
    model = conch.ConchV15Vision().eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.tokens(images), model.trunk.forward_features(images))
        assert model.tokens(torch.randn(1, 3, 448, 448)).shape == (1, 1 + 28 * 28, 1024)
    assert model.trunk.pos_embed.shape == (1, 1 + 14 * 14, 1024)


def test_attentional_pooler_is_single_query_cross_attention():
    pooler = conch.AttentionalPooler(dim=8, context_dim=6, heads=2).eval()
    tokens = torch.randn(3, 5, 6)
    with torch.no_grad():
        q = pooler.to_q(pooler.ln_q(pooler.query)).view(2, 4)  # (h, e)
        k, v = pooler.to_kv(pooler.ln_k(tokens)).chunk(2, dim=-1)
        k, v = k.view(3, 5, 2, 4), v.view(3, 5, 2, 4)  # (b, n, h, e)
        weights = torch.einsum("he,bnhe->bhn", q, k).div(2.0).softmax(dim=-1)
        expected = pooler.to_out(torch.einsum("bhn,bnhe->bhe", weights, v).reshape(3, 8))
        torch.testing.assert_close(pooler(tokens), expected)


def test_attentional_pooler_rejects_heads_that_do_not_divide_dim():
    with pytest.raises(ValueError, match="not divisible"):
        conch.AttentionalPooler(dim=10, context_dim=6, heads=3)
