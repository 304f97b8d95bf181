"""Cone-beam backprojection speed (GUPS) of ``bonemet_dask.kernels.fdk`` and of RTK's CPU FDK.

Run: ``.venv/bin/python benchmarks/bench_fdk.py [--sizes 128 256] [--threads 1 2] [--no-rtk]``

GUPS = projections x voxels / second.  The workload is the DESIGN.md section 7 target: 260
projections (the BoneMet 260 x 0.8 deg short scan) of a 256 x 384 detector backprojected onto
``n^3`` volumes whose voxel spans ``256 / n`` isocentre pixels (the whole volume lies inside the
field-of-view cylinder, so no voxel is skipped).  Each timing is the best of ``--repeat`` runs
after a warm-up (numba JIT, cache).  The full-scan time is extrapolated from the best 2-thread
rate for the 4.39e12 updates of one full-size BoneMet scan (260 x 2588 x 2428 x 2685).

RTK (``pip install itk-rtk``) is timed on the same geometry when it imports:
``ParkerShortScanImageFilter`` then ``FDKConeBeamReconstructionFilter`` (Hamming window 0.54 is
not RTK's default; RTK's ramp with its Hann cut-off left at 0 is used: the filter is not the cost).
Its time includes RTK's own filtering (small at this size); ours is the backprojection alone and,
separately, pre-weighting + filtering.  Geometry mapping (ours -> RTK
``ThreeDCircularProjectionGeometry.AddProjection(sid, sdd, gantry_angle, proj_offset_x,
proj_offset_y)``): ``sid = source_to_object``, ``sdd = source_to_detector``, ``gantry_angle =
angle_deg``, ``proj_offset_x = -cor_offset * detector_pixel`` and ``proj_offset_y`` from
``optical_axis_row`` (both 0 here); RTK's rotation axis is its ``y`` and its projection images are
``(rows, cols)`` with ``v`` along ``+y``, so our ``(slice, y, x)`` volume is RTK's ``(y, z, x)``
volume up to flips of ``y`` (rows down vs up) and the sense of rotation.  Both reconstructions
perform the same number of voxel updates; only speed is compared here (accuracy of our FDK is
checked against analytic phantoms in ``tests/kernels/test_fdk.py``).
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from bonemet_dask.geometry import ConeGeometry, VolumeGrid
from bonemet_dask.kernels.fdk import backproject, preweight_and_filter

FULL_SCAN_UPDATES = 260 * 2588 * 2428 * 2685  # 4.39e12 (reading/reconstruction-and-io-anchors.md)


def make_geometry() -> ConeGeometry:
    """The benchmark scanner: 256 x 384 pixels of 35 um, magnification 3.5 (10 um at the axis)."""
    return ConeGeometry(84.0, 294.0, 0.035, 256, 384, np.arange(260) * 0.8)


def best_of(fn, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def time_ours(geo: ConeGeometry, n: int, threads: int, repeat: int) -> float:
    rng = np.random.default_rng(0)
    idx = np.arange(geo.angles_deg.size)
    filtered = rng.standard_normal((idx.size, geo.n_rows, geo.n_cols)).astype(np.float32)
    grid = VolumeGrid((n, n, n), geo.voxel_size * 256 / n)
    numba.set_num_threads(threads)
    backproject(filtered[:2], geo, idx[:2], grid)  # warm-up
    out = np.zeros(grid.shape, np.float32)
    return best_of(lambda: backproject(filtered, geo, idx, grid, out=out), repeat)


def time_filter(geo: ConeGeometry, repeat: int) -> float:
    rng = np.random.default_rng(0)
    idx = np.arange(geo.angles_deg.size)
    proj = rng.random((idx.size, geo.n_rows, geo.n_cols), np.float32)
    return best_of(lambda: preweight_and_filter(proj, geo, idx), repeat)


def time_rtk(geo: ConeGeometry, n: int, threads: int, repeat: int) -> float | None:
    try:
        import itk
        from itk import RTK as rtk
    except ImportError:
        return None
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    image_type = itk.Image[itk.F, 3]
    geometry = rtk.ThreeDCircularProjectionGeometry.New()
    for angle in geo.angles_deg:
        geometry.AddProjection(geo.source_to_object, geo.source_to_detector, float(angle), 0, 0)
    rng = np.random.default_rng(0)
    data = rng.random((geo.angles_deg.size, geo.n_rows, geo.n_cols), np.float32)
    proj = itk.image_from_array(data)
    pix = geo.detector_pixel
    proj.SetSpacing([pix, pix, 1.0])
    proj.SetOrigin([-(geo.n_cols - 1) / 2 * pix, -(geo.n_rows - 1) / 2 * pix, 0.0])
    h = geo.voxel_size * 256 / n
    volume = rtk.ConstantImageSource[image_type].New()
    volume.SetOrigin([-(n - 1) / 2 * h] * 3)
    volume.SetSpacing([h] * 3)
    volume.SetSize([n] * 3)
    volume.SetConstant(0.0)

    def run() -> None:
        parker = rtk.ParkerShortScanImageFilter[image_type].New()
        parker.SetInput(proj)
        parker.SetGeometry(geometry)
        fdk = rtk.FDKConeBeamReconstructionFilter[image_type].New()
        fdk.SetInput(0, volume.GetOutput())
        fdk.SetInput(1, parker.GetOutput())
        fdk.SetGeometry(geometry)
        fdk.Update()

    return best_of(run, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-rtk", action="store_true")
    args = parser.parse_args()
    geo = make_geometry()
    n_proj = geo.angles_deg.size
    print(f"detector {geo.n_rows}x{geo.n_cols}, {n_proj} projections, numba {numba.__version__}")
    seconds = time_filter(geo, args.repeat)
    print(f"preweight_and_filter (1 process): {seconds:.2f} s for {n_proj} projections")
    best_rate = 0.0
    for n in args.sizes:
        updates = n_proj * n**3
        for threads in args.threads:
            seconds = time_ours(geo, n, threads, args.repeat)
            rate = updates / seconds / 1e9
            best_rate = max(best_rate, rate)
            line = f"{n}^3 {threads} thread(s): ours {seconds:7.2f} s = {rate:.3f} GUPS"
            if not args.no_rtk:
                rtk_seconds = time_rtk(geo, n, threads, args.repeat)
                if rtk_seconds is None:
                    line += " | RTK: itk-rtk does not import (pip install itk-rtk)"
                else:
                    rtk_rate = updates / rtk_seconds / 1e9
                    line += (
                        f" | RTK FDK+Parker {rtk_seconds:7.2f} s = {rtk_rate:.3f} GUPS"
                        f" | ours/RTK speed {rtk_seconds / seconds:.2f}x"
                    )
            print(line, flush=True)
    hours = FULL_SCAN_UPDATES / (best_rate * 1e9) / 3600
    print(
        f"full BoneMet scan ({FULL_SCAN_UPDATES:.3g} updates) at {best_rate:.3f} GUPS: "
        f"{hours:.2f} h of backprojection"
    )


if __name__ == "__main__":
    main()
