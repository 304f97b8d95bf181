"""Check every CuPy kernel against its CPU result, and time it.  Run on a machine with a GPU.

Run: ``python benchmarks/gpu_check.py [--quick] [--json results.json]``

Each check runs the same kernel on a numpy chunk and on a CuPy chunk, reports the largest
difference (relative to the CPU result's largest magnitude) against the check's tolerance, and
times both.  GPU times are device times from CUDA events, best of ``--repeat`` after a warm-up
(compilation); the FDK checks also report GUPS (projections x voxels / s) and extrapolate one full
BoneMet scan (4.39e12 voxel updates).  A check whose kernel module is missing or fails is reported
as such; the script exits 1 if any comparison fails.  CI never runs this file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL_SCAN_UPDATES = 260 * 2588 * 2428 * 2685  # 4.39e12: one full-size BoneMet scan

CHECKS: list[tuple[str, Callable[[argparse.Namespace], list[dict]]]] = []


def check(name: str):
    def register(fn):
        CHECKS.append((name, fn))
        return fn

    return register


def gpu_time(fn, repeat: int) -> float:
    """Best device time (s) of ``fn`` over ``repeat`` runs after one warm-up."""
    import cupy

    fn()
    cupy.cuda.get_current_stream().synchronize()
    best = np.inf
    for _ in range(repeat):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        best = min(best, cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return best


def cpu_time(fn, repeat: int = 1) -> tuple[float, object]:
    best, result = np.inf, None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def rel_diff(cpu: np.ndarray, gpu) -> float:
    from bonemet_dask._backend import to_host

    ref = np.asarray(cpu, dtype=np.float64)
    scale = max(float(np.abs(ref).max()), 1e-30)
    return float(np.abs(ref - np.asarray(to_host(gpu), dtype=np.float64)).max() / scale)


def row(name, *, diff=None, tol=None, cpu_s=None, gpu_s=None, **extra) -> dict:
    ok = None if diff is None else bool(diff <= tol)
    return {"check": name, "max_rel_diff": diff, "tolerance": tol, "ok": ok,
            "cpu_s": cpu_s, "gpu_s": gpu_s, **extra}  # fmt: skip


# --------------------------------------------------------------------------------------------
# reconstruction
# --------------------------------------------------------------------------------------------


def bench_geometry(n_rows: int = 256, n_cols: int = 384):
    from bonemet_dask.geometry import ConeGeometry

    # the benchmarks/bench_fdk.py scanner: 35 um pixels, magnification 3.5, 260 x 0.8 deg
    return ConeGeometry(84.0, 294.0, 0.035 * 384 / n_cols, n_rows, n_cols, np.arange(260) * 0.8)


@check("fdk.preweight_and_filter")
def check_filter(args) -> list[dict]:
    import cupy

    from bonemet_dask.kernels import fdk

    geo = bench_geometry(512, 768)
    rng = np.random.default_rng(1)
    block = rng.random((26, 512, 768), dtype=np.float32) * 3
    idx = np.arange(26)
    cpu_s, cpu = cpu_time(lambda: fdk.preweight_and_filter(block, geo, idx))
    dev = cupy.asarray(block)
    gpu = fdk.preweight_and_filter(dev, geo, idx)
    gpu_s = gpu_time(lambda: fdk.preweight_and_filter(dev, geo, idx), args.repeat)
    return [row("preweight_and_filter 26x512x768", diff=rel_diff(cpu, gpu), tol=1e-5,
                cpu_s=cpu_s, gpu_s=gpu_s)]  # fmt: skip


@check("fdk.backproject (linear, texture) vs numba CPU")
def check_backproject(args) -> list[dict]:
    import cupy

    from bonemet_dask.geometry import VolumeGrid
    from bonemet_dask.kernels import fdk

    geo = bench_geometry()
    rng = np.random.default_rng(0)
    idx = np.arange(260)
    filtered = rng.standard_normal((260, geo.n_rows, geo.n_cols)).astype(np.float32)
    rows = []
    for n, row_offset in ((128, 0), (96, 40)):
        grid = VolumeGrid((n, n, n), geo.voxel_size * 256 / n, centre=(0.0, 0.0, 0.2))
        window = filtered[:, row_offset:]
        cpu_s, cpu = cpu_time(lambda g=grid, w=window, o=row_offset: fdk.backproject(
            w, geo, idx, g, row_offset=o))  # fmt: skip
        dev = cupy.asarray(window)
        for interpolation, tol in (("linear", 1e-4), ("texture", 5e-3)):

            def run(g=grid, d=dev, o=row_offset, how=interpolation):
                return fdk.backproject(d, geo, idx, g, row_offset=o, interpolation=how)

            gpu = run()
            gpu_s = gpu_time(run, args.repeat)
            gups = 260 * n**3 / gpu_s / 1e9
            rows.append(row(f"backproject {interpolation} {n}^3 rows {row_offset}:",
                            diff=rel_diff(cpu, gpu), tol=tol, cpu_s=cpu_s, gpu_s=gpu_s,
                            gups=gups))  # fmt: skip
    return rows


@check("fdk GUPS at benchmark and full-scan sizes")
def check_gups(args) -> list[dict]:
    import cupy

    from bonemet_dask.geometry import VolumeGrid
    from bonemet_dask.kernels import fdk

    rows = []
    idx = np.arange(260)
    cases = [("bench 256^3", bench_geometry(), (256, 256, 256), 256)]
    if not args.quick:
        cases.append(("bench 512^3", bench_geometry(), (512, 512, 512), 256))
        # one z-slab of a full-size scan: 2688 x 4032 detector, the NRecon 2428 x 2588 grid
        full = bench_geometry(2688, 4032)
        cases.append(("full-size slab 64x2428x2588", full, (64, 2428, 2588), None))
    for label, geo, shape, span in cases:
        h = geo.voxel_size * (span / shape[2] if span else 1.0)
        grid = VolumeGrid(shape, h)
        r0, r1 = fdk.row_window(geo, grid)
        window = cupy.asarray(
            np.random.default_rng(2).standard_normal((260, r1 - r0, geo.n_cols), np.float32)
        )
        out = cupy.zeros(shape, cupy.float32)
        for interpolation in ("linear", "texture"):

            def run(how=interpolation, w=window, g=grid, o=r0, acc=out, geo=geo):
                return fdk.backproject(w, geo, idx, g, row_offset=o, out=acc, interpolation=how)

            gpu_s = gpu_time(run, args.repeat)
            gups = 260 * int(np.prod(shape)) / gpu_s / 1e9
            rows.append(row(f"{label} {interpolation} (rows {r1 - r0})", gpu_s=gpu_s, gups=gups,
                            full_scan_s=FULL_SCAN_UPDATES / (gups * 1e9)))  # fmt: skip
        del window, out
        cupy.get_default_memory_pool().free_all_blocks()
    return rows


@check("ops.reconstruct backend='cupy' vs 'numpy' (dask graph, analytic phantom)")
def check_reconstruct(args) -> list[dict]:
    import dask
    import xarray as xr

    from bonemet_dask.geometry import ConeGeometry, VolumeGrid
    from bonemet_dask.ops.reconstruct import reconstruct
    from bonemet_dask.synth import line_integrals
    from bonemet_dask.synth.primitives import Phantom, Term, ellipsoid

    # the tests/kernels/test_fdk.py phantom and short scan, on a 128 x 128 detector
    geo = ConeGeometry(30.0, 120.0, 0.15, 128, 128, np.arange(260) * 0.8)
    phantom = Phantom()
    phantom.add(Term(0.05, (ellipsoid((0.0, 0.0, 0.0), (1.7, 1.4, 1.8)),)))
    phantom.add(Term(0.03, (ellipsoid((0.5, 0.3, 0.2), (0.4, 0.5, 0.6)),)))
    phantom.add(Term(-0.02, (ellipsoid((-0.6, -0.2, -0.5), (0.3, 0.3, 0.4)),)))
    sino = np.stack([line_integrals(phantom, geo, a) for a in geo.angles_deg]).astype(np.float32)
    projections = xr.DataArray(sino, dims=("angle", "row", "col"),
                               attrs={"kind": "line_integral"})  # fmt: skip
    grid = VolumeGrid((100, 96, 96), 0.045)
    out = {}
    for backend in ("numpy", "cupy"):
        volume = reconstruct(projections, geo, grid=grid, slab_slices=24, backend=backend)
        with dask.config.set(scheduler="threads"):
            seconds, out[backend] = cpu_time(lambda v=volume: v.values)
        out[backend + "_s"] = seconds
    cpu, gpu = out["numpy"].astype(np.float64), out["cupy"].astype(np.float64)
    rmse = float(np.sqrt(((cpu - gpu) ** 2).mean() / (cpu**2).mean()))
    label = "reconstruct 260x128x128 -> 100x96x96, phantom (texture; wall s incl. graph)"
    return [row(label, diff=rel_diff(cpu, gpu), tol=5e-3, cpu_s=out["numpy_s"],
                gpu_s=out["cupy_s"], rel_rmse=rmse)]  # fmt: skip


# --------------------------------------------------------------------------------------------
# segmentation, composite, RoI, metrics: one body on numpy and on cupy
# --------------------------------------------------------------------------------------------


def _host(value):
    from bonemet_dask._backend import to_host

    if isinstance(value, tuple | list):
        return type(value)(_host(v) for v in value)
    if hasattr(value, "shape"):
        return to_host(value)
    return value


def compare_kernel(label: str, fn, args: tuple, kwargs: dict, repeat: int, tol: float) -> dict:
    """Run ``fn`` on numpy ``args`` and on their CuPy copies; max difference over all outputs."""
    import cupy

    cpu_s, cpu = cpu_time(lambda: fn(*args, **kwargs))
    dev_args = tuple(cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
    gpu = _host(fn(*dev_args, **kwargs))
    gpu_s = gpu_time(lambda: fn(*dev_args, **kwargs), repeat)
    cpu_list = cpu if isinstance(cpu, tuple | list) else [cpu]
    gpu_list = gpu if isinstance(gpu, tuple | list) else [gpu]
    diff = 0.0
    for c, g in zip(cpu_list, gpu_list, strict=True):
        if hasattr(c, "shape"):
            c, g = np.asarray(c), np.asarray(g)
            if c.shape != g.shape:
                return row(label, diff=np.inf, tol=tol, cpu_s=cpu_s, gpu_s=gpu_s)
            if c.dtype.kind == "f":
                both_nan = np.isnan(c) & np.isnan(g)
                c, g = np.where(both_nan, 0, c), np.where(both_nan, 0, g)
            diff = max(diff, rel_diff(c.astype(np.float64), g.astype(np.float64)))
        else:
            diff = max(diff, 0.0 if c == g else np.inf)
    return row(label, diff=diff, tol=tol, cpu_s=cpu_s, gpu_s=gpu_s)


def grey_volume(shape, seed: int = 0) -> np.ndarray:
    """A noisy uint8 volume with bone-like blobs (values around the 75 threshold)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3)
    grey = 70 + field / field.std() * 40 + rng.normal(0, 8, shape)
    return np.clip(grey, 0, 255).astype(np.uint8)


@check("composite / threshold kernels")
def check_composite(args) -> list[dict]:
    from bonemet_dask.kernels import composite

    shape = (128, 539, 509) if not args.quick else (32, 128, 128)
    base, follow = grey_volume(shape, 1), grey_volume(shape, 2)
    return [
        compare_kernel(f"threshold_composite {shape}", composite.threshold_composite,
                       (base, follow), {"level": 75}, args.repeat, 0.0),
        compare_kernel(f"threshold_mask {shape}", composite.threshold_mask, (base,),
                       {"level": 75}, args.repeat, 0.0),
    ]  # fmt: skip


@check("segmentation kernels")
def check_segment(args) -> list[dict]:
    from bonemet_dask.kernels import segment

    shape = (128, 256, 256)
    grey = grey_volume(shape, 3)
    region = np.random.default_rng(4).random((32, 64, 64)) > 0.3
    return [
        compare_kernel("bin_bone_counts x4", segment.bin_bone_counts, (grey,),
                       {"level": 75, "factor": 4}, args.repeat, 0.0),
        compare_kernel("threshold_in_region x4", segment.threshold_in_region, (grey, region),
                       {"level": 75, "factor": 4, "start": (0, 0, 0)}, args.repeat, 0.0),
    ]  # fmt: skip


@check("RoI, junction and metrics kernels")
def check_roi_metrics(args) -> list[dict]:
    from bonemet_dask.kernels import composite, junction, metrics, roi

    shape = (60, 200, 180)
    base, follow = grey_volume(shape, 5), grey_volume(shape, 6)
    codes = composite.threshold_composite(base, follow, level=75)
    outside = roi.outside_tibia(base, kind="greyscale", level=75)
    return [
        compare_kernel("junction.bin_bone_mask x2", junction.bin_bone_mask, (base,),
                       {"level": 75, "factor": 2}, args.repeat, 0.0),
        compare_kernel("roi.outside_tibia", roi.outside_tibia, (base,),
                       {"kind": "greyscale", "level": 75}, args.repeat, 0.0),
        compare_kernel("roi.fibula_mask", roi.fibula_mask, (outside,), {}, args.repeat, 0.0),
        compare_kernel("metrics.slice_metrics (composite)", metrics.slice_metrics, (codes,),
                       {"kind": "composite", "pixel_mm": (0.01, 0.01)}, args.repeat, 1e-9),
        compare_kernel("metrics.slice_metrics (greyscale)", metrics.slice_metrics, (base,),
                       {"kind": "greyscale", "pixel_mm": (0.01, 0.01)}, args.repeat, 1e-9),
    ]  # fmt: skip


@check("resample.affine_block (numba CPU vs cupyx affine_transform)")
def check_resample(args) -> list[dict]:
    from scipy.spatial.transform import Rotation

    from bonemet_dask.kernels import resample

    shape = (128, 256, 256) if args.quick else (256, 539, 509)
    grey = grey_volume(shape, 7)
    matrix = Rotation.from_euler("xyz", (5.0, -3.0, 2.0), degrees=True).as_matrix()
    centre = (np.asarray(shape) - 1) / 2
    offset = centre - matrix @ centre + np.array([1.3, -2.2, 0.7])
    common = {"matrix": matrix, "offset": offset, "box_lo": (0, 0, 0), "in_shape": shape,
              "out_start": (0, 0, 0), "out_shape": shape}  # fmt: skip
    rows = []
    for dtype, tol in ((np.uint8, 1 / 255), (np.float32, 1e-4)):
        volume = grey.astype(dtype)
        rows.append(compare_kernel(f"affine_block order 1 {dtype.__name__} {shape}",
                                   resample.affine_block, (volume,), {**common, "order": 1},
                                   args.repeat, tol))  # fmt: skip
        voxels = int(np.prod(shape))
        rows[-1]["mvox_s_gpu"] = voxels / rows[-1]["gpu_s"] / 1e6
        rows[-1]["mvox_s_cpu"] = voxels / rows[-1]["cpu_s"] / 1e6
    return rows


# --------------------------------------------------------------------------------------------


def environment() -> dict:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    return {"gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
            "cupy": cupy.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = ["| check | max rel diff | tol | ok | CPU s | GPU s | GUPS | full scan s |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    for r in rows:
        lines.append(
            f"| {r['check']} | {f(r.get('max_rel_diff'), '.2e')} | {f(r.get('tolerance'), '.0e')} "
            f"| {'' if r.get('ok') is None else ('yes' if r['ok'] else 'NO')} "
            f"| {f(r.get('cpu_s'), '.3f')} | {f(r.get('gpu_s'), '.4f')} "
            f"| {f(r.get('gups'), '.1f')} | {f(r.get('full_scan_s'), '.1f')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="substrings of check names")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from bonemet_dask._backend import gpu_available

    if not gpu_available():
        print("no working CUDA device: nothing to check", file=sys.stderr)
        return 2
    env = environment()
    print(json.dumps(env))
    rows: list[dict] = []
    for name, fn in CHECKS:
        if args.only and not any(s in name for s in args.only):
            continue
        started = time.perf_counter()
        try:
            got = fn(args)
        except Exception as err:
            traceback.print_exc()
            got = [row(name, error=f"{type(err).__name__}: {err}")]
            got[0]["ok"] = False
        print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)
        for r in got:
            print("  ", json.dumps(r), flush=True)
        rows.extend(got)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    return 0 if all(r.get("ok") is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
