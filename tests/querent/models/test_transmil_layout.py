"""TransMIL's position encoding convolves the patches on their own (compacted) lattice."""

import pytest
import torch

from querent.models import create_model
from querent.models.transmil import compact_cells, lattice_order

IN_DIM = 8


def _model(seed=0):
    torch.manual_seed(seed)
    model = create_model("transmil", in_dim=IN_DIM, n_outputs=3, dim=16, heads=2)
    return model.double().eval()


def _blob():
    """An irregular blob of 61 cells (a disk with two notches) and a 2 x 3 piece far away."""
    disk = [(x, y) for y in range(-5, 6) for x in range(-5, 6) if x * x + y * y <= 20]
    disk = [cell for cell in disk if cell not in {(0, 0), (2, -1), (-4, 1)}]
    piece = [(x, y) for y in range(40, 42) for x in range(90, 93)]
    return torch.tensor(disk + piece, dtype=torch.int64)


def _features(n, seed):
    return torch.randn(
        n, IN_DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def _ppeg_inputs(model, features, cells):
    """The (tokens, compact cells, shape) PPEG receives in a forward pass of the bag."""
    captured = []
    hook = model.ppeg.register_forward_hook(lambda module, args, out: captured.append(args))
    with torch.no_grad():
        model(features, cells)
    hook.remove()
    return captured[0]


def test_compact_cells_drops_empty_rows_and_columns():
    cells = torch.tensor([[5, -3], [6, -3], [20, 7], [5, 8], [-4, 7]])
    compact, shape = compact_cells(cells)
    # occupied columns -4, 5, 6, 20 -> 0..3; occupied rows -3, 7, 8 -> 0..2
    assert shape == (3, 4)
    assert compact.dtype == torch.int64
    assert compact.tolist() == [[1, 0], [2, 0], [3, 1], [1, 2], [0, 1]]


def test_compact_cells_keeps_order_and_ignores_shifts():
    cells = _blob()
    compact, shape = compact_cells(cells)
    for axis in (0, 1):
        # same order along each axis: a strictly monotone renumbering
        before, after = cells[:, axis], compact[:, axis]
        assert torch.equal(torch.sign(before[:, None] - before), torch.sign(after[:, None] - after))
        # every compact row and column holds a patch
        assert set(after.tolist()) == set(range(shape[1 - axis]))
    assert torch.equal(lattice_order(compact), lattice_order(cells))
    shifted, shifted_shape = compact_cells(cells + torch.tensor([-1000, 37]))
    assert torch.equal(shifted, compact) and shifted_shape == shape
    # the far piece sits right next to the disk: the bounding box drops from 98 x 47
    assert shape == (9 + 2, 9 + 3)


def test_compact_cells_of_one_patch():
    compact, shape = compact_cells(torch.tensor([[-7, 12]]))
    assert compact.tolist() == [[0, 0]] and shape == (1, 1)


def test_ppeg_convolves_the_dense_lattice():
    # on a piece without empty rows or columns the compact grid is the slide's own grid
    model = _model()
    cells = _blob()[:-6]
    features = _features(len(cells), seed=1)
    tokens, compact, shape = _ppeg_inputs(model, features, cells)
    order = lattice_order(cells)
    assert torch.equal(compact, cells[order] - cells.min(0).values)
    grid = torch.zeros(1, 16, *shape, dtype=torch.float64)
    grid[0, :, compact[:, 1], compact[:, 0]] = tokens[0, 1:].T
    with torch.no_grad():
        expected = grid + sum(conv(grid) for conv in model.ppeg.convs)
        out = model.ppeg(tokens, compact, shape)
    torch.testing.assert_close(out[0, 1:], expected[0, :, compact[:, 1], compact[:, 0]].T)
    assert torch.equal(out[0, 0], tokens[0, 0])


@pytest.mark.parametrize("patch", [0, 30, 55, 61])
def test_ppeg_mixes_lattice_neighbours_only(patch):
    model = _model()
    cells = _blob()
    features = _features(len(cells), seed=2)
    tokens, compact, shape = _ppeg_inputs(model, features, cells)
    perturbed = tokens.clone()
    perturbed[0, 1 + patch] += torch.randn(16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        changed = model.ppeg(perturbed, compact, shape) != model.ppeg(tokens, compact, shape)
    changed = changed[0].any(dim=1)
    assert not changed[0]  # the class token passes through
    distance = (compact - compact[patch]).abs().amax(dim=1)
    assert torch.equal(changed[1:], distance <= 3)


def test_permuting_the_patches_permutes_attention_and_keeps_logits():
    model = _model()
    cells = _blob()
    features = _features(len(cells), seed=4)
    perm = torch.randperm(len(cells), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(features, cells)
        shuffled = model(features[perm], cells[perm])
    torch.testing.assert_close(shuffled.logits, out.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(shuffled.attention, out.attention[perm], rtol=0, atol=1e-5)
    torch.testing.assert_close(shuffled.embedding, out.embedding, rtol=0, atol=1e-5)


@pytest.mark.parametrize("offset", [(3, 0), (-50, 17), (1000, -1000)])
def test_translating_all_cells_changes_nothing(offset):
    model = _model()
    cells = _blob()
    features = _features(len(cells), seed=6)
    with torch.no_grad():
        out = model(features, cells)
        moved = model(features, cells + torch.tensor(offset))
    torch.testing.assert_close(moved.logits, out.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(moved.attention, out.attention, rtol=0, atol=1e-5)


def test_the_layout_is_seen_not_just_the_order():
    # a line and a 6 x 6 square have the same row-major order, so only the 2D layout differs
    model = _model()
    index = torch.arange(36)
    line = torch.stack([index, torch.zeros_like(index)], dim=1)
    square = torch.stack([index % 6, index // 6], dim=1)
    assert torch.equal(lattice_order(line), lattice_order(square))
    features = _features(36, seed=7)
    with torch.no_grad():
        along_line = model(features, line)
        in_square = model(features, square)
    assert not torch.allclose(along_line.logits, in_square.logits, atol=1e-4)
    assert not torch.allclose(along_line.attention, in_square.attention, atol=1e-6)
