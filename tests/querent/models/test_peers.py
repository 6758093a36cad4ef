"""torchmil's models behind our surface: the lattice graph, checkpoints, the workflow's trainer."""

import pandas as pd
import pytest
import torch

from querent.engine.evaluate import load_model
from querent.models import create_model
from querent.models.peers import lattice_adjacency
from tests.helpers import synthetic_fold

PEERS = {
    "patchgcn": {"n_gcn_layers": 2, "hidden_dim": 16, "att_dim": 8},
    "smabmil": {"att_dim": 8},
    "camil": {"nystrom_att_dim": 16, "pool_att_dim": 8, "n_heads": 2},
    "torchmil_transmil": {"att_dim": 32, "n_heads": 4},
}


def test_the_lattice_graph_is_the_8_neighbourhood_symmetrically_normalised():
    # a full 3 x 3 block and one patch two cells away from it
    cells = torch.tensor([[x, y] for y in range(3) for x in range(3)] + [[5, 1]])
    adjacency = lattice_adjacency(cells, torch.float64).to_dense()[0]
    degree = (adjacency > 0).sum(1)
    assert degree.tolist() == [3, 5, 3, 5, 8, 5, 3, 5, 3, 0]
    torch.testing.assert_close(adjacency, adjacency.T)
    expected = 1 / (degree[0] * degree[4]).double().sqrt()
    assert adjacency[0, 4] == pytest.approx(float(expected))
    assert adjacency[0, 2] == 0  # two cells apart: not neighbours
    assert lattice_adjacency(torch.tensor([[4, 4]])).to_dense().tolist() == [[[1.0]]]


@pytest.mark.parametrize("arch", list(PEERS))
def test_a_checkpoint_loads_weights_only_and_predicts_the_same(arch, tmp_path):
    torch.manual_seed(0)
    model = create_model(arch, in_dim=12, n_outputs=2, **PEERS[arch]).eval()
    torch.save({"state": model.state_dict()}, tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)["state"]
    torch.manual_seed(1)  # other initial weights, replaced by the checkpoint's
    loaded = create_model(arch, in_dim=12, n_outputs=2, **PEERS[arch]).eval()
    loaded.load_state_dict(state)
    features = torch.randn(50, 12)
    cells = torch.stack([torch.arange(50) % 10, torch.arange(50) // 10], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(features, cells).logits, model(features, cells).logits)


def test_torchmil_defaults_are_kept_unless_given():
    model = create_model("patchgcn", in_dim=12, n_outputs=2)
    assert len(model.network.gcn_layers) == 4  # torchmil's n_gcn_layers default
    assert model.head.in_features == 12  # its hidden_dim default: the feature size
    camil = create_model("camil", in_dim=12, n_outputs=2, nystrom_att_dim=16)
    attention = camil.network.nystrom_transformer_layer.att_module
    assert attention.n_landmarks == 8  # half the width, where torchmil 1.0.2 leaves None


def test_bad_arguments_are_torchmils_or_the_signatures():
    with pytest.raises(TypeError, match="hiden_dim"):
        create_model("patchgcn", in_dim=12, n_outputs=2, hiden_dim=8)


def test_a_peer_trains_through_the_workflows_trainer_and_loads_back(synthetic_cohort, tmp_path):
    from querent.engine.runs import model_run
    from querent.engine.train import train_fold

    cohort, files, train, val, _ = synthetic_fold(synthetic_cohort)
    run = model_run("pgcn", {"arch": "patchgcn", **PEERS["patchgcn"]}, {"epochs": 2})
    path = train_fold(run, cohort, files, train, val, tmp_path, encoder="synthetic", fold=0)
    model, task, _ = load_model(path)
    assert model.network.__class__.__name__ == "PatchGCN" and task.classes == ("neg", "pos")
    history = pd.read_csv(tmp_path / "history.csv")
    assert len(history) == 2 and history["train_loss"].notna().all()
