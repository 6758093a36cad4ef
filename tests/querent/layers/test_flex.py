"""The FlexAttention kernel of query-aware attention, on the CPU (its GPU tests: test_flex_gpu)."""

import numpy as np
import pytest
import torch

from querent.data.grid import build_grid
from querent.layers.attention import QueryAwareSelfAttention
from querent.layers.flex import RegionSequence, flex_query_aware
from querent.layers.query_aware import query_aware_attention
from querent.layers.regions import RegionLayout
from querent.layers.scorers import QuestScorer
from querent.models import create_model


def _bag(seed, n_cells=400, extent=30, region_size=3, heads=2, dim=8, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    cells = np.unique(rng.integers(0, extent, size=(n_cells, 2)), axis=0)
    layout = RegionLayout.from_grid(build_grid(cells, 1, region_size))
    g = torch.Generator().manual_seed(seed)
    n = len(layout.region_of_patch)
    return layout, *(torch.randn(n, heads, dim, generator=g, dtype=dtype) for _ in range(3))


def _masked_dense(q, k, v, layout, picks, bias):
    """Dense attention where query i reads the keys of its picked regions, plus their bias."""
    region = layout.region_of_patch
    match = region[None, None, None, :] == picks[..., None]  # (h, n, k, n)
    logits = (bias[..., None] * match).sum(dim=2).masked_fill(~match.any(dim=2), -torch.inf)
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=logits
    ).transpose(0, 1)


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("selection", ["patch", "region"])
def test_flex_attention_equals_dense_attention_over_the_picks_with_their_bias(selection, local):
    layout, q, k, v = _bag(1, n_cells=250, extent=24)
    scoring = QuestScorer(dim=16, heads=2, head_dim=8).prepare(None, q, k, layout)
    tiled, selected = query_aware_attention(
        q, k, v, layout, scoring, top_k=3, selection=selection, local=local
    )
    picks = selected.masked_fill(selected < 0, layout.n_regions)  # (h, n, k) per patch
    per_region = picks.new_empty(2, layout.n_regions, picks.shape[2])
    per_region[:, layout.region_of_patch] = picks  # a region's patches share their picks
    groups = picks if selection == "patch" else per_region
    bias = torch.randn(groups.shape, generator=torch.Generator().manual_seed(2)).double()
    out = flex_query_aware(
        q, k, v, layout, groups, bias, per_patch=selection == "patch", compiled=False
    )
    patch_bias = bias if selection == "patch" else bias[:, layout.region_of_patch]
    expected = _masked_dense(q, k, v, layout, selected, patch_bias.masked_fill(selected < 0, 0))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    # no bias: the tiled kernel's output
    out = flex_query_aware(
        q, k, v, layout, groups, None, per_patch=selection == "patch", compiled=False
    )
    torch.testing.assert_close(out, tiled, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("per_patch", [True, False])
@pytest.mark.parametrize(("region_size", "block_size"), [(3, (16, 16)), (4, (32, 8)), (2, (8, 32))])
def test_block_lists_hold_every_read_key_and_no_block_without_one(
    per_patch, region_size, block_size
):
    """The blocks listed for a query block are exactly those where some query reads some key."""
    layout, *_ = _bag(3, n_cells=300, extent=24, region_size=region_size)
    rng = np.random.default_rng(4)
    groups = len(layout.region_of_patch) if per_patch else layout.n_regions
    picks = torch.as_tensor(rng.integers(0, layout.n_regions + 1, size=(2, groups, 3)))
    sequence = RegionSequence(layout, picks, per_patch=per_patch, block_size=block_size)
    length = sequence.length
    assert length % block_size[0] == 0 and length % block_size[1] == 0
    positions = torch.arange(length)
    reads = torch.stack(
        [sequence.mask_mod(0, h, positions[:, None], positions[None, :]) for h in range(2)]
    )  # (h, L, L)
    q_block, kv_block = block_size
    needed = reads.view(2, length // q_block, q_block, length // kv_block, kv_block).any(4).any(2)
    kv_counts, kv_indices, q_counts, q_indices = sequence.block_lists()
    listed = torch.zeros_like(needed)
    for h in range(2):
        for row in range(needed.shape[1]):
            listed[h, row, kv_indices[0, h, row, : kv_counts[0, h, row]].long()] = True
    assert torch.equal(listed, needed)
    # the backward pass's lists, per key block, are the same pairs the other way round
    by_key = torch.zeros_like(needed.transpose(1, 2))
    for h in range(2):
        for column in range(needed.shape[2]):
            by_key[h, column, q_indices[0, h, column, : q_counts[0, h, column]].long()] = True
    assert torch.equal(by_key, needed.transpose(1, 2))
    assert q_indices.shape[-1] == int(q_counts.max())  # as wide as the longest list
    wide = sequence.block_lists(full_width=True)
    assert wide[1].shape[-1] == needed.shape[2] and wide[3].shape[-1] == needed.shape[1]
    assert reads.sum() > 0
    # every patch's picks, and no other region, are read
    patch_reads = reads[:, sequence.key_valid][:, :, sequence.key_valid]
    patch = sequence.patch_at[sequence.key_valid]
    regions = layout.region_of_patch[patch]
    own = picks if per_patch else picks[:, layout.region_of_patch]
    expected = (own[:, patch][..., None] == regions[None, None, None, :]).any(2)
    assert torch.equal(patch_reads, expected)


def test_flex_refuses_to_train_on_the_cpu():
    layout, q, k, v = _bag(5, dtype=torch.float32)
    picks = torch.zeros(2, len(q), 1, dtype=torch.long)
    with pytest.raises(ValueError, match="no backward pass on the CPU.*kernel: tiled"):
        flex_query_aware(q.requires_grad_(), k, v, layout, picks, None, per_patch=True)


def test_the_model_checks_its_kernel_and_auto_runs_tiled_on_the_cpu():
    with pytest.raises(ValueError, match="kernel: unknown 'triton'; choose one of: auto"):
        create_model("querent", in_dim=8, n_outputs=2, kernel="triton")
    cells = torch.as_tensor(np.unique(np.random.default_rng(9).integers(0, 20, (150, 2)), axis=0))
    x = torch.randn(len(cells), 8, generator=torch.Generator().manual_seed(9))
    trains = create_model("querent", in_dim=8, n_outputs=2, kernel="auto")
    trains(x, cells).logits.sum().backward()  # flex would refuse to train on the CPU
    assert all(p.grad is not None for p in trains.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="no backward pass on the CPU"):
        create_model("querent", in_dim=8, n_outputs=2, kernel="flex")(x, cells)


@pytest.mark.slow
def test_the_compiled_cpu_kernel_gives_the_tiled_outputs():
    """Inductor's fused CPU kernel reads the block lists (the reference path does not).

    The default layer (region-shared picks); one compile costs about 10 s, so per-patch picks
    are left to the block-list test above and the gpu tests.
    """
    selection = "region"
    layout, *_ = _bag(6, n_cells=1500, extent=60, region_size=4)
    x = torch.randn(len(layout.region_of_patch), 32, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(8)
    settings = dict(dim=32, heads=2, top_k=3, scorer="learned", selection=selection, local=True)
    tiled = QueryAwareSelfAttention(**settings, distance_bias=True)
    flex = QueryAwareSelfAttention(**settings, distance_bias=True, kernel="flex")
    flex.load_state_dict(tiled.state_dict())
    with torch.no_grad():
        expected, picked = tiled(x, layout)
        out, flex_picked = flex(x, layout)
    assert torch.equal(picked, flex_picked)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
