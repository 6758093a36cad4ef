"""The surface every registered model shares: shapes, invariances, masks, gradients."""

import pytest
import torch

from querent.data.grid import build_grid
from querent.models import create_model, list_models
from querent.models.registry import argument_problems

IN_DIM, N_CLASSES = 12, 3
#: case id -> (registered name, constructor settings); small sizes, every model covered.
CASES = {
    "abmil": ("abmil", {"dim": 16, "attention_dim": 8}),
    "mean_pool": ("mean_pool", {"dim": 16}),
    "max_pool": ("max_pool", {"dim": 16}),
    # 32 features give 16 Nyström landmarks, so bags of 40 patches average tokens per landmark
    "transmil": ("transmil", {"dim": 32, "heads": 4}),
    "full_attention": ("full_attention", {"dim": 16, "heads": 2, "depth": 2}),
    "querent-quest": (
        "querent",
        {"dim": 16, "heads": 2, "region_size": 2, "top_k": 2, "scorer": "quest"},
    ),
    "querent-learned": (
        "querent",
        {"dim": 16, "heads": 2, "region_size": 3, "top_k": 2, "scorer": "learned"},
    ),
    "querent-mean-region": (
        "querent",
        {
            "dim": 16,
            "heads": 2,
            "region_size": 2,
            "top_k": 3,
            "scorer": "mean",
            "selection": "region",
        },
    ),
    "querent-learned-region-positional": (
        "querent",
        {
            "dim": 16,
            "heads": 2,
            "depth": 2,
            "region_size": 2,
            "top_k": 2,
            "scorer": "learned",
            "selection": "region",
            "positional": "absolute",
        },
    ),
    # the geometry options: slide-relative positions, local regions, another region summary
    "querent-local-relative": (
        "querent",
        {
            "dim": 16,
            "heads": 2,
            "region_size": 2,
            "top_k": 2,
            "scorer": "learned",
            "local": True,
            "positional": "relative",
        },
    ),
    "querent-local-region-meanstd": (
        "querent",
        {
            "dim": 16,
            "heads": 2,
            "region_size": 3,
            "top_k": 1,
            "selection": "region",
            "local": True,
            "summary": "meanstd",
        },
    ),
    "full_attention-relative": (
        "full_attention",
        {"dim": 16, "heads": 2, "positional": "relative"},
    ),
    "neighbour_abmil": ("neighbour_abmil", {"dim": 16, "attention_dim": 8}),
    "local_window": ("local_window", {"dim": 16, "heads": 2, "region_size": 3}),
    # torchmil's context-aware models through querent.models.peers
    "patchgcn": ("patchgcn", {"n_gcn_layers": 2, "hidden_dim": 16, "att_dim": 8}),
    "smabmil": ("smabmil", {"att_dim": 8}),
    "camil": ("camil", {"nystrom_att_dim": 16, "pool_att_dim": 8, "n_heads": 2}),
    "torchmil_transmil": ("torchmil_transmil", {"att_dim": 32, "n_heads": 4}),
}
MODELS = list(CASES)
#: Parameters a model builds but never uses: torchmil's transformer layers make the LayerNorm
#: of their MLP even when the MLP is off (``use_mlp=False``, their default).
UNUSED = {
    "camil": ("norm2.weight", "norm2.bias"),
    "torchmil_transmil": ("norm2.weight", "norm2.bias"),
}


def test_every_registered_model_is_covered():
    assert {name for name, _ in CASES.values()} == set(list_models())


def _model(case, seed=0):
    name, settings = CASES[case]
    torch.manual_seed(seed)
    model = create_model(name, in_dim=IN_DIM, n_outputs=N_CLASSES, **settings)
    return model.double().eval()


def _bag(n, seed):
    """n patches with random features on distinct cells of a 30 x 30 lattice."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, IN_DIM, generator=g, dtype=torch.float64)
    flat = torch.randperm(900, generator=g)[:n]
    return features, torch.stack([flat % 30, flat // 30], dim=1)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n", [1, 5, 40])
def test_output_shapes(name, n):
    model = _model(name)
    out = model(*_bag(n, seed=n))
    assert out.logits.shape == (N_CLASSES,)
    assert out.embedding.shape == (CASES[name][1].get("dim", model.head.in_features),)
    assert out.attention.shape == (n,)
    if CASES[name][0] in ("querent", "local_window"):
        assert out.selected.shape[:2] == (CASES[name][1]["heads"], n)
        assert out.region_of_patch.shape == (n,)
    else:
        assert out.selected is None and out.region_of_patch is None


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("n", "seed"), [(2, 0), (17, 1), (40, 2), (150, 3)])
def test_patch_permutation_permutes_attention_and_keeps_logits(name, n, seed):
    model = _model(name)
    features, cells = _bag(n, seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 100))
    with torch.no_grad():
        out = model(features, cells)
        shuffled = model(features[perm], cells[perm])
    torch.testing.assert_close(shuffled.logits, out.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(shuffled.attention, out.attention[perm], rtol=0, atol=1e-6)


def test_transmil_depends_on_lattice_layout():
    # the position encoding sees the row-major lattice order, so moving patches matters
    model = _model("transmil")
    features, cells = _bag(40, seed=4)
    with torch.no_grad():
        out = model(features, cells)
        moved = model(features, cells.flip(0))
    assert not torch.allclose(out.logits, moved.logits, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_padding_with_mask_equals_no_padding(name):
    model = _model(name)
    features, cells = _bag(30, seed=5)
    junk_features, junk_cells = _bag(12, seed=6)
    padded_features = torch.cat([features, 1e3 * junk_features])
    padded_cells = torch.cat([cells, junk_cells])
    mask = torch.cat([torch.ones(30, dtype=torch.bool), torch.zeros(12, dtype=torch.bool)])
    shuffle = torch.randperm(42, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model(features, cells)
        padded = model(padded_features[shuffle], padded_cells[shuffle], mask[shuffle])
    torch.testing.assert_close(padded.logits, out.logits, rtol=0, atol=1e-6)
    attention = torch.zeros(42, dtype=torch.float64)
    attention[shuffle] = padded.attention
    torch.testing.assert_close(attention[:30], out.attention, rtol=0, atol=1e-6)
    assert (attention[30:] == 0).all()


@pytest.mark.parametrize("name", MODELS)
def test_a_precomputed_grid_equals_the_built_one(name):
    model = _model(name)
    features, cells = _bag(40, seed=8)
    grid = None
    if model.region_size is not None:
        grid = build_grid(cells.numpy(), 1, model.region_size)
    with torch.no_grad():
        out = model(features, cells)
        given = model(features, cells, grid=grid)
    torch.testing.assert_close(given.logits, out.logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_centred_cells_work_like_shifted_ones(name):
    # A centred lattice has negative cells; shifting by whole regions changes nothing.
    model = _model(name)
    features, cells = _bag(40, seed=9)
    centred = cells - 12
    with torch.no_grad():
        out = model(features, cells)
        shifted = model(features, centred)
    if name == "transmil" or CASES[name][1].get("positional") == "absolute":
        assert torch.isfinite(shifted.logits).all()  # they see absolute positions
    else:  # slide-relative positions are computed in float32
        atol = 1e-6 if CASES[name][1].get("positional") == "relative" else 1e-9
        torch.testing.assert_close(shifted.logits, out.logits, rtol=0, atol=atol)


def test_cells_must_be_integers_and_grids_must_fit():
    model = _model("querent-quest")
    features, cells = _bag(10, seed=10)
    with pytest.raises(TypeError, match="integer"):
        model(features, cells.double())
    with pytest.raises(ValueError, match="region_size 2"):
        model(features, cells, grid=build_grid(cells.numpy(), 1, 3))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n", [1, 7, 40])
def test_attention_is_a_distribution_over_real_patches(name, n):
    model = _model(name)
    features, cells = _bag(n + 3, seed=n)
    mask = torch.ones(n + 3, dtype=torch.bool)
    mask[[0, n // 2, -1]] = False
    with torch.no_grad():
        attention = model(features, cells, mask).attention
    assert (attention >= 0).all()
    assert (attention[~mask] == 0).all()
    assert attention.sum().item() == pytest.approx(1.0, abs=1e-9)


def test_mean_pool_attention_is_uniform():
    with torch.no_grad():
        attention = _model("mean_pool")(*_bag(10, seed=8)).attention
    torch.testing.assert_close(attention, torch.full((10,), 0.1, dtype=torch.float64))


def test_max_pool_attention_shares_tied_channels():
    model = create_model("max_pool", in_dim=3, n_outputs=2, dim=3).double()
    with torch.no_grad():
        model.embed[0].weight.copy_(torch.eye(3))
        model.embed[0].bias.zero_()
        features = torch.tensor([[5.0, 0.0, -1.0], [1.0, 2.0, -2.0], [5.0, 1.0, -3.0]])
        attention = model(features.double(), torch.tensor([[0, 0], [1, 0], [2, 0]])).attention
    # after ReLU: channel 0 tied by patches 0 and 2, channel 1 won by patch 1, channel 2 all 0
    expected = torch.tensor([(1 / 2 + 1 / 3) / 3, (1 + 1 / 3) / 3, (1 / 2 + 1 / 3) / 3])
    torch.testing.assert_close(attention, expected.double())


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    # Querent's learned scorer included: its scores reach the loss through the straight-through
    # term on the attention logits. TransMIL included: only the class token feeds the head, but
    # in the last layer it attends to every token through queries, keys and values, and the
    # value-residual convolution reaches it from neighbouring tokens, so no parameter is
    # legitimately gradient-free.
    model = _model(name).train()
    features, cells = _bag(40, seed=9)
    out = model(features, cells)
    torch.nn.functional.cross_entropy(out.logits[None], torch.tensor([1])).backward()
    for param_name, param in model.named_parameters():
        if param_name.endswith(UNUSED.get(CASES[name][0], ())):
            assert param.grad is None, param_name
            continue
        assert param.grad is not None, param_name
        assert param.grad.abs().sum() > 0, param_name


#: Settings each model's constructor refuses (the sizes in_dim and n_outputs included).
BAD_SETTINGS = [
    ("abmil", {"dim": 0}),
    ("abmil", {"attention_dim": 0}),
    ("abmil", {"dropout": 1.0}),
    ("abmil", {"dropout": -0.1}),
    ("mean_pool", {"dim": 0}),
    ("max_pool", {"dropout": 1.5}),
    ("transmil", {"dim": 30, "heads": 4}),
    ("transmil", {"heads": 0}),
    ("transmil", {"dim": 1, "heads": 1}),
    ("transmil", {"dropout": 1.0}),
    ("abmil", {"in_dim": 0}),
    ("transmil", {"n_outputs": 0}),
    ("querent", {"top_k": 0, "local": False}),
    ("querent", {"region_size": 0}),
    ("querent", {"scorer": "best"}),
    ("querent", {"selection": "slide"}),
    ("querent", {"dim": 18, "heads": 2, "positional": "absolute"}),
    ("querent", {"depth": 0}),
    ("full_attention", {"dim": 2, "heads": 4}),
]


@pytest.mark.parametrize(("name", "kwargs"), BAD_SETTINGS)
def test_bad_settings_raise(name, kwargs):
    settings = {"in_dim": IN_DIM, "n_outputs": N_CLASSES} | kwargs
    with pytest.raises(ValueError):
        create_model(name, **settings)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [(name, kwargs) for name, kwargs in BAD_SETTINGS if not {"in_dim", "n_outputs"} & set(kwargs)],
)
def test_the_plan_time_check_refuses_what_the_constructor_refuses(name, kwargs):
    """Planning runs each model's own checks, without building it, naming the argument."""
    problems = argument_problems(name, kwargs)
    assert problems and all(problem.split(":")[0] in kwargs for problem in problems), problems


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        *((CASES[case][0], CASES[case][1]) for case in CASES),
        ("querent", {"top_k": 0}),  # the default local: true makes it the local window
        ("querent", {"top_k": None, "dropout": 0}),  # null: all regions; an int for a float
        ("local_window", {"region_size": 2}),
    ],
)
def test_the_plan_time_check_accepts_what_the_constructor_builds(name, kwargs):
    assert argument_problems(name, kwargs) == []
    create_model(name, in_dim=IN_DIM, n_outputs=N_CLASSES, **kwargs)


def test_the_plan_time_check_names_the_argument_and_the_rule():
    assert argument_problems("querent", {"region_size": 0}) == ["region_size: must be >= 1 (got 0)"]
    (top_k,) = argument_problems("querent", {"top_k": 0, "local": False})
    assert top_k.startswith("top_k: must be >= 1") and "got 0 without local" in top_k
    assert argument_problems("querent", {"region_size": "4", "local": 1}) == [
        "region_size: must be int (got '4' of type str)",
        "local: must be bool (got 1 of type int)",
    ]


@pytest.mark.parametrize("name", MODELS)
def test_constructor_is_keyword_only(name):
    with pytest.raises(TypeError):
        type(_model(name))(IN_DIM, N_CLASSES)


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ValueError, match="abmil.*querent"):
        create_model("qerent", in_dim=IN_DIM, n_outputs=N_CLASSES)
