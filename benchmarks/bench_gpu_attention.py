"""Querent's attention layer on the GPU against full attention through FlashAttention.

One attention layer (width 256, 4 heads, bf16 autocast as training runs), forward and backward,
on a disk of tissue of N patches (regions of 4 x 4 cells, k = 8). Variants:

- ``full flash``: dense ``scaled_dot_product_attention`` held to the FlashAttention backend;
- ``querent flex``: the default Querent layer (regions share their picks, own and adjacent
  regions, distance bias, learned scorer) on the block-sparse FlexAttention kernel;
- ``querent tiled``: the same layer on the gather kernels written for the CPU (the GPU path
  before FlexAttention);
- ``paper flex`` and ``paper tiled``: the paper's layer (every patch picks its own regions, no
  local regions, no distance bias) on either kernel.

FlexAttention variants run once per ``--blocks`` size of the mask's blocks (the row names it).

Each step's milliseconds are the median of ``--repeats`` timed steps after two warm-ups (the
first compiles the kernels); peak memory is the most allocated during the step, inputs and
weights included. A variant stops growing N where its next step would take longer than
``--step-limit-s`` (scaled from the last: quadratic for full attention, N^1.2 for Querent).
Goals (issue 25): querent flex faster than full attention from 32k patches, at least 5x
faster at 256k, at most 1 GB at 100k.

    python benchmarks/bench_gpu_attention.py [--sizes 8192 32768 100000 262144 524288]
        [--variants ...] [--blocks 64x16 128x128] [--repeats 3]
        [--out benchmarks/results/gpu_attention.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from bench_attention import disk_of_cells
from torch.nn.attention import SDPBackend, sdpa_kernel

from querent.data.grid import build_grid
from querent.layers import flex
from querent.layers.attention import DenseSelfAttention, QueryAwareSelfAttention
from querent.layers.regions import RegionLayout

HERE = Path(__file__).resolve().parent
DIM, HEADS, REGION, TOP_K = 256, 4, 4, 8
BLOCKS = "x".join(map(str, flex.BLOCK_SIZE))  # the default mask blocks
DEFAULT = {"selection": "region", "local": True, "distance_bias": True, "scorer": "learned"}
PAPER = {"selection": "patch", "local": False, "distance_bias": False, "scorer": "learned"}
VARIANTS = {
    "full flash": None,
    "querent flex": {**DEFAULT, "kernel": "flex"},
    "querent tiled": {**DEFAULT, "kernel": "tiled"},
    "paper flex": {**PAPER, "kernel": "flex"},
    "paper tiled": {**PAPER, "kernel": "tiled"},
}


def make_layer(variant: str, device: torch.device) -> torch.nn.Module:
    settings = VARIANTS[variant]
    if settings is None:
        return DenseSelfAttention(dim=DIM, heads=HEADS, head_dim=None).to(device)
    return QueryAwareSelfAttention(dim=DIM, heads=HEADS, top_k=TOP_K, **settings).to(device)


def step(layer, x, layout, device: torch.device) -> None:
    """One forward and backward pass of the layer under bf16 autocast."""
    flash = sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if device.type == "cuda" else None
    with torch.autocast(device.type, dtype=torch.bfloat16), flash or contextlib.nullcontext():
        out, _ = layer(x, layout)
    out.float().square().mean().backward()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(variant: str, n: int, device: torch.device, repeats: int, blocks: str) -> dict:
    """Milliseconds per step (median) and peak GB of one variant at ``n`` patches.

    ``blocks`` (``QxKV``): FlexAttention's mask blocks of Q x KV positions (flex variants).
    """
    flex.BLOCK_SIZE = tuple(int(side) for side in blocks.split("x"))
    cells = disk_of_cells(n)
    layout = RegionLayout.from_grid(build_grid(cells.numpy(), 1, REGION), device)
    torch.manual_seed(0)
    layer = make_layer(variant, device)
    x = torch.randn(n, DIM, device=device, requires_grad=True)
    for _ in range(2):
        step(layer, x, layout, device)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        start = time.perf_counter()
        step(layer, x, layout, device)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "variant": f"{variant} {blocks}" if "flex" in variant else variant,
        "n": n,
        "ms": 1e3 * statistics.median(seconds),
        "peak_gb": peak,
    }


def goals(rows: list[dict]) -> list[dict]:
    """Issue 25's goals for ``querent flex``, from the rows that reached its sizes."""
    by = {(row["variant"], row["n"]): row for row in rows if "error" not in row}
    out = []
    for n in sorted({row["n"] for row in rows}):
        flex, full = by.get((f"querent flex {BLOCKS}", n)), by.get(("full flash", n))
        if flex and full and n >= 32768:
            speedup = full["ms"] / flex["ms"]
            need = 5.0 if n >= 262144 else 1.0
            out.append({"goal": f"faster than full at {n} (x{need:g})", "value": speedup,
                        "met": speedup >= need})  # fmt: skip
    flex = by.get((f"querent flex {BLOCKS}", 100000))
    if flex and flex["peak_gb"] is not None:
        out.append({"goal": "peak <= 1 GB at 100000", "value": flex["peak_gb"],
                    "met": flex["peak_gb"] <= 1.0})  # fmt: skip
    return out


def write(out: Path, device: str, rows: list[dict]) -> dict:
    """Write the rows so far and their goals (after every row: a run cut short keeps them)."""
    result = {"benchmark": "attention", "device": device, "rows": rows, "goals": goals(rows)}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[8192, 32768, 100000, 262144, 524288]
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--blocks", nargs="+", default=[BLOCKS], help="flex mask blocks, QxKV")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-limit-s", type=float, default=4.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_attention.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    runs = [
        (variant, blocks)
        for variant in args.variants
        for blocks in (args.blocks if "flex" in variant else [BLOCKS])
    ]
    for variant, blocks in runs:
        if device.type != "cuda" and "flex" in variant:
            print(f"{variant}: skipped (FlexAttention has no backward pass on the CPU)")
            continue
        growth = 2.0 if VARIANTS[variant] is None else 1.2  # full attention is quadratic
        sizes = sorted(args.sizes)
        for n, following in zip(sizes, [*sizes[1:], None], strict=True):
            try:
                row = measure(variant, n, device, args.repeats, blocks)
            except Exception as err:  # out of memory, a kernel that fails to compile: go on
                rows.append({"variant": f"{variant} {blocks}", "n": n, "error": repr(err)[:500]})
                write(args.out, name, rows)
                print(f"{variant} {blocks} at {n}: failed ({err!r:.300}); next variant")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                break
            rows.append(row)
            write(args.out, name, rows)
            peak = "-" if row["peak_gb"] is None else f"{row['peak_gb']:.2f}"
            print(f"{row['variant']:20s} {n:>7d}  {row['ms']:10.1f} ms  peak {peak} GB", flush=True)
            if following and row["ms"] / 1e3 * (following / n) ** growth > args.step_limit_s:
                print(f"{row['variant']}: {following} and up skipped (a step would take too long)")
                break
    for goal in write(args.out, name, rows)["goals"]:
        print(f"{'met ' if goal['met'] else 'MISS'} {goal['goal']}: {goal['value']:.2f}")


if __name__ == "__main__":
    main()
