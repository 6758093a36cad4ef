"""Querent vs full attention: forward+backward time, peak memory and approximation error.

One whole model per run (input 1024 features, model 256, 4 heads, regions of 4 x 4 cells,
k = 8, one block, gated attention pooling, cross-entropy on the logits), at N = 2k, 8k, 32k
and 128k patches on a disk of tissue. Variants:

- ``querent fast``: regions share a selection (``selection="region"``);
- ``querent faithful``: every patch selects its own regions (the paper's), learned scorer;
- ``faithful quest``: per-patch selection with the ``quest`` scorer, whose exact top k is found
  by bounding 2 x 2 groups of regions or, where bounds cannot prune, by scoring every region
  into reused buffers and ranking groups of regions first (:mod:`querent.layers.pruning`); its
  selections are checked against scoring every region on two runs of 512 neighbouring queries;
- ``faithful quest brute``: the same model scoring every region with one matmul and one
  ``topk`` per chunk (``prune=False``);
- ``full_attention``: the same model with dense ``scaled_dot_product_attention``; skipped where
  the time predicted from the previous size (quadratic) exceeds ``--budget-s``.

Every (variant, N) runs in its own process, so peak memory (max RSS on CPU, max allocated on
CUDA) is that run's alone; ``start_gb`` is the memory already held when the step starts
(runtime, model and inputs: 0.5 GB of features at 128k). On the CPU every variant keeps freed
memory for reuse, as training does (:mod:`querent.engine.allocator`).

Error: relative Frobenius error of the first block's attention output against exact attention
with the same weights, on 1,024 sampled queries, for (a) these benchmark inputs and the
random-init weights, and (b) the distance-decaying attention of Theorem 3.1's assumption
(logits ``-|p_i - p_j|² / 2`` on the lattice).

Features are 8-cell blobs plus patch noise (``--noise``, 0.5 of the blob scale): with noisy
patches neighbouring regions have alike key boxes and bounds prune little.

    python benchmarks/bench_attention.py [--sizes 2048 8192 32768 131072] [--device cpu]
        [--variants ...] [--full-sizes 8192 32768] [--threads 1] [--noise 0.5]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from querent.engine.allocator import keep_freed_memory
from querent.layers import pruning
from querent.layers.query_aware import query_aware_attention
from querent.layers.regions import region_min_max
from querent.layers.scorers import QuestScorer, quest_scores
from querent.models import create_model

HERE = Path(__file__).resolve().parent
IN_DIM, DIM, HEADS, REGION, TOP_K = 1024, 256, 4, 4, 8
VARIANTS = {
    "querent fast": ("querent", {"selection": "region"}),
    "querent faithful": ("querent", {"selection": "patch"}),
    "faithful quest": ("querent", {"selection": "patch", "scorer": "quest"}),
    "faithful quest brute": ("querent", {"selection": "patch", "scorer": "quest"}),
    "full_attention": ("full_attention", {}),
}
NOISE = 0.5


def disk_of_cells(n: int) -> torch.Tensor:
    """(n, 2) lattice cells of a disk-shaped tissue (ragged regions along its edge)."""
    side = math.ceil(math.sqrt(4 * n / math.pi)) + 2
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)
    distance = ((xy - side / 2) ** 2).sum(1)
    return torch.from_numpy(xy[np.argsort(distance, kind="stable")[:n]])


def smooth_features(cells: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Features that vary smoothly over the lattice (8-cell blobs) plus patch-level noise.

    Written in slices, so making them costs no more memory than the result.
    """
    coarse = cells // 8
    side = int(coarse.max()) + 1
    field = torch.randn(side * side, IN_DIM, generator=generator)
    blob = coarse[:, 1] * side + coarse[:, 0]
    features = torch.empty(len(cells), IN_DIM)
    for start in range(0, len(cells), 8192):
        part = slice(start, start + 8192)
        noise = torch.randn(len(blob[part]), IN_DIM, generator=generator)
        features[part] = field[blob[part]] + NOISE * noise
    return features


def current_rss_gb() -> float:
    """Resident memory of this process now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**30


def train_step(model, features, cells) -> None:
    model.zero_grad(set_to_none=True)
    logits = model(features, cells).logits
    target = torch.tensor([1], device=logits.device)
    torch.nn.functional.cross_entropy(logits[None], target).backward()


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def sampled_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.norm(out - exact) / torch.linalg.norm(exact))


def exact_attention(q, k, v, rows):
    """Dense softmax attention of the queries ``rows`` over all keys: (len(rows), h, d)."""
    logits = torch.einsum("chd,nhd->hcn", q[rows], k) * q.shape[-1] ** -0.5
    return torch.einsum("hcn,nhd->chd", logits.softmax(-1), v)


@torch.no_grad()
def layer_error(model, features, cells, rows) -> float:
    """Error of the first block's attention, benchmark inputs, random-init weights."""
    block = model.blocks[0]
    x = block.attention_norm(model.embed(features))
    attention = block.attention
    out, _ = attention(x, model.layout(cells, None))
    q, k, v = attention.split(x)
    exact = attention.merge(exact_attention(q, k, v, rows))
    return sampled_error(out[rows], exact)


def _decaying_qkv(cells: torch.Tensor):
    """q, k with logits exactly ``-|p_i - p_j|² / 2`` on lattice positions, plus 0.05 noise."""
    g = torch.Generator().manual_seed(1)
    xy = cells.double()
    sq = (xy**2).sum(-1, keepdim=True)
    ones = torch.ones_like(sq)

    def noise():
        return 0.05 * torch.randn(len(xy), 4, generator=g, dtype=torch.float64)

    q = torch.cat([0.5 * torch.cat([2 * xy, -ones, -sq], -1), noise()], -1)
    k = torch.cat([torch.cat([xy, sq, ones], -1), noise()], -1)
    v = torch.randn(len(xy), 1, 16, generator=g, dtype=torch.float64)
    return (q * q.shape[-1] ** 0.5)[:, None], k[:, None], v  # undo the dim**-0.5 scale


@torch.no_grad()
def decaying_error(model, cells, rows) -> float:
    """Error in Theorem 3.1's setting, with the model's regions, k and selection."""
    q, k, v = _decaying_qkv(cells)
    layout = model.layout(cells, None)
    attention = model.blocks[0].attention
    out, _ = query_aware_attention(
        q,
        k,
        v,
        layout,
        QuestScorer(dim=q.shape[1] * q.shape[2], heads=q.shape[1], head_dim=q.shape[2]).prepare(
            None, q, k, layout
        ),
        top_k=attention.top_k,
        selection=attention.selection,
    )
    return sampled_error(out[rows], exact_attention(q, k, v, rows))


@torch.no_grad()
def check_selection(model, features, cells, generator) -> dict:
    """Pruned top-k of the first block against scoring every region.

    On 2 x 512 neighbouring queries (in region order, as attention runs them).

    Returns the (query, head) rows whose sets differ, those of them that are not float ties
    (the two sets' k-th scores within 1e-5 relative), and the chunks pruned / scored in full.
    """
    block = model.blocks[0]
    x = block.attention_norm(model.embed(features))
    q, k, _ = block.attention.split(x)
    layout = model.layout(cells, None)
    kmin, kmax = region_min_max(k, layout)
    table = pruning.QuestTable.build(kmin, kmax, layout.region_cells)
    ordered = q.index_select(0, layout.slots[layout.valid])
    differ = not_ties = 0
    for start in torch.randint(0, max(1, len(q) - 512), (2,), generator=generator).tolist():
        part = ordered[start : start + 512]
        _, picks = table.top_regions(part, TOP_K)
        scores = quest_scores(part, kmin, kmax)
        brute = scores.topk(TOP_K, dim=-1)
        rows = (picks.sort(-1).values != brute.indices.sort(-1).values).any(-1)
        differ += int(rows.sum())
        kth = brute.values[..., -1]
        picked_min = scores.gather(-1, picks).amin(-1)
        not_ties += int((rows & ((kth - picked_min).abs() > 1e-5 * kth.abs())).sum())
    return {"differ": differ, "not_ties": not_ties, **table.tries}


def worker(variant: str, n: int, device: torch.device) -> dict:
    """Time one (variant, N) in this process; returns the measurements."""
    name, settings = VARIANTS[variant]
    if device.type == "cpu":
        keep_freed_memory()  # as training does
    if name == "querent":
        settings = {**settings, "region_size": REGION, "top_k": TOP_K}
    torch.manual_seed(0)
    model = create_model(name, in_dim=IN_DIM, n_outputs=2, dim=DIM, heads=HEADS, **settings)
    if variant.endswith("brute"):
        for block in model.blocks:
            block.attention.prune = False
    model.to(device)
    g = torch.Generator().manual_seed(0)
    warm_cells = disk_of_cells(2048)
    train_step(model, smooth_features(warm_cells, g).to(device), warm_cells.to(device))
    cells = disk_of_cells(n)
    features = smooth_features(cells, g).to(device)
    cells = cells.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start_gb = (
        torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else current_rss_gb()
    )
    runs = []
    while len(runs) < 3 and (not runs or runs[0] < 10):  # repeat runs shorter than 10 s
        start = time.perf_counter()
        train_step(model, features, cells)
        if device.type == "cuda":
            torch.cuda.synchronize()
        runs.append(time.perf_counter() - start)
    result = {
        "variant": variant,
        "n": n,
        "seconds": statistics.median(runs),
        "runs_s": runs,
        "peak_gb": peak_memory_gb(device),
        "start_gb": start_gb,
    }
    if name == "querent":
        rows = torch.randperm(n, generator=g)[:1024].to(device)
        result["regions"] = model.layout(cells, None).n_regions
        result["error_layer"] = layer_error(model, features, cells, rows)
        result["error_decaying"] = decaying_error(model.cpu(), cells.cpu(), rows.cpu())
    if variant == "faithful quest":
        result["selection_check"] = check_selection(model.cpu(), features.cpu(), cells.cpu(), g)
        assert result["selection_check"]["not_ties"] == 0, result["selection_check"]
    return result


def expected_gflop(variant: str, n: int, regions: int) -> dict:
    """Expected forward GFLOP of attention (scoring, attending) and of one training step.

    Dense layers cost ``2 n (in·dim + 9 dim²)``: qkv 3, output 1, MLP (ratio 2) 4, pooling 1
    forward; a training step is ~3x forward for trained parts. Sparse attention recomputes its
    chunks in the backward pass (4x), and scoring runs forward only.
    """
    dense = 2 * n * (IN_DIM * DIM + 9 * DIM * DIM)
    slots = REGION * REGION
    if variant == "full_attention":
        score, attend = 0.0, 4.0 * n * n * DIM
        step = 3 * (dense + attend)
    else:
        queries = regions if variant == "querent fast" else n
        score = 4.0 * queries * regions * DIM  # scoring every region (pruning scores fewer)
        attend = 4.0 * n * TOP_K * slots * DIM
        step = 3 * dense + 4 * attend + score
    return {"score": score / 1e9, "attend": attend / 1e9, "train_step": step / 1e9}


def run_worker(variant: str, n: int, args: argparse.Namespace, timeout: float) -> dict:
    command = [sys.executable, __file__, "--worker", variant, str(n), "--device", args.device]
    command += ["--noise", str(args.noise)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        return {"variant": variant, "n": n, "failed": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cell(r: dict, full_s: dict) -> str:
    if "seconds" in r:
        speedup = f"{full_s[r['n']] / r['seconds']:.1f}x" if r["n"] in full_s else "-"
        return f"{r['seconds']:8.2f} {speedup:>8} {r['peak_gb']:8.2f}"
    if "skipped_predicted_s" in r:
        return f"{'skipped, predicted ' + format(r['skipped_predicted_s'], '.0f') + ' s':>26}"
    return f"failed: {r['failed']}"


def print_table(results: list[dict], regions: dict) -> None:
    """The closing-note table: time, speed-up over full attention, memory, FLOP, error."""
    header = (
        f"{'variant':20} {'N':>7} {'regions':>7} {'step s':>8} {'vs full':>8} {'peak GB':>8} "
        f"{'GFLOP score':>11} {'GFLOP attend':>12} {'GFLOP step':>10} {'err layer':>9} "
        f"{'err thm':>8}"
    )
    print(header)
    print("-" * len(header))
    done = [r for r in results if "seconds" in r]
    full_s = {r["n"]: r["seconds"] for r in done if r["variant"] == "full_attention"}
    for r in results:
        flop = r.get("expected_gflop", {})
        line = f"{r['variant']:20} {r['n']:7d} {regions.get(r['n'], 0):7d} {_cell(r, full_s)} "
        line += " ".join(
            f"{flop.get(key, 0):{width}.1f}"
            for key, width in (("score", 11), ("attend", 12), ("train_step", 10))
        )
        if "error_layer" in r:
            line += f" {r['error_layer']:9.3f} {r['error_decaying']:8.2e}"
        print(line)
    print()
    for variant in VARIANTS:
        times = {r["n"]: r["seconds"] for r in done if r["variant"] == variant}
        if len(times) >= 2:
            low, high = min(times), max(times)
            slope = math.log(times[high] / times[low]) / math.log(high / low)
            print(f"{variant}: log-log slope of time from {low} to {high} = {slope:.2f}")
    for r in done:
        if "selection_check" in r:
            print(f"faithful quest N={r['n']}: pruned vs all-region top-k {r['selection_check']}")


def main() -> None:
    global NOISE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 32768, 131072])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-s", type=float, default=240, help="longest single run")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_attention.json")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument(
        "--full-sizes", type=int, nargs="+", help="sizes at which to run full_attention (all)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--noise", type=float, default=NOISE, help="patch noise of features")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    NOISE = args.noise
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        variant, n = args.worker
        print(json.dumps(worker(variant, int(n), torch.device(args.device))))
        return

    results, last_full = [], None
    for n in args.sizes:
        for variant in args.variants:
            if variant == "full_attention" and args.full_sizes and n not in args.full_sizes:
                continue
            if variant == "full_attention" and last_full is not None:
                predicted = last_full["seconds"] * (n / last_full["n"]) ** 2
                if predicted > args.budget_s:
                    results.append({"variant": variant, "n": n, "skipped_predicted_s": predicted})
                    continue
            result = run_worker(variant, n, args, timeout=4 * args.budget_s)
            if variant == "full_attention" and "seconds" in result:
                last_full = result
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
    regions = {r["n"]: r["regions"] for r in results if "regions" in r}
    for r in results:
        if r["n"] in regions:
            r["expected_gflop"] = expected_gflop(r["variant"], r["n"], regions[r["n"]])

    print(
        f"\ndevice {args.device}, {torch.get_num_threads()} threads; in {IN_DIM}, dim {DIM}, "
        f"{HEADS} heads, regions {REGION}x{REGION}, k={TOP_K}, feature noise {args.noise}; "
        "one training step (fwd+bwd)\n"
    )
    print_table(results, regions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"device": args.device, "threads": torch.get_num_threads(), "noise": args.noise}
    args.out.write_text(json.dumps({**settings, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
