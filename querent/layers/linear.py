"""Linear layers whose float32 matmuls on the CPU run through oneDNN rather than MKL.

PyTorch sends float32 matmuls on the CPU to MKL, whose kernels on AMD processors are its AVX2
ones. On one core of the benchmark machine (AMD EPYC, Zen 5) a model's matmuls ran at about
90 GFLOP/s there, and at 200 to 240 through oneDNN, which PyTorch ships too and which picks
its AVX-512 kernels by the processor's features alone. The arithmetic is the same (float32
products and sums, no reduced precision); only the order of the sums may differ.

On Intel processors MKL is the faster route, and oneDNN caches a primitive per input shape, so
bags of varying size cost it memory: on a 2-core Intel Xeon, 40 training steps on bags of 1,000
to 2,000 patches took ABMIL 0.38 s through oneDNN and 0.28 s through MKL, Querent 1.79 s and
1.04 s, and oneDNN's process peaked 190 to 500 MB higher. So oneDNN is used on AMD processors
only (:data:`USE_ONEDNN`; ``QUERENT_ONEDNN=1`` or ``0`` in the environment overrides).

Elsewhere (GPU, other dtypes, a PyTorch built without oneDNN) everything is PyTorch's own.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

#: This PyTorch has oneDNN and its linear operator (the one Inductor's CPU backend calls).
HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise"
)


def cpu_vendor() -> str:
    """The processor's vendor id (``AuthenticAMD``, ``GenuineIntel``), "" where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def prefer_onednn(vendor: str, override: str = "") -> bool:
    """Whether to use oneDNN: on AMD processors (faster there, slower on Intel's).

    ``override`` (the value of ``QUERENT_ONEDNN``), "1" or "0", decides instead where set.
    """
    return {"1": True, "0": False}.get(override, vendor == "AuthenticAMD")


#: Float32 CPU matmuls go through oneDNN (where this PyTorch has its linear operator).
USE_ONEDNN = HAS_ONEDNN_LINEAR and prefer_onednn(cpu_vendor(), os.environ.get("QUERENT_ONEDNN", ""))


def onednn_applies(tensor: torch.Tensor) -> bool:
    """True where :func:`matmul_nt` of ``tensor`` runs through oneDNN (float32 on the CPU)."""
    return (
        USE_ONEDNN
        and tensor.device.type == "cpu"
        and tensor.dtype == torch.float32
        and torch.backends.mkldnn.enabled
    )


def matmul_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T + bias`` for (m, e) and (n, e) -> (m, n)."""
    if onednn_applies(a) and b.dtype == a.dtype:
        return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")
    return nn.functional.linear(a, b, bias)


#: Rows of the input per matmul of the weight gradient: oneDNN copies its transposed first
#: operand, so whole inputs would add a copy of (n, features) to peak memory.
WEIGHT_GRAD_ROWS = 8192


def _weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad.T @ x``, the copied operand being the narrower of the two."""
    if grad.shape[1] <= x.shape[1]:
        return matmul_nt(grad.T, x.T)
    return matmul_nt(x.T, grad.T).T


class _OneDnnLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` on 2-D ``x``, forward and backward through :func:`matmul_nt`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return matmul_nt(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = matmul_nt(grad, weight.T)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight)
            for start in range(0, len(x), WEIGHT_GRAD_ROWS):
                rows = slice(start, start + WEIGHT_GRAD_ROWS)
                grad_weight += _weight_grad(grad[rows], x[rows])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=0)
        return grad_x, grad_weight, grad_bias


class Linear(nn.Linear):
    """:class:`torch.nn.Linear`, through oneDNN on float32 CPU inputs (same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        autocast = torch.is_autocast_enabled("cpu")
        if autocast or not onednn_applies(x) or self.weight.dtype != x.dtype:
            return super().forward(x)
        out = _OneDnnLinear.apply(x.reshape(-1, x.shape[-1]), self.weight, self.bias)
        return out.view(*x.shape[:-1], out.shape[-1])
