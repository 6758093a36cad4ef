"""querent.layers.linear: nn.Linear's results and gradients, with oneDNN's matmuls on the CPU."""

import pytest
import torch
from torch import nn

from querent.layers import linear
from querent.layers.linear import Linear, matmul_nt, onednn_applies

needs_onednn = pytest.mark.skipif(
    not linear.HAS_ONEDNN_LINEAR, reason="this PyTorch lacks oneDNN or its linear operator"
)


@pytest.fixture(autouse=True)
def _onednn_route_on(monkeypatch):
    """Test the oneDNN route whatever this machine's processor (it is used on AMD's only)."""
    monkeypatch.setattr(linear, "USE_ONEDNN", linear.HAS_ONEDNN_LINEAR)


def test_onednn_linear_is_found_where_pytorch_has_onednn():
    assert linear.HAS_ONEDNN_LINEAR == torch.backends.mkldnn.is_available()


@pytest.mark.parametrize(
    ("vendor", "override", "expected"),
    [("AuthenticAMD", "", True), ("GenuineIntel", "", False), ("", "", False)]
    + [("GenuineIntel", "1", True), ("AuthenticAMD", "0", False)],
)
def test_onednn_is_chosen_on_amd_processors_unless_overridden(vendor, override, expected):
    assert linear.prefer_onednn(vendor, override) is expected


def test_this_machine_s_vendor_is_read():
    assert linear.cpu_vendor() in ("AuthenticAMD", "GenuineIntel", "")


def _ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("shape", "features"), [((300,), (64, 96)), ((3, 50), (96, 40))])
@pytest.mark.parametrize("grad_rows", [linear.WEIGHT_GRAD_ROWS, 64])  # 64: 3 blocks, one short
def test_forward_and_gradients_equal_nn_linear(bias, shape, features, grad_rows, monkeypatch):
    monkeypatch.setattr(linear, "WEIGHT_GRAD_ROWS", grad_rows)
    torch.manual_seed(0)
    reference = nn.Linear(*features, bias=bias)
    layer = Linear(*features, bias=bias)
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(*shape, features[0])
    weight = torch.randn(*shape, features[1])
    outputs, grads = [], []
    for module in (layer, reference.double()):
        x_leaf = x.to(module.weight.dtype, copy=True).requires_grad_()
        out = module(x_leaf)
        (out * weight.to(out.dtype)).sum().backward()
        outputs.append(out)
        grads.append([x_leaf.grad, *(p.grad for p in module.parameters())])
    assert outputs[0].dtype == torch.float32 and outputs[0].shape == (*shape, features[1])
    torch.testing.assert_close(outputs[0].double(), outputs[1], rtol=1e-5, atol=1e-5)
    for ours, exact in zip(*grads, strict=True):
        assert ours.shape == exact.shape
        torch.testing.assert_close(ours.double(), exact, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_float32_cpu_goes_through_onednn_and_float64_does_not():
    layer = Linear(32, 16)
    x = torch.randn(50, 32, requires_grad=True)
    assert onednn_applies(x)
    assert "mkldnn::_linear_pointwise" in _ops_run(lambda: layer(x).sum().backward())
    double = Linear(32, 16).double()
    x64 = x.detach().double()
    assert not onednn_applies(x64)
    assert "mkldnn::_linear_pointwise" not in _ops_run(lambda: double(x64))
    torch.testing.assert_close(double(x64), nn.functional.linear(x64, double.weight, double.bias))


@needs_onednn
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's flags() says it
def test_disabling_onednn_falls_back_to_pytorch():
    layer = Linear(32, 16)
    x = torch.randn(50, 32)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not onednn_applies(x)
        assert "mkldnn::_linear_pointwise" not in _ops_run(lambda: layer(x))


def test_state_dict_is_nn_linear_s():
    layer = Linear(8, 4)
    assert isinstance(layer, nn.Linear)
    plain = nn.Linear(8, 4)
    plain.load_state_dict(layer.state_dict())
    torch.testing.assert_close(plain(torch.ones(2, 8)), layer(torch.ones(2, 8)))


@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_nt_takes_strided_operands(transposed):
    torch.manual_seed(1)
    a, b = torch.randn(70, 33), torch.randn(45, 33)
    if transposed:  # same values, column-major storage
        a, b = a.T.contiguous().T, b.T.contiguous().T
    bias = torch.randn(45)
    expected = a.double() @ b.double().T + bias.double()
    torch.testing.assert_close(matmul_nt(a, b, bias).double(), expected, rtol=1e-5, atol=1e-5)
