"""The FlexAttention kernel on CUDA gives the tiled kernel's outputs and gradients (needs a GPU)."""

import numpy as np
import pytest
import torch

from querent.data.grid import build_grid
from querent.layers.attention import QueryAwareSelfAttention
from querent.layers.regions import RegionLayout
from querent.models import create_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _bag(n_cells: int, extent: int, region_size: int, dim: int):
    rng = np.random.default_rng(0)
    cells = np.unique(rng.integers(0, extent, size=(n_cells, 2)), axis=0)
    layout = RegionLayout.from_grid(build_grid(cells, 1, region_size), "cuda")
    x = torch.randn(len(cells), dim, generator=torch.Generator().manual_seed(1)).cuda()
    return cells, layout, x


def _pair(selection: str, dim: int, **settings):
    torch.manual_seed(2)
    common = dict(dim=dim, heads=4, top_k=8, selection=selection, **settings)
    tiled = QueryAwareSelfAttention(**common, kernel="tiled").cuda()
    flex = QueryAwareSelfAttention(**common, kernel="flex").cuda()
    flex.load_state_dict(tiled.state_dict())
    return tiled, flex


@pytest.mark.parametrize("selection", ["patch", "region"])
@pytest.mark.parametrize("scorer", ["learned", "quest"])
def test_flex_gives_the_tiled_outputs_and_gradients_in_fp32(selection, scorer):
    _, layout, x = _bag(6000, 120, 4, 64)
    tiled, flex = _pair(selection, 64, scorer=scorer, local=True, distance_bias=True)
    expected, picked = tiled(x, layout)
    out, flex_picked = flex(x, layout)
    assert torch.equal(picked, flex_picked)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), list(flex.parameters()))
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(tiled.parameters()))
    for (name, _), grad, want in zip(flex.named_parameters(), grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-3, atol=1e-5, msg=name)


def test_flex_in_bf16_stays_near_fp32_at_tens_of_thousands_of_patches():
    _, layout, x = _bag(40000, 260, 4, 256)
    tiled, flex = _pair("region", 256, local=True, distance_bias=True)
    with torch.no_grad():
        expected, _ = tiled(x, layout)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, _ = flex(x, layout)
    error = torch.linalg.norm(out.float() - expected) / torch.linalg.norm(expected)
    assert error < 2e-2


def test_the_default_querent_trains_a_step_with_kernel_auto_on_cuda():
    cells, _, x = _bag(5000, 100, 4, 32)
    model = create_model("querent", in_dim=32, n_outputs=2, kernel="auto").cuda()
    cells = torch.as_tensor(cells).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x, cells).logits
    loss = torch.nn.functional.cross_entropy(logits.float()[None], torch.tensor([1]).cuda())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.blocks[0].attention.scorer is not None
