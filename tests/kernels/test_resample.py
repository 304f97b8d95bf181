"""Chunked affine resampling equals scipy on the whole array; the graph reads only what it needs."""

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
import xarray as xr

from bonemet_dask.kernels.resample import affine_block, bin_mean, input_box
from bonemet_dask.ops.resample import affine_resample, default_chunks, resample
from bonemet_dask.transform import RigidTransform

RNG = np.random.default_rng(1)
VOLUME = (RNG.random((30, 34, 38)) * 255).astype(np.uint8)
TRANSFORMS = [
    RigidTransform.from_euler((10, -20, 33), (3, -2, 5), centre=(15, 17, 19)),
    RigidTransform.from_euler((0, 0, 90), centre=(15, 17, 19)),
    RigidTransform.from_euler((0, 0, 0), (0.5, -0.25, 40.0)),  # half voxels, partly outside
]


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_chunked_equals_scipy_on_uneven_chunks(transform, dtype, order):
    data = VOLUME.astype(dtype)
    matrix, offset = transform.index_affine((1, 1, 1), (1, 1, 1))
    shape = (33, 29, 41)
    expected = ndi.affine_transform(data, matrix, offset, output_shape=shape, order=order)
    source = da.from_array(data, chunks=(7, 11, 13))
    ours = affine_resample(
        source, matrix, offset, output_shape=shape, chunks=(5, (20, 9), 17), order=order
    )
    assert ours.chunks == ((5,) * 6 + (3,), (20, 9), (17, 17, 7))
    if dtype == np.uint8:  # rounded to the same integers
        np.testing.assert_array_equal(ours.compute(), expected)
    else:  # same weights and samples; only the summation order of the lerps differs
        np.testing.assert_allclose(ours.compute(), expected, rtol=1e-6, atol=1e-4)


def test_higher_orders_agree_with_scipy_away_from_box_edges():
    data = ndi.gaussian_filter(VOLUME.astype(np.float32), 2)
    t = RigidTransform.from_euler((3, 2, 1), (1, 1, 1), centre=(15, 17, 19))
    matrix, offset = t.index_affine((1, 1, 1), (1, 1, 1))
    expected = ndi.affine_transform(data, matrix, offset, order=3)
    ours = affine_resample(da.from_array(data, chunks=10), matrix, offset, output_shape=data.shape,
                           chunks=(10, 34, 38), order=3).compute()  # fmt: skip
    assert np.abs(ours - expected)[4:-4, 4:-4, 4:-4].max() < 0.5


def test_identity_is_exact_and_keeps_dtype():
    volume = xr.DataArray(
        VOLUME, dims=("slice", "y", "x"),
        coords={"y": np.arange(34) * 10.0, "x": np.arange(38) * 10.0, "side": "left"},
    )  # fmt: skip
    out = resample(volume, RigidTransform.identity(), shape=VOLUME.shape, chunks=(7, 34, 38))
    assert out.dtype == np.uint8 and out.attrs["voxel_size_um"] == [10.0, 10.0, 10.0]
    np.testing.assert_array_equal(out.values, VOLUME)
    assert out["side"].item() == "left"
    assert RigidTransform.from_dict(out.attrs["transform"]).is_identity()


def test_each_output_chunk_reads_only_its_input_box():
    """A thin slab of output under a small rotation depends on few of the input's 64 chunks."""
    source = da.from_array(np.zeros((64, 64, 64), np.uint8), chunks=16)
    t = RigidTransform.from_euler((2, 1, 1), centre=(32, 32, 32))
    matrix, offset = t.index_affine((1, 1, 1), (1, 1, 1))
    out = affine_resample(source, matrix, offset, output_shape=(64, 64, 64), chunks=(8, 64, 64))
    graph = dict(out.__dask_graph__())
    source_keys = {k for k in graph if isinstance(k, tuple) and k[0] == source.name}
    for block in range(out.numblocks[0]):
        box = input_box(matrix, offset, (8 * block, 0, 0), (8 * block + 8, 64, 64), (64,) * 3)
        assert box[0][1] - box[0][0] <= 8 + 2 * 2 + 2  # tilt of ~2 deg over 64 voxels: a few
    assert len(source_keys) == 64
    (computed,) = dask.compute(out)
    assert computed.shape == (64, 64, 64)


def test_default_chunks_follow_the_memory_budget():
    chunks = default_chunks((1538, 539, 509), np.uint8, budget=4 * 2**30)
    assert chunks == (192, 539, 509)  # 64 MiB blocks, whole multiples of the 64-slice shard
    assert np.prod(chunks) <= 4 * 2**30 // 64
    assert default_chunks((10, 4000, 4000), np.float32, budget=2**30)[0] == 1
    lazy = resample(
        xr.DataArray(da.zeros((100, 60, 50), np.uint8, chunks=50), dims=("slice", "y", "x"),
                     attrs={"voxel_size_um": 10.0}),
        RigidTransform.identity(),
    )  # fmt: skip
    assert lazy.shape == (1538, 539, 509) and lazy.data.numblocks[0] > 1


def test_block_kernel_matches_scipy_on_a_box_and_binning_averages():
    t = TRANSFORMS[0]
    matrix, offset = t.index_affine((1, 1, 1), (1, 1, 1))
    box = input_box(matrix, offset, (4, 5, 6), (14, 15, 16), VOLUME.shape)
    piece = VOLUME[tuple(slice(a, b) for a, b in box)]
    block = affine_block(
        piece,
        matrix=matrix,
        offset=offset,
        box_lo=[a for a, _ in box],
        in_shape=VOLUME.shape,
        out_start=(4, 5, 6),
        out_shape=(10, 10, 10),
    )
    whole = ndi.affine_transform(VOLUME, matrix, offset, output_shape=(14, 15, 16), order=1)
    np.testing.assert_array_equal(block, whole[4:, 5:, 6:])
    binned = bin_mean(np.arange(64, dtype=np.uint8).reshape(4, 4, 4), (2, 2, 2))
    assert binned.dtype == np.float32 and binned[0, 0, 0] == np.mean([0, 1, 4, 5, 16, 17, 20, 21])
    with pytest.raises(ValueError, match="multiple"):
        bin_mean(np.zeros((3, 4, 4)), (2, 2, 2))


def test_bad_order_is_refused():
    with pytest.raises(ValueError, match="order=7"):
        affine_resample(VOLUME, np.eye(3), np.zeros(3), output_shape=(2, 2, 2), order=7)
