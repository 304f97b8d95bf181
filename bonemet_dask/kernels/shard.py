"""Encode one whole Zarr v3 shard (``sharding_indexed``) in a single pass: the writer's hot path.

zarr-python routes every inner chunk of a shard through its async codec pipeline; for a
64 x 2428 x 2588 CT slab that overhead costs about as much as the compression itself
(BENCHMARKS.md).  :func:`encode_shard` produces the same bytes directly: inner chunks in Morton
order, all-fill chunks left out (zarr's ``write_empty_chunks=False``), the index at the end as
little-endian ``(offset, nbytes)`` uint64 pairs followed by its CRC32C.  It only handles the codec
chains this project writes (``bytes`` + one compressor, index ``bytes`` + ``crc32c``); anything
else is reported by :func:`shard_codec_plan` returning None so the caller falls back to zarr.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numcodecs
import numpy as np

_EMPTY = np.uint64(2**64 - 1)

try:
    from imagecodecs import zstd_encode as _zstd_encode

    _IMAGECODECS_ZSTD = True
except ImportError:  # pragma: no cover - imagecodecs ships zstd
    _IMAGECODECS_ZSTD = False


@dataclass(frozen=True)
class ShardCodecPlan:
    """What :func:`encode_shard` needs to know about an array's sharding codec."""

    shard_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    compress: Callable[[np.ndarray], bytes] | None
    fill_value: Any
    write_empty_chunks: bool
    morton_order: tuple[tuple[int, ...], ...]
    zstd_level: int | None = None
    """Set when the compressor is zstd without checksum: then chunks are compressed straight
    into the shard's buffer (``imagecodecs.zstd_encode``, the same bytes as numcodecs')."""


def plain_sharding(array: Any) -> tuple[Any, Any] | None:
    """The sharding codec of a zarr v3 array and its one compressor, or None.

    The layouts read (``bonemet_dask.ml``) and written (:func:`encode_shard`) here without
    zarr's codec pipeline: ``(sharding, compressor)`` (``compressor`` None when chunks are
    stored raw) for one ``sharding_indexed`` codec with its index at the end, encoded
    ``bytes`` + ``crc32c``, and inside it ``bytes`` (little-endian or single-byte) plus at
    most one codec; None for anything else.  Which compressors it supports is each caller's
    to check.
    """
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    codecs = getattr(array.metadata, "codecs", ())
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    if str(getattr(sharding.index_location, "value", sharding.index_location)) != "end":
        return None
    index = sharding.index_codecs
    if not (
        len(index) == 2 and isinstance(index[0], BytesCodec) and isinstance(index[1], Crc32cCodec)
    ):
        return None
    inner = sharding.codecs
    if not inner or not isinstance(inner[0], BytesCodec) or len(inner) > 2:
        return None
    little = inner[0].endian is None or str(getattr(inner[0].endian, "value", "")) == "little"
    if array.dtype.itemsize > 1 and not little:
        return None
    return sharding, (inner[1] if len(inner) == 2 else None)


def shard_codec_plan(array: Any) -> ShardCodecPlan | None:
    """Inspect a zarr v3 array; return a plan when :func:`encode_shard` reproduces its codecs.

    Returns None (use zarr's own writer) for anything but one ``sharding_indexed`` codec with
    index at the end, ``bytes`` (little-endian or single-byte) plus at most one blosc or zstd
    compressor inside, and ``bytes`` + ``crc32c`` for the index.
    """
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec
    from zarr.core.indexing import morton_order_iter

    found = plain_sharding(array)
    if found is None:
        return None
    sharding, compressor = found
    compress: Callable[[np.ndarray], bytes] | None = None
    zstd_level: int | None = None
    if (codec := compressor) is not None:
        if isinstance(codec, BloscCodec):
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[
                str(getattr(codec.shuffle, "value", codec.shuffle))
            ]
            blosc = numcodecs.Blosc(
                cname=str(getattr(codec.cname, "value", codec.cname)),
                clevel=codec.clevel,
                shuffle=shuffle,
                blocksize=codec.blocksize,
                typesize=codec.typesize,
            )
            compress = blosc.encode
        elif isinstance(codec, ZstdCodec):
            zstd = numcodecs.Zstd(level=codec.level, checksum=codec.checksum)
            compress = zstd.encode
            zstd_level = None if codec.checksum or not _IMAGECODECS_ZSTD else int(codec.level)
        else:
            return None
    chunks_per_shard = tuple(
        s // c for s, c in zip(array.shards, sharding.chunk_shape, strict=True)
    )
    return ShardCodecPlan(
        shard_shape=tuple(array.shards),
        chunk_shape=tuple(sharding.chunk_shape),
        compress=compress,
        fill_value=array.fill_value,
        write_empty_chunks=bool(zarr.config.get("array.write_empty_chunks")),
        morton_order=tuple(morton_order_iter(chunks_per_shard)),
        zstd_level=zstd_level,
    )


def encode_shard(block: np.ndarray, plan: ShardCodecPlan) -> memoryview | None:
    """The stored bytes of one shard holding ``block`` at its origin.

    Parameters
    ----------
    block : numpy.ndarray
        The shard's data; smaller than ``plan.shard_shape`` for a shard at the array's edge.
    plan : ShardCodecPlan
        From :func:`shard_codec_plan`.

    Returns
    -------
    memoryview or None
        The shard object (bytes-like), or None when every inner chunk is fill (zarr then stores
        nothing).

    Notes
    -----
    One buffer is allocated for the whole shard and one for the chunk being compressed, and
    zstd writes each chunk straight into the shard's buffer: no allocation per chunk. Dask's
    worker processes set ``MALLOC_TRIM_THRESHOLD_``, which keeps glibc from reusing large
    freed blocks, so each per-chunk buffer used to be fresh pages from the kernel: the encode
    took 1.8x as long on a worker as in a plain process (``benchmarks/suite.py --stages
    convert``).
    """
    chunk = plan.chunk_shape
    if any(b > s for b, s in zip(block.shape, plan.shard_shape, strict=True)):
        raise ValueError(f"block.shape={block.shape} exceeds the shard shape {plan.shard_shape}")
    grid = tuple(s // c for s, c in zip(plan.shard_shape, chunk, strict=True))
    index = np.full((*grid, 2), _EMPTY, dtype="<u8")
    dtype = block.dtype.newbyteorder("<")
    data = block if block.dtype == dtype else block.astype(dtype)
    scratch = np.empty(chunk, dtype=dtype)
    chunk_bytes = scratch.nbytes
    direct = plan.zstd_level is not None or plan.compress is None
    out = (  # the shard's one buffer; blosc returns its own bytes per chunk instead
        np.empty(len(plan.morton_order) * _bound(chunk_bytes) + index.nbytes + 4, np.uint8)
        if direct
        else None
    )
    parts: list[bytes] = []
    offset = 0
    for coords in plan.morton_order:
        lo = [c * n for c, n in zip(coords, chunk, strict=True)]
        if any(a >= b for a, b in zip(lo, data.shape, strict=True)):
            continue  # wholly past the array's edge
        piece = data[tuple(slice(a, a + n) for a, n in zip(lo, chunk, strict=True))]
        if not plan.write_empty_chunks and _all_fill(piece, plan.fill_value):
            continue
        if piece.shape != chunk:  # an edge chunk is stored at full size, padded with fill
            scratch.fill(plan.fill_value)
            scratch[tuple(slice(0, n) for n in piece.shape)] = piece
        else:
            np.copyto(scratch, piece)
        if out is not None:
            target = out[offset:]
            if plan.compress is None:
                target[:chunk_bytes] = scratch.reshape(-1).view(np.uint8)
                size = chunk_bytes
            else:
                size = len(_zstd_encode(scratch, level=plan.zstd_level, out=target))
        else:
            encoded = plan.compress(scratch)  # type: ignore[misc]
            parts.append(bytes(encoded))
            size = len(encoded)
        index[coords] = (offset, size)
        offset += size
    if offset == 0 and not parts:
        return None
    index_bytes = index.tobytes()
    checksum = np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()
    if out is None:
        return memoryview(b"".join([*parts, index_bytes, checksum]))
    out[offset : offset + len(index_bytes)] = np.frombuffer(index_bytes, np.uint8)
    out[offset + len(index_bytes) : offset + len(index_bytes) + 4] = np.frombuffer(
        checksum, np.uint8
    )
    return memoryview(out[: offset + len(index_bytes) + 4])


def _bound(n: int) -> int:
    """``ZSTD_compressBound(n)`` plus a margin: the most one compressed chunk can take."""
    return n + (n >> 8) + (((128 << 10) - n) >> 11 if n < (128 << 10) else 0) + 64


def _all_fill(piece: np.ndarray, fill_value: Any) -> bool:
    if fill_value is None or (isinstance(fill_value, float) and np.isnan(fill_value)):
        return False
    if fill_value == 0:
        return not piece.any()  # no boolean temporary of the chunk's size
    return not np.any(piece != fill_value)
