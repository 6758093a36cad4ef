"""How much of full attention FlexAttention's block mask computes, by mask block size.

The picks of one attention layer (width 256, 4 heads, regions of 4 x 4 cells, k = 8, random
initial weights) on a disk of tissue; for each (query, key) block size, the block mask
:class:`querent.layers.flex.RegionSequence` builds from them. Columns: ``computed_share``, the
scores the listed blocks hold against the n² of full attention (per head); ``used_share``,
the share of those scores a query actually reads (the rest is masked inside its block). Both
are counts, the same on any device: they bound what the GPU kernel can gain before its speed is
measured (``bench_gpu_attention.py``).

    python benchmarks/bench_flex_blocks.py [--sizes 32768 131072] [--blocks 128x128 64x16 16x16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
from bench_attention import disk_of_cells
from bench_gpu_attention import DEFAULT, DIM, HEADS, PAPER, REGION, TOP_K

from querent.data.grid import build_grid
from querent.layers.attention import QueryAwareSelfAttention
from querent.layers.flex import RegionSequence
from querent.layers.regions import RegionLayout

HERE = Path(__file__).resolve().parent
LAYERS = {"default (region-shared)": DEFAULT, "paper (per patch)": PAPER}


def picks_of(settings: dict, layout: RegionLayout, n: int) -> tuple[torch.Tensor, bool]:
    """(h, g, k) picks per patch or per region (``n_regions``: none), and whether per patch."""
    torch.manual_seed(0)
    layer = QueryAwareSelfAttention(dim=DIM, heads=HEADS, top_k=TOP_K, **settings)
    with torch.no_grad():
        _, selected = layer(torch.randn(n, DIM), layout)
    selected = selected.masked_fill(selected < 0, layout.n_regions)
    if settings["selection"] == "patch":
        return selected, True
    per_region = selected.new_empty(HEADS, layout.n_regions, selected.shape[2])
    per_region[:, layout.region_of_patch] = selected
    return per_region, False


def shares(layout: RegionLayout, picks: torch.Tensor, per_patch: bool, blocks: str) -> dict:
    q_block, kv_block = (int(side) for side in blocks.split("x"))
    sequence = RegionSequence(layout, picks, per_patch=per_patch, block_size=(q_block, kv_block))
    counts, *_ = sequence.block_lists()
    computed = int(counts.sum()) * q_block * kv_block
    keys = torch.cat([layout.valid.sum(dim=1), layout.valid.new_zeros(1, dtype=torch.long)])
    read = keys[picks].sum(dim=2)  # (h, g) keys each query (group) reads
    if not per_patch:  # every patch of a region reads its region's picks
        read = read * layout.valid.sum(dim=1)
    n = len(layout.region_of_patch)
    return {"computed_share": computed / (HEADS * n * n), "used_share": int(read.sum()) / computed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--blocks", nargs="+", default=["128x128", "128x16", "64x16", "16x16"])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_flex_blocks.json")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        cells = disk_of_cells(n)
        layout = RegionLayout.from_grid(build_grid(cells.numpy(), 1, REGION))
        for name, settings in LAYERS.items():
            picks, per_patch = picks_of(settings, layout, n)
            for blocks in args.blocks:
                rows.append({"layer": name, "n": n, "blocks": blocks,
                             **shares(layout, picks, per_patch, blocks)})  # fmt: skip
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="{:.4f}".format))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".json.partial")
    partial.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    partial.replace(args.out)


if __name__ == "__main__":
    main()
