import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from querent.data.grid import build_grid
from querent.layers.attention import DenseSelfAttention, QueryAwareSelfAttention
from querent.layers.query_aware import query_aware_attention
from querent.layers.regions import RegionLayout, patches_by_area, region_mean, region_min_max
from querent.layers.scorers import SCORERS, QuestScorer, quest_scores

SELECTIONS = ("patch", "region")


def _ragged_layout(seed, n_cells, extent, region_size):
    """Patches on random cells of an extent x extent lattice: ragged regions, gaps, islands."""
    rng = np.random.default_rng(seed)
    cells = np.unique(rng.integers(0, extent, size=(n_cells, 2)), axis=0)
    return cells, RegionLayout.from_grid(build_grid(cells, 1, region_size))


def _qkv(seed, n, heads, dim):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, heads, dim, generator=g, dtype=torch.float64) for _ in range(3))


def _dense(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    ).transpose(0, 1)


def _quest(q, k, layout):
    return QuestScorer(dim=q.shape[1] * q.shape[2], heads=q.shape[1], head_dim=q.shape[2]).prepare(
        None, q, k, layout
    )


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize(
    ("n_cells", "extent", "heads", "dim", "region_size", "chunk"),
    [(50, 12, 1, 8, 2, 1024), (300, 30, 4, 16, 4, 64), (900, 60, 2, 32, 3, 100)],
)
def test_all_regions_equals_full_attention(
    selection, n_cells, extent, heads, dim, region_size, chunk
):
    _, layout = _ragged_layout(0, n_cells, extent, region_size)
    q, k, v = _qkv(0, len(layout.region_of_patch), heads, dim)
    out, selected = query_aware_attention(
        q, k, v, layout, _quest(q, k, layout), top_k=None, selection=selection, chunk_size=chunk
    )
    torch.testing.assert_close(out, _dense(q, k, v), rtol=1e-5, atol=1e-5)
    assert selected.shape == (heads, len(q), layout.n_regions)


def _reference(q, k, v, layout, selected, bias=None):
    """Masked dense attention: query i sees the keys of its selected regions only (per head).

    ``bias`` (h, n, k), if given, is added to the logits of every key of the selected region.
    """
    heads = q.shape[1]
    region = layout.region_of_patch
    match = region[None, None, None, :] == selected[..., None]  # (h, n, k, n)
    extra = torch.zeros_like(match, dtype=q.dtype) if bias is None else bias[..., None] * match
    logits_mask = extra.sum(dim=2).masked_fill(~match.any(dim=2), -torch.inf)
    assert logits_mask.shape == (heads, len(q), len(q))
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=logits_mask
    ).transpose(0, 1)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize(("top_k", "chunk"), [(1, 7), (3, 64), (5, 1024)])
def test_top_k_attention_equals_masked_dense_attention(selection, top_k, chunk):
    _, layout = _ragged_layout(4, 400, 30, 3)
    q, k, v = _qkv(4, len(layout.region_of_patch), 3, 8)
    out, selected = query_aware_attention(
        q, k, v, layout, _quest(q, k, layout), top_k=top_k, selection=selection, chunk_size=chunk
    )
    assert selected.shape == (3, len(q), top_k)
    torch.testing.assert_close(out, _reference(q, k, v, layout, selected), rtol=1e-9, atol=1e-9)
    if selection == "region":  # patches of one region share their selection
        for region in range(layout.n_regions):
            rows = selected[:, layout.region_of_patch == region]
            assert (rows == rows[:, :1]).all()


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize(("top_k", "chunk"), [(1, 7), (3, 64), (500, 1024)])
def test_local_regions_are_always_attended_once_besides_the_top_k(selection, top_k, chunk):
    cells, layout = _ragged_layout(5, 400, 30, 3)
    q, k, v = _qkv(5, len(layout.region_of_patch), 2, 8)
    out, selected = query_aware_attention(
        q,
        k,
        v,
        layout,
        _quest(q, k, layout),
        top_k=top_k,
        selection=selection,
        local=True,
        chunk_size=chunk,
    )
    torch.testing.assert_close(out, _reference(q, k, v, layout, selected), rtol=1e-9, atol=1e-9)
    region_xy = {tuple(c) for c in (cells // 3).tolist()}
    for patch in range(0, len(q), 17):
        x, y = (cells[patch] // 3).tolist()
        near = {(x + dx, y + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)} & region_xy
        picks = selected[:, patch]
        for head in picks:
            chosen = head[head >= 0].tolist()
            assert len(chosen) == len(set(chosen))  # no region twice
            chosen_xy = {tuple(c) for c in build_grid(cells, 1, 3).region_cells[chosen].tolist()}
            assert near <= chosen_xy
            assert len(chosen) == min(len(near) + top_k, layout.n_regions)
    if top_k >= layout.n_regions:  # every region once: exactly full attention
        torch.testing.assert_close(out, _dense(q, k, v), rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    heads=st.integers(1, 4),
    dim=st.integers(1, 24),
    region_size=st.integers(1, 5),
)
def test_quest_score_bounds_every_key_of_its_region(seed, heads, dim, region_size):
    _, layout = _ragged_layout(seed, 120, 20, region_size)
    q, k, _ = _qkv(seed, len(layout.region_of_patch), heads, dim)
    kmin, kmax = region_min_max(k, layout)
    scores = quest_scores(q, kmin, kmax)  # (h, n, r)
    exact = torch.einsum("nhd,mhd->hnm", q, k)  # (h, n, n)
    for region in range(layout.n_regions):
        members = layout.region_of_patch == region
        true_max = exact[:, :, members].amax(dim=-1)
        assert (scores[:, :, region] >= true_max - 1e-9).all()


def test_selected_regions_have_the_highest_scores():
    _, layout = _ragged_layout(1, 200, 20, 4)
    q, k, v = _qkv(1, len(layout.region_of_patch), 2, 8)
    kmin, kmax = region_min_max(k, layout)
    scores = quest_scores(q, kmin, kmax)
    _, selected = query_aware_attention(q, k, v, layout, _quest(q, k, layout), top_k=3)
    assert selected.shape == (2, len(q), 3)
    chosen = scores.gather(-1, selected).amin(dim=-1)
    others = scores.scatter(-1, selected, -torch.inf).amax(dim=-1)
    assert (chosen >= others).all()


def _distance_decaying_bag(seed, beta=0.5, noise_dims=6, noise=0.05):
    """Queries and keys whose logits are -beta * |p_i - p_j|^2 plus a little noise."""
    cells, layout = _ragged_layout(seed, 900, 40, 4)
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
    return (q * dim**0.5)[:, None], k[:, None], v, layout


def test_error_falls_as_k_grows_on_distance_decaying_attention():
    q, k, v, layout = _distance_decaying_bag(0)
    dense = _dense(q, k, v)
    errors = []
    ks = [1, 2, 4, 8, layout.n_regions // 4, layout.n_regions // 2]
    for top_k in ks:
        out, _ = query_aware_attention(q, k, v, layout, _quest(q, k, layout), top_k=top_k)
        errors.append(float(torch.linalg.norm(out - dense) / torch.linalg.norm(dense)))
    # monotone within noise, and within 1% once half of the regions are kept
    pairs = zip(errors, errors[1:], strict=False)
    assert all(later <= earlier * 1.05 + 1e-12 for earlier, later in pairs)
    assert errors[0] > 10 * errors[-1]
    assert errors[-1] <= 0.01, dict(zip(ks, errors, strict=True))


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize(
    ("seed", "n_cells", "extent", "region_size"), [(2, 200, 20, 4), (5, 60, 40, 2)]
)
def test_module_with_all_regions_equals_dense_module(
    scorer, selection, seed, n_cells, extent, region_size
):
    _, layout = _ragged_layout(seed, n_cells, extent, region_size)
    torch.manual_seed(seed)
    sparse = QueryAwareSelfAttention(
        dim=32, heads=4, top_k=None, scorer=scorer, selection=selection, chunk_size=50
    ).double()
    dense = DenseSelfAttention(dim=32, heads=4, head_dim=None).double()
    dense.load_state_dict(sparse.state_dict(), strict=False)  # shared projections
    x = torch.randn(len(layout.region_of_patch), 32, dtype=torch.float64)
    out, _ = sparse(x, layout)
    expected, _ = dense(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("scorer", ["quest", "learned", "learned_distance", "mean"])
def test_module_is_equivariant_to_patch_order(scorer, selection):
    torch.manual_seed(0)
    cells, layout = _ragged_layout(3, 200, 20, 4)
    x = torch.randn(len(cells), 16, dtype=torch.float64)
    layer = QueryAwareSelfAttention(dim=16, heads=2, top_k=3, scorer=scorer, selection=selection)
    layer = layer.double()
    out, selected = layer(x, layout)
    order = np.random.default_rng(3).permutation(len(cells))
    shuffled_layout = RegionLayout.from_grid(build_grid(cells[order], 1, 4))
    shuffled, _ = layer(x[order], shuffled_layout)
    torch.testing.assert_close(shuffled, out[order], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("chunk", [16, 1024])
@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("scorer", ["quest", "learned", "learned_distance"])
@pytest.mark.parametrize("local", [False, True])
def test_forward_and_gradients_equal_masked_dense_attention(scorer, selection, chunk, local):
    """Hard top-k forward; every parameter's gradient, learned scorer included, as autograd
    gives it through masked dense attention plus the straight-through score term (on the
    top-k picks only: local regions are attended whatever their score)."""
    torch.manual_seed(0)
    _, layout = _ragged_layout(6, 300, 24, 3)
    x = torch.randn(len(layout.region_of_patch), 16, dtype=torch.float64)
    layer = QueryAwareSelfAttention(
        dim=16,
        heads=2,
        top_k=2,
        scorer=scorer,
        selection=selection,
        chunk_size=chunk,
        local=local,
    ).double()
    out, selected = layer(x, layout)
    q, k, v = layer.split(x)
    bias = None
    if scorer.startswith("learned"):
        scoring = layer.scorer.prepare(x, q, k, layout)
        queries = scoring.queries
        if selection == "region":  # the region's mean scoring query, shared by its patches
            queries = region_mean(queries, layout)[layout.region_of_patch]
        score = scoring.score_selected(queries, selected.clamp(min=0))
        bias = (score - score.detach()).masked_fill(selected < 0, 0)
        if local:
            bias[..., :9] = 0
    expected = layer.merge(_reference(q, k, v, layout, selected, bias))
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    weights = torch.randn_like(out)
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad((out * weights).sum(), list(params.values()))
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(params.values()))
    for name, grad, expected_grad in zip(params, grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-9, msg=name)
        assert grad.abs().sum() > 0, name


def test_module_rejects_bad_settings():
    with pytest.raises(ValueError, match="top_k"):
        QueryAwareSelfAttention(dim=16, top_k=0)
    with pytest.raises(ValueError, match="head_dim"):
        QueryAwareSelfAttention(dim=2, heads=4)
    with pytest.raises(ValueError, match="scorer.*quest"):
        QueryAwareSelfAttention(dim=16, scorer="best")
    with pytest.raises(ValueError, match="selection"):
        QueryAwareSelfAttention(dim=16, selection="slide")
    with pytest.raises(ValueError, match="chunk_size"):
        QueryAwareSelfAttention(dim=16, chunk_size=0)


def test_patches_by_area_walks_squares_of_regions():
    xy = np.stack(np.meshgrid(np.arange(32), np.arange(32)), -1).reshape(-1, 2)
    xy = xy[np.random.default_rng(0).permutation(len(xy))[:900]]  # holes, shuffled
    grid = build_grid(xy, 1, 2)  # 16 x 16 regions of 2 x 2 patches
    layout = RegionLayout.from_grid(grid)
    order = patches_by_area(layout)
    assert sorted(order.tolist()) == list(range(len(xy)))
    regions = layout.region_of_patch[order]
    assert (regions.diff() != 0).sum() == layout.n_regions - 1  # one run per region
    runs = regions.unique_consecutive()
    for start in range(0, len(runs), 16):  # every 16 regions in turn: a 4 x 4 square
        cells = grid.region_cells[runs[start : start + 16].numpy()]
        assert (cells.max(0) - cells.min(0)).tolist() == [3, 3]
    unknown = RegionLayout(
        *[
            getattr(layout, f)
            for f in ("slots", "valid", "region_of_patch", "patch_slot", "neighbours")
        ]
    )
    assert torch.equal(patches_by_area(unknown), layout.slots[layout.valid])


@pytest.mark.parametrize("selection", SELECTIONS)
def test_a_heavy_distance_weight_picks_the_query_s_own_and_nearest_regions(selection):
    torch.manual_seed(0)
    _, layout = _ragged_layout(4, 300, 24, 3)
    layer = QueryAwareSelfAttention(
        dim=16, heads=2, top_k=1, scorer="learned_distance", selection=selection
    ).double()
    x = torch.randn(len(layout.region_of_patch), 16, dtype=torch.float64)
    with torch.no_grad():
        layer.scorer.distance_weight.fill_(-20.0)  # softplus ~ 0: content alone
        _, free = layer(x, layout)
        layer.scorer.distance_weight.fill_(1e3)
        _, near = layer(x, layout)
    own = layout.region_of_patch[None, :]
    assert torch.equal(near[..., 0], own.expand(2, -1))
    assert (free[..., 0] == own).float().mean() < 0.5


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize(("top_k", "local"), [(None, False), (2, True)])
def test_distance_bias_lowers_logits_by_slope_times_region_distance(selection, top_k, local):
    _, layout = _ragged_layout(6, 300, 24, 3)
    q, k, v = _qkv(6, len(layout.region_of_patch), 3, 8)
    slopes = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    out, selected = query_aware_attention(
        q, k, v, layout, _quest(q, k, layout), top_k=top_k, selection=selection,
        local=local, chunk_size=50, distance_slopes=slopes,
    )  # fmt: skip
    cells = layout.region_cells.double()
    own = cells[layout.region_of_patch]  # (n, 2)
    distance = (cells[selected.clamp(min=0)] - own[None, :, None]).norm(dim=-1)
    bias = (-slopes[:, None, None] * distance).masked_fill(selected < 0, 0)
    expected = _reference(q, k, v, layout, selected, bias)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    (grad,) = torch.autograd.grad(out.square().sum(), slopes)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), slopes)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=1e-9)
    assert grad.abs().min() > 0  # every head's slope learns


def test_distance_bias_module_starts_with_halving_slopes_and_is_equivariant():
    torch.manual_seed(0)
    layer = QueryAwareSelfAttention(dim=16, heads=4, top_k=2, local=True, distance_bias=True)
    slopes = torch.nn.functional.softplus(layer.distance_slope)
    torch.testing.assert_close(slopes, torch.tensor([1.0, 0.5, 0.25, 0.125]))
    assert QueryAwareSelfAttention(dim=16, heads=4).distance_slope is None
    cells, layout = _ragged_layout(7, 200, 20, 4)
    x = torch.randn(len(layout.region_of_patch), 16)
    out, _ = layer(x, layout)
    perm = torch.randperm(len(x))
    shuffled = RegionLayout.from_grid(build_grid(cells[perm.numpy()], 1, 4))
    out_perm, _ = layer(x[perm], shuffled)
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-5, atol=1e-5)
