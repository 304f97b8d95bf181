"""Peak worker memory of one full-size FDK slab: does reconstruction fit a 4 GiB worker?

``.venv/bin/python benchmarks/full_slab_memory.py``

Builds the reconstruction graph ``run`` builds for one published-size scan (260 projections of
2688 x 4032 onto 2685 x 2428 x 2588) over lazy random projections, with slabs as
``reconstruct_store`` chooses them (or ``--slab-slices``), and computes one slab from the middle
of the volume on ``bm.connect("local")`` with two one-thread workers (the memory budget per
worker is ``bonemet.memory-budget``).  Prints the wall time, the workers' compute, and each
worker's peak resident memory (``VmHWM``, reset before the slab), or the error when a worker is
killed.
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slab-slices", type=int, default=None,
                        help="slices per slab (default: as reconstruct_store chooses)")  # fmt: skip
    args = parser.parse_args()

    import dask
    import dask.array as da
    import xarray as xr
    from chain_rates import worker_peaks
    from distributed import get_task_stream

    import bonemet_dask as bm
    from bonemet_dask import config
    from bonemet_dask.geometry import VolumeGrid
    from bonemet_dask.ops.plan_chain import ScanSizes, _layout, _recon_layout
    from bonemet_dask.ops.reconstruct import reconstruct, slab_slices_in_shard

    sizes = ScanSizes.published()
    g = sizes.geometry
    shape = (int(g.angles_deg.size), g.n_rows, g.n_cols)
    chunks = _layout(shape, "projections", "uint16").chunks
    data = da.random.randint(20000, 60000, size=shape, chunks=chunks, dtype=np.uint16)
    lazy = xr.DataArray(data, dims=("angle", "row", "col"))
    out = _recon_layout(sizes)
    grid = VolumeGrid(sizes.recon, g.voxel_size)
    depth = args.slab_slices or slab_slices_in_shard(out.slices_per_shard, grid, g)
    volume = reconstruct(lazy, g, grid=grid, slab_slices=depth, air=65535.0)
    mid = (sizes.recon[0] // 2 // depth) * depth
    slab = volume.data[mid : mid + depth]
    budget = config.memory_budget_bytes() / 2**30
    print(f"volume {sizes.recon}, slab {slab.shape}, budget {budget:.1f} GiB a worker", flush=True)
    with (
        dask.config.set({"bonemet.cluster.dashboard-address": "127.0.0.1:0"}),
        bm.connect("local", n_workers=2, threads_per_worker=1) as client,
    ):
        try:
            with worker_peaks(client) as peak, get_task_stream(client=client) as stream:
                started = time.perf_counter()
                result = slab.compute()
                wall = time.perf_counter() - started
        except Exception as err:  # a worker killed for memory: the finding, not a crash
            print(f"FAILED: {type(err).__name__}: {err}")
            return
        compute = sum(s["stop"] - s["start"] for task in stream.data
                      for s in task["startstops"] if s["action"] == "compute")  # fmt: skip
        finite = bool(np.isfinite(result).all())
        print(f"wall {wall:.1f} s, compute {compute:.1f} core-s, finite {finite}")
        peaks = {address: round(b / 2**30, 2) for address, b in peak["per_worker_bytes"].items()}
        print(f"peak per worker (GiB, {peak['scope']}): {peaks}")


if __name__ == "__main__":
    main()
