"""Branch-and-bound top-k (querent.layers.pruning) picks exactly what scoring every region picks."""

import numpy as np
import pytest
import torch

from querent.data.grid import build_grid
from querent.layers import pruning
from querent.layers.attention import QueryAwareSelfAttention
from querent.layers.pruning import QuestTable, group_regions
from querent.layers.query_aware import query_aware_attention
from querent.layers.regions import RegionLayout, region_min_max
from querent.layers.scorers import QuestScorer, quest_scores


@pytest.fixture(autouse=True)
def _prune_small_bags(monkeypatch):
    """Prune whatever the number of regions and candidates, so small bags take the pruned path."""
    monkeypatch.setattr(pruning, "MIN_REGIONS", 0)
    monkeypatch.setattr(pruning, "MAX_FRACTION", 1.0)


def _tissue(shape: str, seed: int = 0) -> np.ndarray:
    """(n, 2) lattice cells of a tissue shape: a disk, a disk with holes, a thin strip."""
    rng = np.random.default_rng(seed)
    if shape == "strip":
        xy = np.stack(np.meshgrid(np.arange(600), np.arange(3)), -1).reshape(-1, 2)
        return xy[rng.random(len(xy)) < 0.9]  # a few missing patches too
    xy = np.stack(np.meshgrid(np.arange(48), np.arange(48)), -1).reshape(-1, 2)
    keep = ((xy - 23.5) ** 2).sum(1) < 23**2
    if shape == "holes":
        for centre in rng.integers(8, 40, size=(6, 2)):
            keep &= ((xy - centre) ** 2).sum(1) > 4**2
        keep &= rng.random(len(xy)) < 0.95
    return xy[keep]


def _smooth_qkv(cells: np.ndarray, heads: int, dim: int, noise: float, seed: int = 0):
    """float64 q, k, v that vary smoothly over the lattice (6-cell blobs) plus noise.

    Smooth keys make regions differ, so bounds prune; ``noise`` near 1 makes them alike.
    """
    g = torch.Generator().manual_seed(seed)
    blob = torch.as_tensor(cells // 6)
    blob = blob[:, 1] * 1000 + blob[:, 0]
    _, blob = torch.unique(blob, return_inverse=True)
    field = torch.randn(int(blob.max()) + 1, heads, dim, generator=g, dtype=torch.float64)

    def one():
        return field[blob] + noise * torch.randn(len(cells), heads, dim, generator=g).double()

    return one(), one(), torch.randn(len(cells), heads, dim, generator=g, dtype=torch.float64)


def _attend(q, k, v, layout, top_k, prune, chunk=256):
    scoring = QuestScorer(dim=q.shape[1] * q.shape[2], heads=q.shape[1], head_dim=q.shape[2])
    scoring = scoring.prepare(None, q, k, layout)
    out, selected = query_aware_attention(
        q, k, v, layout, scoring, top_k=top_k, selection="patch", chunk_size=chunk, prune=prune
    )
    return out, selected, scoring


@pytest.mark.parametrize(
    ("shape", "region_size", "top_k", "heads", "noise"),
    [
        ("disk", 2, 8, 4, 0.1),
        ("holes", 2, 3, 2, 0.1),
        ("holes", 3, 8, 3, 0.2),
        ("strip", 2, 5, 2, 0.1),
        ("strip", 1, 16, 1, 0.3),
        ("disk", 4, 1, 2, 0.1),
        ("disk", 2, 8, 2, 1.5),  # regions alike: chunks fall back to scoring all regions
    ],
)
def test_pruned_selection_and_attention_equal_brute_force(
    shape, region_size, top_k, heads, noise, monkeypatch
):
    if noise > 1:
        monkeypatch.setattr(pruning, "MAX_FRACTION", 0.5)
    cells = _tissue(shape)
    layout = RegionLayout.from_grid(build_grid(cells, 1, region_size))
    q, k, v = _smooth_qkv(cells, heads, 8, noise)
    out, selected, scoring = _attend(q, k, v, layout, top_k, prune=True)
    expected, brute, _ = _attend(q, k, v, layout, top_k, prune=False)
    assert selected.shape == (heads, len(cells), top_k)
    assert torch.equal(selected.sort(-1).values, brute.sort(-1).values)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    tries = scoring.top_regions.__self__.tries
    assert tries["pruned" if noise < 1 else "full"] > 0  # the path under test ran


@pytest.mark.parametrize("top_k", [8, 40, 1000])
def test_fewer_regions_than_k_and_ragged_regions(top_k):
    cells = _tissue("holes", seed=3)[::7]  # sparse: many regions hold 1 or 2 patches
    layout = RegionLayout.from_grid(build_grid(cells, 1, 4))
    q, k, v = _smooth_qkv(cells, 2, 8, 0.1, seed=3)
    out, selected, _ = _attend(q, k, v, layout, top_k, prune=True, chunk=37)
    expected, brute, _ = _attend(q, k, v, layout, top_k, prune=False, chunk=37)
    assert selected.shape[-1] == min(top_k, layout.n_regions)
    assert torch.equal(selected.sort(-1).values, brute.sort(-1).values)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_gradients_equal_brute_force():
    cells = _tissue("holes", seed=1)
    layout = RegionLayout.from_grid(build_grid(cells, 1, 2))
    q, k, v = _smooth_qkv(cells, 2, 8, 0.1, seed=1)
    weight = torch.randn(len(cells), 2, 8, dtype=torch.float64)
    grads = []
    for prune in (True, False):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, _, scoring = _attend(*leaves, layout, 4, prune=prune, chunk=128)
        assert scoring.score_selected is None  # quest: no score gradient, as before
        (out * weight).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for pruned, brute in zip(*grads, strict=True):
        torch.testing.assert_close(pruned, brute, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("block", "chunk"), [(64, 1024), (16, 100), (7, 33)])
@pytest.mark.parametrize("noise", [0.05, 0.5])
def test_top_regions_equal_topk_of_all_scores(block, chunk, noise):
    cells = _tissue("disk", seed=2)
    layout = RegionLayout.from_grid(build_grid(cells, 1, 2))
    q, k, _ = _smooth_qkv(cells, 3, 6, noise, seed=2)
    kmin, kmax = region_min_max(k, layout)
    table = QuestTable.build(kmin, kmax, layout.region_cells)
    queries = q[layout.slots[layout.valid]]  # region order, as attention passes them
    for start in range(0, len(queries), chunk):
        part = queries[start : start + chunk]
        values, picks = table.top_regions(part, 8, block=block, max_fraction=2.0)
        brute = quest_scores(part, kmin, kmax).topk(8, dim=-1)
        assert torch.equal(picks.sort(-1).values, brute.indices.sort(-1).values)
        torch.testing.assert_close(values, brute.values, rtol=1e-12, atol=1e-12)
    assert table.tries["full"] == 0


@pytest.mark.parametrize("top_k", [1, 8, 40])
@pytest.mark.parametrize("cells_known", [True, False])
@pytest.mark.parametrize("score_bytes", [pruning.SCORE_BYTES, 8 * 1000])
def test_scoring_every_region_by_rank_groups_equals_topk_of_all_scores(
    top_k, cells_known, score_bytes, monkeypatch
):
    monkeypatch.setattr(pruning, "MAX_FRACTION", 0.0)  # every pruning try falls back
    monkeypatch.setattr(pruning, "SCORE_BYTES", score_bytes)  # 8 kB: blocks of 2 or 3 queries
    cells = _tissue("holes", seed=6)
    layout = RegionLayout.from_grid(build_grid(cells, 1, 2))
    assert layout.n_regions % pruning.SPAN != 0  # a partly empty last rank group
    q, k, _ = _smooth_qkv(cells, 2, 6, 0.5, seed=6)
    kmin, kmax = region_min_max(k, layout)
    table = QuestTable.build(kmin, kmax, layout.region_cells if cells_known else None)
    queries = q[layout.slots[layout.valid]]
    for start, stop in [(0, 300), (300, 337), (337, 900), (900, len(queries))]:  # reused buffers
        part = queries[start:stop]
        values, picks = table.top_regions(part, top_k)
        brute = quest_scores(part, kmin, kmax).topk(top_k, dim=-1)
        assert torch.equal(picks.sort(-1).values, brute.indices.sort(-1).values)
        torch.testing.assert_close(values, brute.values, rtol=1e-12, atol=1e-12)
    # two fallbacks, then the pass scores every region directly; no super-regions: no tries
    assert table.tries == {"pruned": 0, "full": 2 if cells_known else 0}


@pytest.mark.parametrize("max_fraction", [0.0, 2.0])  # score every region / prune
def test_float32_picks_are_the_best_regions_within_rounding(max_fraction):
    """In float32 (oneDNN's matmuls on the CPU) the picks are the exact best up to rounding."""
    cells = _tissue("disk", seed=7)
    layout = RegionLayout.from_grid(build_grid(cells, 1, 2))
    q, k, _ = _smooth_qkv(cells, 2, 8, 0.5, seed=7)
    kmin, kmax = region_min_max(k, layout)
    table = QuestTable.build(kmin.float(), kmax.float(), layout.region_cells)
    queries = q[layout.slots[layout.valid]]
    exact = quest_scores(queries, kmin, kmax)  # float64, (h, n, r)
    for start in range(0, len(queries), 500):
        part = slice(start, start + 500)
        values, picks = table.top_regions(queries[part].float(), 8, max_fraction=max_fraction)
        assert values.dtype == torch.float32
        scores = exact[:, part]
        assert (picks.sort(-1).values.diff(dim=-1) > 0).all()  # 8 different regions
        picked = scores.gather(-1, picks)
        rounding = 1e-5 * scores.abs().amax(-1, keepdim=True)
        assert (picked >= scores.topk(8, dim=-1).values[..., -1:] - rounding).all()
        assert ((values.double() - picked).abs() <= rounding).all()
    assert table.tries["full" if max_fraction == 0 else "pruned"] > 0  # the path under test ran


def test_super_regions_hold_every_region_once_and_bound_their_members():
    cells = _tissue("holes", seed=4)
    grid = build_grid(cells, 1, 3)
    layout = RegionLayout.from_grid(grid)
    members = group_regions(layout.region_cells, 2)
    real = members[members < layout.n_regions]
    assert sorted(real.tolist()) == list(range(layout.n_regions))
    for row in members:  # members share one 2 x 2 block of the region lattice
        inside = row[row < layout.n_regions].numpy()
        blocks = {tuple(c) for c in (grid.region_cells[inside] // 2).tolist()}
        assert len(blocks) == 1
    q, k, _ = _smooth_qkv(cells, 2, 5, 0.5, seed=4)
    kmin, kmax = region_min_max(k, layout)
    table = QuestTable.build(kmin, kmax, layout.region_cells)
    bounds = torch.bmm(pruning.signed_queries(q), table.supers.transpose(1, 2))  # (h, n, R)
    scores = quest_scores(q, kmin, kmax)  # (h, n, r)
    owner = torch.empty(layout.n_regions, dtype=torch.long)
    for index, row in enumerate(members):
        owner[row[row < layout.n_regions]] = index
    assert (bounds[..., owner] >= scores - 1e-12).all()


def test_module_prune_option_changes_nothing_but_the_cost():
    torch.manual_seed(0)
    cells = _tissue("disk", seed=5)
    layout = RegionLayout.from_grid(build_grid(cells, 1, 2))
    layer = QueryAwareSelfAttention(dim=16, heads=2, top_k=4, scorer="quest", chunk_size=200)
    layer = layer.double()
    x = torch.randn(len(cells), 16, dtype=torch.float64)
    out, selected = layer(x, layout)
    layer.prune = False
    expected, brute = layer(x, layout)
    assert torch.equal(selected.sort(-1).values, brute.sort(-1).values)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
