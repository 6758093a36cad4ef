"""Extraction on CUDA (bf16 autocast) against the CPU path (fp32); skipped where there is no GPU."""

import copy
import importlib.util

import numpy as np
import pytest
import torch

from extractors.encoders import create_encoder
from extractors.extract import extract_slide
from extractors.io import read_features
from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide
from tests.helpers import ROOT, shared_slide

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def gpu_bench(monkeypatch):
    """benchmarks/bench_gpu_extract.py: the tolerance and the comparison live there, once."""
    monkeypatch.setenv("TQDM_DISABLE", "1")  # the module sets it; undone after the test
    path = ROOT / "benchmarks" / "bench_gpu_extract.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_extract", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_slide():
    """CMU-1-Small-Region: ../shared does not reach a GPU machine, gpu_prepare.sh copies it."""
    copied = ROOT / "shared" / "slides" / "cmu-1-small-region.svs"
    return copied if copied.is_file() else shared_slide("cmu-1-small-region.svs")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "uni_v1"])
def test_cuda_bf16_features_match_the_cpu_fp32_path(tmp_path, monkeypatch, name):
    bench = gpu_bench(monkeypatch)
    slide = real_slide()
    with Slide(slide) as opened:
        polygons = tissue.segment(opened, tissue.tissue_params()).polygons
        params = tiling.TilingParams()
        tiling.tile_slide(opened, polygons, params, tmp_path / "all.h5", tmp_path / "qc.jpg")
    coords = bench.first_patches(tmp_path / "all.h5", 8, tmp_path / "coords.h5")
    torch.manual_seed(0)
    on_cpu = create_encoder(name, pretrained=False)
    on_gpu = copy.deepcopy(on_cpu).to("cuda")
    extract_slide(slide, coords, on_gpu, tmp_path / "gpu.h5")
    extract_slide(slide, coords, on_cpu, tmp_path / "cpu.h5")
    gpu, gpu_coords, _, gpu_attrs = read_features(tmp_path / "gpu.h5")
    cpu, cpu_coords, _, cpu_attrs = read_features(tmp_path / "cpu.h5")
    assert (gpu_attrs["precision"], cpu_attrs["precision"]) == ("bf16", "fp32")
    np.testing.assert_array_equal(gpu_coords, cpu_coords)
    assert len(cpu) == 8
    stats = bench.agreement(gpu, cpu)
    assert stats["max_abs"] > 0  # bf16 really ran on the GPU
    assert bench.within_tolerance(stats), stats
