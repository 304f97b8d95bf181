"""Bytes a viewer reads from a pyramided Recon-CT: the coarsest level, and one full-res z-plane.

Writes a smooth synthetic 8-bit scan of ``--shape`` with the store's CT layout, builds its
pyramid, then reads through a store wrapper that counts every ``get`` (objects and bytes, as an
object store would serve them): the coarsest level whole, and one z-plane of level 0. The
full-size figures (2685 x 2428 x 2588) follow from the layout, printed beside the measurement.

    python benchmarks/bench_pyramid.py --shape 671 607 647
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time

import numpy as np
import zarr
from zarr.storage import LocalStore, WrapperStore

from bonemet_dask.io.pyramid import level_array, plan_levels
from bonemet_dask.io.store import ImageLayout, create_image_group, set_status, write_shard
from bonemet_dask.ops.pyramid import pyramid

logger = logging.getLogger("bench_pyramid")
FULL = (2685, 2428, 2588)


class CountingStore(WrapperStore):
    """Counts the objects and bytes every ``get`` returns."""

    objects = 0
    nbytes = 0

    async def get(self, key, prototype, byte_range=None):
        buf = await self._store.get(key, prototype, byte_range)
        if buf is not None and not key.endswith("zarr.json"):
            type(self).objects += 1
            type(self).nbytes += len(buf)
        return buf

    async def get_partial_values(self, prototype, key_ranges):
        out = await self._store.get_partial_values(prototype, key_ranges)
        for buf in out:
            if buf is not None:
                type(self).objects += 1
                type(self).nbytes += len(buf)
        return out


def scan(shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth phantom-like volume: a bright ellipsoid shell with noise."""
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    r = np.sqrt(z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2)
    rng = np.random.default_rng(0)
    out = np.where((r > 0.5) & (r < 0.7), 200, 40).astype(np.uint8)
    return out + rng.integers(0, 8, shape, dtype=np.uint8)


def read(store_path: str, group_path: str, level: int, index) -> tuple[int, int, float]:
    CountingStore.objects = CountingStore.nbytes = 0
    store = CountingStore(LocalStore(store_path, read_only=True))
    group = zarr.open_group(store, path=group_path, mode="r", use_consolidated=False)
    array, *_ = level_array(group, level)
    t = time.perf_counter()
    array[index]
    return CountingStore.objects, CountingStore.nbytes, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=(671, 607, 647))
    args = parser.parse_args()
    shape = tuple(args.shape)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/s.zarr"
        layout = ImageLayout.default_for("ct", shape, "uint8", voxel_size_um=10.0)
        layout = ImageLayout(**{**layout.__dict__, "codec": "blosc-zstd"})
        group = create_image_group(zarr.open_group(path, mode="w"), "recon_ct/1/both/week0",
                                   layout, attrs={"component": "recon_ct", "mouse": "1",
                                                  "fingerprint": "bench"})  # fmt: skip
        data = scan(shape)
        for i in range(layout.n_shards):
            write_shard(group["0"], i, data[layout.shard_slices(i)])
        set_status(group, "complete")
        t = time.perf_counter()
        report = pyramid(path)
        logger.info("pyramid of %s: %s in %.1f s", shape, report.counts(), time.perf_counter() - t)
        levels = plan_levels(shape, ("z", "y", "x"), (10.0,) * 3, 1)
        coarsest = len(levels) - 1
        for name, level, index in (
            ("coarsest level, whole", coarsest, ...),
            ("level 0, one z-plane", 0, (shape[0] // 2, slice(None), slice(None))),
        ):
            objects, nbytes, seconds = read(path, "recon_ct/1/both/week0", level, index)
            logger.info("%-24s %3d objects %10.2f MB stored in %.2f s", name, objects,
                        nbytes / 1e6, seconds)  # fmt: skip
    full = plan_levels(FULL, ("z", "y", "x"), (10.0,) * 3, 1)
    last = full[-1]
    plane = math.ceil(FULL[1] / 256) * math.ceil(FULL[2] / 256)
    logger.info("full size %s: levels %s; coarsest %s = %.1f MB decoded, %d object(s); a "
                "z-plane at level 0 touches %d chunks (64 x 256 x 256: %.0f MiB decoded)",
                FULL, [lv.shape for lv in full], last.shape, math.prod(last.shape) / 1e6,
                last.n_shards, plane, plane * 4)  # fmt: skip


if __name__ == "__main__":
    main()
