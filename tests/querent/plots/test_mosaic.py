import numpy as np
import pytest

from querent.plots.mosaic import mosaic


def test_mosaic_lays_patches_row_by_row_with_gaps():
    images = [np.full((8, 8, 3), value, np.uint8) for value in (10, 20, 30, 40, 50)]
    sheet = mosaic(images, columns=2, gap=2)
    assert sheet.shape == (3 * 8 + 2 * 2, 2 * 8 + 2, 3)
    assert sheet[0, 0, 0] == 10 and sheet[0, 10, 0] == 20 and sheet[10, 0, 0] == 30
    assert sheet[20, 10, 0] == 255  # the empty sixth place stays white
    assert (sheet[:, 8:10] == 255).all()  # the gap


def test_mosaic_refuses_mixed_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        mosaic([np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)])
