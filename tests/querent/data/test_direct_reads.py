import h5py
import numpy as np
import pytest

from extractors.errors import FileFormatError
from querent.data.direct_reads import feature_layout, read_features_into


def _write(path, features, **options):
    with h5py.File(path, "w") as h5:
        h5.create_dataset("features", data=features, **options)
        h5.create_dataset("coords", data=np.zeros((len(features), 2), np.int64))
    return path


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_contiguous_features_are_read_as_stored_by_offset(tmp_path, dtype):
    features = np.random.default_rng(0).normal(size=(37, 5)).astype(dtype)
    path = _write(tmp_path / "a.h5", features)
    layout = feature_layout(path)
    assert layout.offset is not None and layout.shape == (37, 5)
    assert layout.read_dtype == dtype
    out = np.full((37, 5), np.nan, dtype)
    read_features_into(path, layout, out)
    np.testing.assert_array_equal(out, features)


def test_chunked_compressed_or_converted_features_go_through_h5py(tmp_path):
    features = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    path = _write(tmp_path / "c.h5", features, chunks=(8, 4), compression="gzip")
    layout = feature_layout(path)
    assert layout.offset is None
    out = np.empty((50, 4), np.float32)
    read_features_into(path, layout, out)
    np.testing.assert_array_equal(out, features)
    wide = _write(tmp_path / "d.h5", features.astype(np.float64))
    assert feature_layout(wide).read_dtype == np.float32  # float64 is read as float32
    read_features_into(wide, feature_layout(wide), out)
    np.testing.assert_array_equal(out, features)


def test_truncated_or_foreign_files_are_named(tmp_path):
    path = _write(tmp_path / "t.h5", np.ones((1000, 8), np.float32))
    layout = feature_layout(path)
    with open(path, "r+b") as raw:
        raw.truncate(layout.offset + 100)
    with pytest.raises(FileFormatError, match="t.h5"):
        read_features_into(path, layout, np.empty((1000, 8), np.float32))
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(FileFormatError, match="x.h5"):
        feature_layout(tmp_path / "x.h5")
