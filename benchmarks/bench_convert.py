"""End-to-end conversion throughput per core against a raw imagecodecs decode of the same PNGs.

Run: ``RAYON_NUM_THREADS=1 NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/bench_convert.py``

It writes one shard's worth of full-size synthetic Recon-CT slices (64 x 2428 x 2588, the
phantom voxelised, PNG zlib level 6 as NRecon writes) and one shard of full-size projections
(8 x 2688 x 4032, 16-bit), then times, single-threaded and best of 3 in the same run:

* ``raw decode``: ``imagecodecs.png_decode`` of every file (the DESIGN.md reference),
* ``convert shard``: our whole task, read + decode + per-slice XXH3 digest + compress + sharded
  Zarr write (our one-pass shard encoder), for each codec; then zarr-python's own write of the
  same block for comparison.

The ratio ``raw decode time / convert time`` is the DESIGN.md target (>= 0.9).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import fsspec
import imagecodecs
import numpy as np
import zarr

from bonemet_dask.io.store import ImageLayout, create_image_group
from bonemet_dask.ops.convert import ShardTask, convert_shard
from bonemet_dask.synth import SynthConfig, voxelize
from bonemet_dask.synth.anatomy import hindlimb_phantom, pose_matrix, random_pose
from bonemet_dask.synth.generate import plan_mice

CODECS = (("blosc-zstd", 1), ("blosc-lz4", 5), ("zstd", 1))


def best_of(func: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return min(times)


def write_slices(folder: Path, images: np.ndarray) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, image in enumerate(images):
        path = folder / f"851_rec{k:08d}.png"
        path.write_bytes(imagecodecs.png_encode(image, level=6))
        paths.append(str(path))
    return paths


def ct_slab(n: int) -> np.ndarray:
    cfg = SynthConfig(size="full", seed=1)
    grid = cfg.recon_grid()
    legs = plan_mice(cfg)[0].legs
    world = hindlimb_phantom(legs, 2, pose_matrix(random_pose(np.random.default_rng(1))))
    start = grid.shape[0] // 2
    mu = voxelize(world, grid.slab(start, start + n), supersample=1)
    noise = np.random.default_rng(0).normal(0, 2.0, mu.shape)
    return np.clip(np.rint(mu * (255 / 0.11) + noise), 0, 255).astype(np.uint8)


def projection_slab(n: int) -> np.ndarray:
    from bonemet_dask.synth import line_integrals

    cfg = SynthConfig(size="full", seed=1)
    geo = cfg.geometry()
    legs = plan_mice(cfg)[0].legs
    world = hindlimb_phantom(legs, 2, pose_matrix(random_pose(np.random.default_rng(1)))).pack()
    rng = np.random.default_rng(0)
    views = [line_integrals(world, geo, float(a)) for a in geo.angles_deg[:n]]
    return np.stack([np.clip(rng.poisson(40000 * np.exp(-p)), 0, 65535) for p in views]).astype(
        np.uint16
    )


def measure(name: str, images: np.ndarray, kind: str, workdir: Path) -> None:
    paths = write_slices(workdir / name, images)
    blobs = [Path(p).read_bytes() for p in paths]
    decoded_mb = images.nbytes / 1e6
    png_mb = sum(map(len, blobs)) / 1e6
    raw = best_of(lambda: [imagecodecs.png_decode(b) for b in blobs])
    fs = fsspec.filesystem("file")
    base = ImageLayout.default_for(kind, images.shape, str(images.dtype), voxel_size_um=10.0)
    task = ShardTask(
        "scan", 0, 0, images.shape[0], tuple(paths), images.shape[1:], str(images.dtype)
    )
    print(
        f"{name}: {images.shape} {images.dtype}, PNG {png_mb:.0f} MB (PNG ratio "
        f"{decoded_mb / png_mb:.2f}); raw imagecodecs decode {raw:.2f} s "
        f"({decoded_mb / raw:.0f} MB/s)",
        flush=True,
    )
    for codec, level in CODECS:
        layout = replace(base, codec=codec, level=level)
        store = workdir / f"{name}-{codec}-{level}.zarr"
        root = zarr.open_group(str(store), mode="w")
        create_image_group(root, "scan", layout, attrs={})
        seconds = best_of(lambda store=store: convert_shard(task, str(store), fs))
        stored = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e6
        print(
            f"  {codec:10s} {level:2d} {seconds:6.2f} s {decoded_mb / seconds:5.0f} MB/s  "
            f"ratio to raw decode {raw / seconds:.2f}  "
            f"store {stored:6.1f} MB (compression {decoded_mb / stored:.2f})",
            flush=True,
        )
        if (codec, level) == CODECS[0]:  # the default: also time zarr-python's own writer
            array = zarr.open_group(str(store), mode="r+")["scan/0"]

            def own_write(array=array) -> None:
                array[:] = images

            own = best_of(own_write)
            print(
                f"  {codec:10s} {level:2d} zarr-python writing the decoded block itself: "
                f"{own:.2f} s ({decoded_mb / own:.0f} MB/s)",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct-slices", type=int, default=64)
    parser.add_argument("--projections", type=int, default=8)
    args = parser.parse_args()
    import numcodecs

    numcodecs.blosc.set_nthreads(1)  # per core: blosc would otherwise use every core
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        measure("recon_ct", ct_slab(args.ct_slices), "ct", work)
        measure("rotation_xray", projection_slab(args.projections), "projections", work)


if __name__ == "__main__":
    main()
