"""Read an aligned slab of a sharded image array straight from its shards: the reader's hot path.

zarr-python sends every inner chunk of a read through its async codec pipeline, and its blosc
codec decodes with c-blosc 1.  For the slabs :func:`bonemet_dask.ml.samples` reads (whole inner
chunks along the first axis, full y/x) this module fetches the chunks' bytes through the same
store API (one concurrent batch of byte-range requests per slab, or the whole shard object when
the slab is the whole shard), decodes each with imagecodecs (c-blosc2 decodes the blosc 1
frames zarr writes) and places it in the slab: ``benchmarks/bench_samples.py`` measured it
1.3x faster per core than ``array[z0:z1]``.  It mirrors :mod:`bonemet_dask.kernels.shard`
(the writer's one-pass encoder) and, like it, handles only the layouts this project writes:
one ``sharding_indexed`` codec with its index at the end (``bytes`` + ``crc32c``), ``bytes``
plus at most one blosc or zstd compressor inside.  :func:`shard_layout` returns None for
anything else and the caller reads through zarr.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import google_crc32c
import imagecodecs
import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from bonemet_dask.kernels.shard import plain_sharding

__all__ = ["IndexCache", "ShardLayout", "SlabPool", "read_slab", "shard_layout"]

_EMPTY: Final = 2**64 - 1
_BLOSC2: Final = bool(getattr(getattr(imagecodecs, "BLOSC2", None), "available", False))


@dataclass(frozen=True)
class ShardLayout:
    """What :func:`read_slab` needs to know about a sharded array."""

    path: str
    shape: tuple[int, int, int]
    dtype: np.dtype[Any]
    chunks: tuple[int, int, int]
    shards: tuple[int, int, int]
    codec: str
    fill_value: Any
    encode_key: Any

    @property
    def per_shard(self) -> tuple[int, int, int]:
        """Inner chunks per shard along each axis."""
        return tuple(s // c for s, c in zip(self.shards, self.chunks, strict=True))  # type: ignore[return-value]

    @property
    def index_bytes(self) -> int:
        """Size of a shard's index: (offset, nbytes) uint64 per chunk, then its CRC32C."""
        return int(np.prod(self.per_shard)) * 16 + 4


def shard_layout(array: zarr.Array) -> ShardLayout | None:
    """The layout of a 3-D array this module reads, or None (then read through zarr)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    found = plain_sharding(array) if array.ndim == 3 else None
    if found is None:
        return None
    sharding, compressor = found
    codec = "none"
    if compressor is not None:
        if isinstance(compressor, BloscCodec):
            codec = "blosc"
        elif isinstance(compressor, ZstdCodec) and not compressor.checksum:
            codec = "zstd"
        else:
            return None
    return ShardLayout(
        path=array.path,
        shape=tuple(int(n) for n in array.shape),  # type: ignore[arg-type]
        dtype=np.dtype(array.dtype).newbyteorder("<"),
        chunks=tuple(int(n) for n in sharding.chunk_shape),  # type: ignore[arg-type]
        shards=tuple(int(n) for n in array.shards),  # type: ignore[arg-type]
        codec=codec,
        fill_value=array.fill_value,
        encode_key=array.metadata.encode_chunk_key,
    )


class IndexCache:
    """The last ``size`` shard indices read (a slab narrower than its shard reuses them).

    Thread-safe: two reads of one shard at once fetch its index once.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}

    def get(self, key: str, fetch: Callable[[], np.ndarray]) -> np.ndarray:
        """The index of shard ``key``: cached, or ``fetch()`` (once, whatever the threads)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            lock = self._fetching.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            index = fetch()
            with self._lock:
                self._items[key] = index
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
                self._fetching.pop(key, None)
        return index


class SlabPool:
    """Slab arrays to reuse: a read fills a slab whose samples were all copied out.

    A fresh slab per read (17.6 MB of full-size Regist-CT) pays its page faults every time:
    slice streams, before they read planes of their own, ran up to 1.4x faster per core with
    reused slabs (``benchmarks/bench_samples.py`` data); the pool keeps at most ``size``
    idle arrays.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._idle: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """An idle array of this shape and dtype, or a new one.

        Then an idle array of another shape is dropped: the pool never keeps more arrays
        alive than were given back.
        """
        with self._lock:
            for k, array in enumerate(self._idle):
                if array.shape == shape and array.dtype == dtype:
                    return self._idle.pop(k)
            if self._idle:
                self._idle.pop(0)
        return np.empty(shape, dtype=dtype)

    def give(self, array: np.ndarray) -> None:
        """Return an array nothing refers to any more."""
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(array)


_LOCAL = threading.local()


def _chunk_buffer(layout: ShardLayout) -> np.ndarray:
    """The calling thread's buffer for one decoded chunk (reused: no allocation per chunk)."""
    buffer = getattr(_LOCAL, "chunk", None)
    if buffer is None or buffer.shape != layout.chunks or buffer.dtype != layout.dtype:
        buffer = _LOCAL.chunk = np.empty(layout.chunks, dtype=layout.dtype)
    return buffer


def _parse_index(data: Any, layout: ShardLayout, key: str) -> np.ndarray:
    data = bytes(data)
    body, crc = data[:-4], int.from_bytes(data[-4:], "little")
    if google_crc32c.value(body) != crc:
        raise ValueError(f"shard {key!r}: its index fails its CRC32C check; the shard is corrupt")
    return np.frombuffer(body, dtype="<u8").reshape((*layout.per_shard, 2))


def _decode(data: Any, layout: ShardLayout, out: np.ndarray) -> None:
    flat = out.reshape(-1).view(np.uint8)
    if layout.codec == "blosc":
        if _BLOSC2:  # c-blosc2 reads blosc 1 frames, faster
            imagecodecs.blosc2_decode(data, out=flat)
        else:  # pragma: no cover - imagecodecs builds without blosc2
            imagecodecs.blosc_decode(data, out=flat)
    elif layout.codec == "zstd":
        imagecodecs.zstd_decode(data, out=flat)
    else:
        flat[:] = np.frombuffer(data, dtype=np.uint8)


def read_slab(
    store: Store,
    layout: ShardLayout,
    z0: int,
    z1: int,
    *,
    cache: IndexCache,
    pool: SlabPool | None = None,
    planes: bool = False,
) -> np.ndarray | list[np.ndarray]:
    """Slices ``[z0, z1)`` of the array (``z0`` and ``z1`` on inner-chunk boundaries or the end).

    Each chunk's bytes are fetched once: a slab spanning a whole shard reads the shard object
    in one request; a narrower one reads the shard's index (once while cached) and then only
    its chunks' byte ranges, all in one concurrent batch.  ``pool`` lends the result array;
    with ``planes`` the result is a list of independent 2-D slices instead (what slice
    samples are: no copy out of a shared slab).

    Raises
    ------
    ValueError
        If ``z0``/``z1`` are not chunk-aligned, or a shard's index is corrupt.
    """
    depth = layout.chunks[0]
    n, height, width = layout.shape
    if z0 % depth or (z1 % depth and z1 != n) or not 0 <= z0 < z1 <= n:
        raise ValueError(f"slab [{z0}, {z1}) of {layout.path!r} is not aligned to {depth} slices")
    shape, native = (z1 - z0, height, width), layout.dtype.newbyteorder("=")
    if planes:
        out: list[np.ndarray] = [np.empty(shape[1:], dtype=native) for _ in range(shape[0])]
        result: np.ndarray | list[np.ndarray] = out
    else:
        result = np.empty(shape, dtype=native) if pool is None else pool.take(shape, native)
        out = list(result)
    prototype = default_buffer_prototype()
    step = layout.shards[0]
    requests: list[tuple[tuple[int, int, int], str, int, int]] = []  # (chunk, key, start, end)
    whole: dict[str, Any] = {}
    for shard in range(z0 // step, (z1 - 1) // step + 1):
        key = f"{layout.path}/{layout.encode_key((shard, 0, 0))}"
        first, last = max(z0, shard * step), min(z1, (shard + 1) * step, n)
        rows = range((first - shard * step) // depth, -(-(last - shard * step) // depth))
        if last - first == min(step, n - shard * step):  # the whole shard: one request
            whole[key] = (shard, rows)
            continue

        def fetch_index(key: str = key) -> np.ndarray:
            buffer = sync(store.get(key, prototype, SuffixByteRequest(layout.index_bytes)))
            return _parse_index(_bytes(buffer, key), layout, key)

        index = cache.get(key, fetch_index)
        for cz in rows:
            for cy in range(layout.per_shard[1]):
                for cx in range(layout.per_shard[2]):
                    start, size = (int(v) for v in index[cz, cy, cx])
                    if start != _EMPTY:
                        requests.append(((shard, cz, cy * layout.per_shard[2] + cx), key,
                                         start, start + size))  # fmt: skip
                    else:
                        _place(out, None, layout, shard * step + cz * depth - z0, cy, cx)

    async def fetch() -> list[Any]:
        gets = [store.get(key, prototype, None) for key in whole]
        gets += [store.get(key, prototype, RangeByteRequest(a, b)) for _, key, a, b in requests]
        return await asyncio.gather(*gets)

    buffers = sync(fetch())
    chunk = _chunk_buffer(layout)
    for (key, (shard, rows)), buffer in zip(whole.items(), buffers[: len(whole)], strict=True):
        data = _bytes(buffer, key)
        index = _parse_index(data[-layout.index_bytes :], layout, key)
        for cz in rows:
            for cy in range(layout.per_shard[1]):
                for cx in range(layout.per_shard[2]):
                    start, size = (int(v) for v in index[cz, cy, cx])
                    z = shard * step + cz * depth - z0
                    if start == _EMPTY:
                        _place(out, None, layout, z, cy, cx)
                    else:
                        _decode(data[start : start + size], layout, chunk)
                        _place(out, chunk, layout, z, cy, cx)
    for ((shard, cz, yx), key, _, _), buffer in zip(requests, buffers[len(whole) :], strict=True):
        _decode(_bytes(buffer, key), layout, chunk)
        cy, cx = divmod(yx, layout.per_shard[2])
        _place(out, chunk, layout, shard * step + cz * depth - z0, cy, cx)
    return result


def _bytes(buffer: Any, key: str) -> Any:
    if buffer is None:
        raise ValueError(f"shard {key!r} is missing from the store; the scan is incomplete")
    return buffer.as_numpy_array()


def _place(out: list[np.ndarray], chunk: np.ndarray | None, layout: ShardLayout, z: int,
           cy: int, cx: int) -> None:  # fmt: skip
    """Copy a decoded chunk (None: the fill value) into its planes ``out[z:z + depth]``."""
    dz, dy, dx = layout.chunks
    height, width = out[0].shape
    y, x = cy * dy, cx * dx
    if y >= height or x >= width:
        return  # a chunk past the image's edge (never written)
    h, w = min(dy, height - y), min(dx, width - x)
    for k in range(min(dz, len(out) - z)):
        if chunk is None:
            out[z + k][y : y + h, x : x + w] = layout.fill_value
        else:
            out[z + k][y : y + h, x : x + w] = chunk[k, :h, :w]
