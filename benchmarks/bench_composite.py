"""Composite and threshold throughput of the Dask graph vs plain numpy over the same data.

Run: ``.venv/bin/python benchmarks/bench_composite.py [--slices 512] [--repeats 3]``

Both inputs are in memory (two uint8 volumes of ``slices x 539 x 509``, the Regist-CT slice size,
random grey levels so that about 70 % of voxels are bone in each and the change codes are mixed).
Every row is the best of ``--repeats`` runs in this process, as input GB/s (bytes of the input
volumes read per second) and as a ratio to the best plain numpy pass measured in the same run:

* numpy, masked assignment: STYLE.md's kernel (``out[b & f] = 180`` ...) on the whole arrays;
* numpy, arithmetic: ``60 b + 240 f - 120 b f`` in uint8 on the whole arrays (the fastest
  plain-numpy formulation found, no Dask): with the masked version, the peer of the target;
* ``bm.composite`` with 1 and 2 threads: the Dask graph over inputs held as contiguous chunks
  of 64 x 256 x 256 (what ``open_store`` decodes), stored into a preallocated array with
  ``dask.array.store``;
* threshold: ``volume >= 75`` in numpy vs the Dask map of
  :func:`~bonemet_dask.kernels.composite.threshold_mask`;
* a copy of one volume (``np.copyto``): the memory-bandwidth reference.

The target (DESIGN.md-style, per core): the 1-thread graph reaches >= 0.8x the best numpy pass.
A markdown table is printed; copy it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import dask
import dask.array as da
import numpy as np
import xarray as xr

import bonemet_dask as bm
from bonemet_dask._backend import meta_like
from bonemet_dask.kernels.composite import threshold_composite, threshold_mask

SHAPE_YX = (539, 509)
CHUNKS = (64, 256, 256)


def style_composite(baseline: np.ndarray, followup: np.ndarray, level: int = 75) -> np.ndarray:
    """STYLE.md's example kernel (masked assignment), the readable reference."""
    b, f = baseline >= level, followup >= level
    out = np.zeros(baseline.shape, dtype=np.uint8)
    out[b & f], out[~b & f], out[b & ~f] = 180, 240, 60
    return out


def numpy_arithmetic(baseline: np.ndarray, followup: np.ndarray, level: int = 75) -> np.ndarray:
    """The same codes in plain numpy: ``60 b + 240 f - 120 b f`` in modular uint8 arithmetic."""
    b = (baseline >= level).view(np.uint8)
    f = (followup >= level).view(np.uint8)
    out = b * np.uint8(60)
    out += f * np.uint8(240)
    b &= f
    out -= b * np.uint8(120)
    return out


def best(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def volume(data: np.ndarray) -> xr.DataArray:
    """Dask-backed copy in contiguous chunks, as decoded Zarr chunks are (not strided views)."""
    chunked = da.from_array(data, chunks=CHUNKS).map_blocks(np.ascontiguousarray)
    with dask.config.set(scheduler="threads"):
        (chunked,) = dask.persist(chunked)
    return xr.DataArray(chunked, dims=("slice", "y", "x"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.slices, *SHAPE_YX)
    # grey levels 0..255 with ~70 % >= 75: a mix of all four codes
    baseline = rng.integers(0, 256, shape, dtype=np.uint8)
    followup = rng.integers(0, 256, shape, dtype=np.uint8)
    out = np.empty(shape, np.uint8)
    mask_out = np.empty(shape, bool)
    gb_in = 2 * baseline.nbytes / 1e9
    base_xr, follow_xr = volume(baseline), volume(followup)

    def graph(threads: int) -> Callable[[], object]:
        def run() -> None:
            result = bm.composite(base_xr, follow_xr, threshold=75)
            with dask.config.set(scheduler="threads", num_workers=threads):
                da.store(result.data, out, lock=False)

        return run

    def threshold_graph() -> None:
        data = base_xr.data
        mask = da.map_blocks(threshold_mask, data, level=75, dtype=bool, meta=meta_like(data, bool))
        with dask.config.set(scheduler="threads", num_workers=1):
            da.store(mask, mask_out, lock=False)

    # warm-up (page faults of the output, thread pool start) and a correctness check
    graph(1)()
    assert np.array_equal(out, threshold_composite(baseline, followup, level=75))
    rows = [
        ("composite, numpy masked assignment (STYLE.md), 1 core", gb_in,
         best(lambda: style_composite(baseline, followup), args.repeats)),
        ("composite, numpy arithmetic, whole array, 1 core", gb_in,
         best(lambda: numpy_arithmetic(baseline, followup), args.repeats)),
        ("composite, bm.composite Dask graph, 1 thread", gb_in, best(graph(1), args.repeats)),
        ("composite, bm.composite Dask graph, 2 threads", gb_in, best(graph(2), args.repeats)),
        ("threshold, numpy `volume >= 75`, 1 core", gb_in / 2,
         best(lambda: np.greater_equal(baseline, 75, out=mask_out), args.repeats)),
        ("threshold, Dask map of threshold_mask, 1 thread", gb_in / 2,
         best(threshold_graph, args.repeats)),
        ("memory copy of one volume (bandwidth reference)", gb_in / 2,
         best(lambda: np.copyto(out, baseline), args.repeats)),
        ("composite, threshold_composite kernel (numba), whole array, 1 core", gb_in,
         best(lambda: threshold_composite(baseline, followup, level=75), args.repeats)),
    ]  # fmt: skip
    rows.insert(-1, rows.pop())  # keep the bandwidth reference last
    numpy_composite = min(rows[0][2], rows[1][2])
    numpy_threshold = rows[4][2]
    print(
        f"\n{args.slices}x{SHAPE_YX[0]}x{SHAPE_YX[1]} uint8 x 2 inputs ({gb_in:.2f} GB), chunks "
        f"{CHUNKS}, best of {args.repeats}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, numpy {np.__version__}, dask {dask.__version__}\n"
    )
    print("| what | seconds | input GB/s | ratio to best numpy pass |")
    print("|---|---:|---:|---:|")
    for i, (name, gb, seconds) in enumerate(rows):
        reference = numpy_threshold if name.startswith("threshold") else numpy_composite
        ratio = f"{reference / seconds:.2f}x" if i != len(rows) - 1 else "-"
        print(f"| {name} | {seconds:.3f} | {gb / seconds:.2f} | {ratio} |")
    per_core = numpy_composite / rows[2][2]
    verdict = "meets" if per_core >= 0.8 else "misses"
    print(
        f"\nper core: the 1-thread graph runs at {per_core:.2f}x numpy ({verdict} the 0.8x target)"
    )


if __name__ == "__main__":
    main()
