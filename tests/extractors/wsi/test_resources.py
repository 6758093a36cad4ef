"""Job memory of the per-slide stages, estimated from the slide's header."""

import numpy as np
import pytest

from extractors.demo import write_synthetic_slide
from extractors.wsi.reader import Slide
from extractors.wsi.resources import BASE_MB, FALLBACK_MB, slide_stage_mem_mb
from extractors.wsi.tissue import segment, tissue_params


def test_memory_grows_with_the_slide_and_covers_its_thumbnail(tmp_path):
    # the thumbnail's long side is bounded (by the QC picture), its area follows the slide's
    sizes = {}
    for height in (1024, 4096):
        path = tmp_path / f"s{height}.svs"
        size = (4096, height)
        write_synthetic_slide(path, np.zeros((32, 32), np.uint8), level0_size=size, mpp=0.25)
        sizes[height] = slide_stage_mem_mb(path)
        with Slide(path) as slide:
            thumbnail = segment(slide, tissue_params()).thumbnail
        assert sizes[height] > BASE_MB + thumbnail.nbytes / 1e6  # several copies fit
    assert sizes[4096] > sizes[1024] + 50


def test_real_slide_is_sized_from_its_header(tcga_slide):
    assert BASE_MB < slide_stage_mem_mb(tcga_slide) < FALLBACK_MB


@pytest.mark.parametrize("content", [b"", b"not a slide at all"])
def test_unreadable_slide_gets_the_fallback(tmp_path, content):
    path = tmp_path / "broken.svs"
    path.write_bytes(content)
    assert slide_stage_mem_mb(path) == FALLBACK_MB
