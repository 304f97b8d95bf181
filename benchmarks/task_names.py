"""Task names of one FDK reconstruction graph, as the Dask dashboard shows them.

Run: ``.venv/bin/python benchmarks/task_names.py [--size tiny|small] [--json] [--compute]
[--stage]``

Generates one synthetic scan (``rotation_xray`` only), converts it to a store, opens it the way
the store stage does (projections chunked as the Zarr inner chunks, ``(8, 128, n_cols)``) and
builds, without computing, the reconstruction graph with 64-slice slabs.  Prints the task count
per :func:`dask.utils.key_split` name of the materialised graph, the input's own read tasks
included.  ``--compute`` also times ``.compute()`` with the threaded scheduler (best of
``--repeat`` runs, after one warm-up that compiles the numba kernels).  ``--stage`` counts the
whole ``reconstruct`` stage instead, as the dashboard shows it during ``run``: the graph that
``reconstruct_store(..., compute=False)`` returns (reads, FDK, grey window, one write per
shard, the finish task).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import dask
import xarray as xr
from dask.utils import key_split

from bonemet_dask.io.xr import open_store
from bonemet_dask.ops.convert import convert
from bonemet_dask.ops.reconstruct import reconstruct
from bonemet_dask.synth import SynthConfig, generate

SCAN = "rotation_xray/851/both/week0"


def scan_projections(workdir: Path, size: str) -> xr.DataArray:
    """The synthetic scan's projections, opened from a converted store as the store stage does."""
    config = SynthConfig(mice=1, weeks=1, size=size, seed=0, components=("rotation_xray",))
    generate(str(workdir / "src"), config)
    store = str(workdir / "store.zarr")
    convert(workdir / "src", store)
    node = open_store(store)[SCAN]
    return node.dataset["image"].assign_attrs(bonemet=dict(node.dataset.attrs))


def stage_graph(workdir: Path, size: str, as_json: bool) -> None:
    """Task names of the reconstruct stage's whole graph for the synthetic scan."""
    from bonemet_dask.ops.reconstruct_store import reconstruct_store

    scan_projections(workdir, size)
    pending = reconstruct_store(str(workdir / "store.zarr"), str(workdir / "out.zarr"),
                                slices_per_shard=64, compute=False)  # fmt: skip
    graph = dict(pending.__dask_graph__())
    counts = Counter(key_split(key) for key in graph)
    if as_json:
        print(json.dumps({"size": size, "tasks": dict(counts.most_common()), "total": len(graph)}))
        return
    width = max(len(name) for name in counts)
    for name, n in counts.most_common():
        print(f"{name:<{width}}  {n:>6}")
    print(f"{'total':<{width}}  {len(graph):>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "small"), default="small")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.add_argument("--compute", action="store_true", help="also time .compute()")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs with --compute")
    parser.add_argument("--stage", action="store_true", help="the whole reconstruct stage")
    args = parser.parse_args()
    if args.stage:
        with tempfile.TemporaryDirectory() as tmp:
            stage_graph(Path(tmp), args.size, args.json)
        return
    with tempfile.TemporaryDirectory() as tmp:
        projections = scan_projections(Path(tmp), args.size)
        volume = reconstruct(projections, slab_slices=64)
        graph = dict(volume.data.__dask_graph__())
        counts = Counter(key_split(key) for key in graph)
        timings = []
        if args.compute:
            with dask.config.set(scheduler="threads"):
                volume.data.compute()  # warm-up: numba compilation, page cache
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    volume.data.compute()
                    timings.append(time.perf_counter() - start)
    summary = {
        "size": args.size,
        "projections": list(projections.shape),
        "projection_chunksize": list(projections.data.chunksize),
        "projection_chunks": list(projections.data.numblocks),
        "volume": list(volume.shape),
        "tasks": dict(counts.most_common()),
        "total": len(graph),
    }
    if timings:
        summary["compute_s"] = [round(t, 3) for t in timings]
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"size={args.size}  projections {tuple(projections.shape)} in chunks "
          f"{tuple(projections.data.chunksize)}  ->  volume {tuple(volume.shape)}")  # fmt: skip
    width = max(len(name) for name in counts)
    print(f"{'task name':<{width}}  {'tasks':>6}")
    for name, n in counts.most_common():
        print(f"{name:<{width}}  {n:>6}")
    print(f"{'total':<{width}}  {len(graph):>6}")
    if timings:
        print("compute (threads), s: " + ", ".join(f"{t:.3f}" for t in timings)
              + f"  (best {min(timings):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
