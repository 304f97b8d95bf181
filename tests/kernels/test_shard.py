"""encode_shard writes the very bytes zarr-python writes, for every layout the project uses."""

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.core.sync import sync

from bonemet_dask.io.store import write_shard
from bonemet_dask.kernels.shard import shard_codec_plan

CASES = {
    "uint8 blosc-zstd, y/x rounded up": (
        "uint8", (10, 37, 45), (4, 16, 16), (4, 48, 48),
        BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=1),
    ),
    "uint16 blosc-lz4": ("uint16", (9, 20, 33), (3, 8, 33), (3, 24, 33),
                         BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=2)),
    "uint8 zstd": ("uint8", (7, 30, 30), (7, 10, 10), (7, 30, 30), ZstdCodec(level=1)),
    "uint16 no compressor": ("uint16", (5, 12, 12), (5, 4, 4), (5, 12, 12), None),
}  # fmt: skip


def shard_bytes(array, shard):
    from zarr.core.buffer import default_buffer_prototype

    key = "/".join(p for p in (array.path, array.metadata.encode_chunk_key((shard, 0, 0))) if p)
    value = sync(array.store.get(key, prototype=default_buffer_prototype()))
    return None if value is None else value.to_bytes()


@pytest.mark.parametrize("name", list(CASES))
def test_encode_shard_matches_zarr_byte_for_byte(tmp_path, name):
    dtype, shape, chunks, shards, compressor = CASES[name]
    rng = np.random.default_rng(0)
    data = rng.integers(0, 50, shape).astype(dtype)
    data[:, : chunks[1], :] = 0  # whole inner chunks of fill: zarr leaves them out
    kwargs = dict(shape=shape, dtype=dtype, chunks=chunks, shards=shards, fill_value=0,
                  compressors=() if compressor is None else (compressor,))  # fmt: skip
    reference = zarr.create_array(str(tmp_path / "ref.zarr"), **kwargs)
    ours = zarr.create_array(str(tmp_path / "ours.zarr"), **kwargs)
    assert shard_codec_plan(ours) is not None
    n_shards = -(-shape[0] // shards[0])
    for shard in range(n_shards):
        rows = slice(shard * shards[0], min(shape[0], (shard + 1) * shards[0]))
        reference[rows] = data[rows]
        write_shard(ours, shard, data[rows])
        expected = shard_bytes(reference, shard)
        assert expected is not None
        assert shard_bytes(ours, shard) == expected
    np.testing.assert_array_equal(ours[:], data)


def test_all_fill_shard_stores_nothing(tmp_path):
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 8, 8), dtype="uint8",
                              chunks=(2, 4, 4), shards=(2, 8, 8), fill_value=0)  # fmt: skip
    write_shard(array, 0, np.ones((2, 8, 8), np.uint8))
    write_shard(array, 0, np.zeros((2, 8, 8), np.uint8))
    assert shard_bytes(array, 0) is None
    np.testing.assert_array_equal(array[:], 0)


def test_write_shard_refuses_partial_blocks(tmp_path):
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 8, 8), dtype="uint8",
                              chunks=(2, 4, 4), shards=(2, 8, 8))  # fmt: skip
    with pytest.raises(ValueError, match="whole shards"):
        write_shard(array, 1, np.ones((1, 8, 8), np.uint8))


@pytest.mark.parametrize("codec", ["blosc-zstd", "blosc-lz4", "zstd", "gzip"])
def test_every_codec_compresses(tmp_path, codec):
    from bonemet_dask.io.store import ImageLayout, create_image_group

    data = np.zeros((4, 64, 64), np.uint8)
    data[:, 16:48, 16:48] = np.random.default_rng(1).integers(100, 104, (4, 32, 32))
    layout = ImageLayout.default_for("ct", data.shape, "uint8", voxel_size_um=10.0)
    layout = type(layout)(**{**layout.__dict__, "codec": codec, "level": 1})
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    group = create_image_group(root, "scan", layout, attrs={})
    assert len(layout.compressors()) == 1
    write_shard(group["0"], 0, data)
    shard_files = (tmp_path / "s.zarr" / "scan" / "0" / "c").rglob("*")
    stored = sum(p.stat().st_size for p in shard_files if p.is_file())
    assert stored < data.nbytes / 3
    np.testing.assert_array_equal(group["0"][:], data)
