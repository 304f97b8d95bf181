"""Dask scaling of the FDK graph: one worker against two, same volume, same machine, one run.

Run: ``.venv/bin/python benchmarks/bench_reconstruct.py [--size 128]``

Each worker has one thread and numba is pinned to one thread, so the ratio measures the graph's
parallelism (slabs x angle blocks, tree reduction), not numba's.  The projections are read from
a temporary Zarr store (chunks of 26 angles x 32 rows), as a real run reads the converted store.
Prints GUPS (projections x voxels / s) for each and the speed-up (DESIGN.md target: >= 1.8x).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import dask.array as da
import numpy as np
import xarray as xr

os.environ["NUMBA_NUM_THREADS"] = "1"  # inherited by the worker processes

from distributed import Client, LocalCluster

from bonemet_dask.geometry import ConeGeometry, VolumeGrid
from bonemet_dask.ops.reconstruct import reconstruct
from bonemet_dask.synth import line_integrals
from bonemet_dask.synth.primitives import Phantom, Term, ellipsoid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    n = args.size
    geometry = ConeGeometry(84.0, 294.0, 0.035 * 2688 / n, n, int(n * 1.5),
                            np.arange(260) * 0.8)  # fmt: skip
    phantom = Phantom()
    phantom.add(Term(0.05, (ellipsoid((0, 0, 0), (3.0, 2.5, 3.5)),)))
    projections = np.stack([line_integrals(phantom, geometry, a) for a in geometry.angles_deg])
    # read from a Zarr store as a real run does: the graph references chunks, no embedded data
    store = tempfile.mkdtemp(prefix="bench_reconstruct_") + "/projections.zarr"
    da.from_array(projections.astype(np.float32), chunks=(26, 32, -1)).to_zarr(store)
    data = xr.DataArray(
        da.from_zarr(store), dims=("angle", "row", "col"), attrs={"kind": "line_integral"}
    )
    grid = VolumeGrid((n, n, n), geometry.voxel_size)
    updates = 260 * n**3
    timings = {}
    for workers in (1, 2):
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, dashboard_address="127.0.0.1:0"
            ) as cluster,
            Client(cluster) as client,
        ):
            volume = reconstruct(data, geometry, grid=grid, slab_slices=max(8, n // 8))
            client.compute(volume.data.sum()).result()  # warm: numba cache, imports
            started = time.perf_counter()
            client.compute(volume.data.sum()).result()
            timings[workers] = time.perf_counter() - started
        print(f"{workers} worker(s): {timings[workers]:.2f} s, "
              f"{updates / timings[workers] / 1e9:.3f} GUPS", flush=True)  # fmt: skip
    print(f"speed-up 1 -> 2 workers: {timings[1] / timings[2]:.2f}x")


if __name__ == "__main__":
    main()
