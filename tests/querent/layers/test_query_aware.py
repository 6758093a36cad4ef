import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from querent.data.grid import build_grid
from querent.layers.query_aware import query_aware_attention, quest_scores, region_min_max


def _ragged_bag(seed, n_cells, extent, heads, dim, region_size):
    rng = np.random.default_rng(seed)
    cells = np.unique(rng.integers(0, extent, size=(n_cells, 2)), axis=0)
    grid = build_grid(cells, 1, region_size)
    g = torch.Generator().manual_seed(seed)
    n = len(cells)
    q, k, v = (torch.randn(n, heads, dim, generator=g, dtype=torch.float64) for _ in range(3))
    return q, k, v, torch.from_numpy(grid.slots)


def _dense(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    ).transpose(0, 1)


@pytest.mark.parametrize(
    ("n_cells", "extent", "heads", "dim", "region_size", "chunk"),
    [(50, 12, 1, 8, 2, 1024), (300, 30, 4, 16, 4, 64), (900, 60, 2, 32, 3, 100)],
)
def test_all_regions_equals_full_attention(n_cells, extent, heads, dim, region_size, chunk):
    q, k, v, slots = _ragged_bag(0, n_cells, extent, heads, dim, region_size)
    kmin, kmax = region_min_max(k, slots)
    out, _ = query_aware_attention(
        q,
        k,
        v,
        slots,
        lambda chunk_q, _: quest_scores(chunk_q, kmin, kmax),
        top_k=None,
        chunk_size=chunk,
    )
    torch.testing.assert_close(out, _dense(q, k, v), rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    heads=st.integers(1, 4),
    dim=st.integers(1, 24),
    region_size=st.integers(1, 5),
)
def test_quest_score_bounds_every_key_of_its_region(seed, heads, dim, region_size):
    q, k, _, slots = _ragged_bag(seed, 120, 20, heads, dim, region_size)
    kmin, kmax = region_min_max(k, slots)
    scores = quest_scores(q, kmin, kmax)  # (h, n, r)
    exact = torch.einsum("nhd,mhd->hnm", q, k)  # (h, n, n)
    for region, members in enumerate(slots.tolist()):
        members = [m for m in members if m >= 0]
        true_max = exact[:, :, members].amax(dim=-1)
        assert (scores[:, :, region] >= true_max - 1e-9).all()


def test_selected_regions_have_the_highest_scores():
    q, k, v, slots = _ragged_bag(1, 200, 20, 2, 8, 4)
    kmin, kmax = region_min_max(k, slots)
    scores = quest_scores(q, kmin, kmax)
    _, selected = query_aware_attention(
        q, k, v, slots, lambda chunk_q, _: quest_scores(chunk_q, kmin, kmax), top_k=3
    )
    assert selected.shape == (2, len(q), 3)
    chosen = scores.gather(-1, selected).amin(dim=-1)
    others = scores.scatter(-1, selected, -torch.inf).amax(dim=-1)
    assert (chosen >= others).all()


def _distance_decaying_bag(seed, beta=0.5, noise_dims=6, noise=0.05):
    """Queries and keys whose logits are -beta * |p_i - p_j|^2 plus a little noise."""
    rng = np.random.default_rng(seed)
    cells = np.unique(rng.integers(0, 40, size=(900, 2)), axis=0)
    grid = build_grid(cells, 1, 4)
    xy = torch.from_numpy(cells).double()
    sq = (xy**2).sum(-1, keepdim=True)
    ones = torch.ones_like(sq)
    g = torch.Generator().manual_seed(seed)
    q = torch.cat(
        [
            beta * torch.cat([2 * xy, -ones, -sq], -1),
            noise * torch.randn(len(xy), noise_dims, generator=g, dtype=torch.float64),
        ],
        -1,
    )
    k = torch.cat(
        [
            torch.cat([xy, sq, ones], -1),
            noise * torch.randn(len(xy), noise_dims, generator=g, dtype=torch.float64),
        ],
        -1,
    )
    v = torch.randn(len(xy), 1, 16, generator=g, dtype=torch.float64)
    # dim**-0.5 scaling is undone so the logits are exactly as designed
    dim = q.shape[-1]
    return (q * dim**0.5)[:, None], k[:, None], v, torch.from_numpy(grid.slots)


def test_error_falls_as_k_grows_on_distance_decaying_attention():
    q, k, v, slots = _distance_decaying_bag(0)
    kmin, kmax = region_min_max(k, slots)
    dense = _dense(q, k, v)
    n_regions = len(slots)
    errors = []
    ks = [1, 2, 4, 8, n_regions // 4, n_regions // 2]
    for top_k in ks:
        out, _ = query_aware_attention(
            q, k, v, slots, lambda chunk_q, _: quest_scores(chunk_q, kmin, kmax), top_k=top_k
        )
        errors.append(float(torch.linalg.norm(out - dense) / torch.linalg.norm(dense)))
    # monotone within noise, and within 1% once half of the regions are kept
    pairs = zip(errors, errors[1:], strict=False)
    assert all(later <= earlier * 1.05 + 1e-12 for earlier, later in pairs)
    assert errors[0] > 10 * errors[-1]
    assert errors[-1] <= 0.01, dict(zip(ks, errors, strict=True))


def test_module_with_all_regions_equals_dense_multi_head_attention():
    from querent.layers.query_aware import QueryAwareSelfAttention

    torch.manual_seed(0)
    layer = QueryAwareSelfAttention(dim=32, heads=4, top_k=None, chunk_size=50).double()
    _, _, _, slots = _ragged_bag(2, 200, 20, 1, 1, 4)
    x = torch.randn(len(slots.clamp(min=0).unique()), 32, dtype=torch.float64)
    out, _ = layer(x, slots)
    q, k, v = layer.to_qkv(x).view(len(x), 3, 4, 8).unbind(1)
    expected = layer.to_out(_dense(q, k, v).reshape(len(x), 32))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_module_is_equivariant_to_patch_order():
    from querent.layers.query_aware import QueryAwareSelfAttention

    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    cells = np.unique(rng.integers(0, 20, size=(200, 2)), axis=0)
    x = torch.randn(len(cells), 16, dtype=torch.float64)
    layer = QueryAwareSelfAttention(dim=16, heads=2, top_k=3).double()
    out, _ = layer(x, torch.from_numpy(build_grid(cells, 1, 4).slots))
    order = rng.permutation(len(cells))
    shuffled, _ = layer(x[order], torch.from_numpy(build_grid(cells[order], 1, 4).slots))
    torch.testing.assert_close(shuffled, out[order], rtol=1e-9, atol=1e-9)


def test_module_rejects_bad_settings():
    from querent.layers.query_aware import QueryAwareSelfAttention

    with pytest.raises(ValueError, match="top_k"):
        QueryAwareSelfAttention(dim=16, top_k=0)
    with pytest.raises(ValueError, match="head_dim"):
        QueryAwareSelfAttention(dim=2, heads=4)
