"""Check every CuPy kernel against its CPU result, and time it.  Run on a machine with a GPU.

Run: ``python benchmarks/gpu_check.py [--quick] [--json results.json] [--no-run | --run-only]``

Each check runs the same kernel on a numpy chunk and on a CuPy chunk, reports the largest
difference (relative to the CPU result's largest magnitude) against the check's tolerance, and
times both.  GPU times are device times from CUDA events, best of ``--repeat`` after a warm-up
(compilation); the FDK checks also report GUPS (projections x voxels / s) and extrapolate one full
BoneMet scan (4.39e12 voxel updates).  A check whose kernel module is missing or fails is reported
as such; the script exits 1 if any comparison fails.  CI never runs this file.

After the kernel checks (``--no-run`` skips it, ``--run-only`` runs nothing else), the end-to-end
check (:func:`end_to_end`): ``bm.run`` from the raw projections of one synthetic mouse (``small``,
2 weeks: on 2 CPU cores 20 s to generate, 15 s per run) to the composites and metrics, once with
``backend="numpy"`` and no client, once with ``backend="cupy"`` under ``bm.connect("gpu")``
(dask-cuda's LocalCUDACluster; without dask-cuda, reported, a LocalCluster of one worker with
the resource ``GPU=1``), into two stores, compared against :data:`RUN_LIMITS` and
:data:`METRIC_LIMITS`.  ``--cpu-dry-run`` needs no GPU: numpy on both sides, the second under
``connect("local")``, so the whole comparison runs anywhere (``--dry-run-perturb`` changes the
second run's settings, to see a check pass or fail).  ``tiny`` is no size for it: at 640 um the
reconstruction's blur merges the fibula into the tibia and no composite is made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
# end to end: ``bm.run`` on one synthetic mouse, numpy against cupy under connect("gpu")
# --------------------------------------------------------------------------------------------

RUN_LIMITS: dict[str, tuple[str, float]] = {
    "recon float max rel diff": ("<=", 5e-3),  # check_reconstruct's, texture interpolation
    "recon grey max abs diff": ("<=", 2.0),  # grey levels: 5e-3 of the window, rounded
    "recon grey correlation": (">=", 0.9999),
    "seg crop box max shift": ("<=", 1.0),  # voxels
    "seg mask Dice": (">=", 0.995),
    "regist bone Dice": (">=", 0.99),  # grey >= 75
    "regist grey correlation": (">=", 0.999),
    # the roll about a tibia's long axis is loosely held: a 0.2% grey window turns it 0.3 deg
    "regist rotation diff deg": ("<=", 1.0),
    "regist shift diff voxels": ("<=", 0.5),  # at the transform's centre
    "junction slice diff": ("<=", 1.0),
    "outputs done, both runs": (">=", 1.0),  # every output of every stage written (1) or not (0)
}
"""Per-scan comparisons of the two runs: ``(op, limit)``; a value on the wrong side fails.
Calibrated with ``--cpu-dry-run --dry-run-perturb window`` (a 0.2% wider grey window, about
the rounding a GPU's float differences cause: recon grey 1 level at most, seg Dice >= 0.9985,
regist Dice >= 0.996, rotation 0.31 deg) and ``filter`` (another ramp window, which fails)."""

METRIC_LIMITS: dict[str, tuple[float, float]] = {
    "bone_volume_mm3": (0.02, 0.0),  # a one-slice junction shift moves the RoI by 1/19 here
    "tissue_volume_mm3": (0.02, 0.0),
    "bv_tv": (0.01, 0.0),
    "baseline_bone_volume_mm3": (0.02, 0.0),
    "formed_volume_mm3": (0.10, 0.005),  # atol: a fraction of the row's baseline bone volume
    "resorbed_volume_mm3": (0.10, 0.005),
    "formed_fraction": (0.10, 0.005),
    "resorbed_fraction": (0.10, 0.005),
    "cortical_thickness_mm": (0.02, 0.0),
    "cortical_area_mm2": (0.03, 0.0),  # mean over the cortical slices: one more or less
    "cortical_slices": (0.0, 1.0),
}
"""Per-scan metrics: ``(rtol, atol)``, ok when ``|a - b| <= atol + rtol * max(|a|, |b|)``;
the atol of the formed and resorbed volumes is relative to the row's baseline bone volume (the
changes are differences of two scans, small against either: at ``small`` size a control
tibia's are 5-30 voxels of noise, and the 0.2% window perturbation moves them by 1-4 voxels);
both NaN is equal."""

PERTURBATIONS = {
    "none": {},
    "window": {"reconstruct": {"window": (0.0, 0.11 * 1.002)}},
    "filter": {"reconstruct": {"filter": "hann"}},
}
"""CPU dry run only: settings of the second run.  ``window``: the grey window 0.2% wider (about
the grey-level rounding a GPU's float differences cause: must pass); ``filter``: the Hann ramp
window instead of Hamming (another reconstruction: must fail)."""


def run_check(name: str, value: float, *, scan: str = "") -> dict:
    """One comparison row of the end-to-end section against :data:`RUN_LIMITS`."""
    op, limit = RUN_LIMITS[name]
    ok = bool(value <= limit) if op == "<=" else bool(value >= limit)
    return {"check": f"run: {name}" + (f" {scan}" if scan else ""), "value": float(value),
            "op": op, "limit": limit, "ok": ok and bool(np.isfinite(value))}  # fmt: skip


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _common(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays cut to their common corner-aligned shape (equal shapes: unchanged)."""
    shape = tuple(min(x, y) for x, y in zip(a.shape, b.shape, strict=True))
    cut = tuple(slice(0, n) for n in shape)
    return a[cut], b[cut]


def _transform_diff(a: dict, b: dict, voxel_um: float) -> tuple[float, float]:
    """Rotation (degrees) and shift at the centre (voxels) between two recorded transforms."""
    from scipy.spatial.transform import Rotation

    ma, mb = np.asarray(a["matrix"], np.float64), np.asarray(b["matrix"], np.float64)
    centre = np.asarray(a.get("centre_um", (0.0, 0.0, 0.0)), np.float64)
    angle = float(np.degrees(Rotation.from_matrix(ma[:3, :3].T @ mb[:3, :3]).magnitude()))
    point = np.append(centre, 1.0)
    shift = float(np.linalg.norm((ma @ point)[:3] - (mb @ point)[:3]) / voxel_um)
    return angle, shift


def _paths(root, component: str) -> list[str]:
    """The scan groups of a component, ``mouse/side/weekN``, sorted."""
    if component not in root:
        return []
    found = []
    for mouse, group in root[component].groups():
        for relative, node in group.members(max_depth=1):
            if relative.count("/") == 1 and hasattr(node, "groups"):
                found.append(f"{mouse}/{relative}")
    return sorted(found)


def compare_stores(ref_store: str, other_store: str) -> list[dict]:
    """Reconstruction, segmentation, registration and junction of two ``run`` stores.

    Every ``recon_ct``, ``seg_ct``, ``regist_ct`` and ``roi_ct`` group of ``ref_store`` is
    compared with the same group of ``other_store`` (a group missing there fails), against
    :data:`RUN_LIMITS`.
    """
    import zarr

    from bonemet_dask.io.labels import mask_array

    ref, other = zarr.open_group(ref_store, mode="r"), zarr.open_group(other_store, mode="r")
    rows: list[dict] = []

    def missing(component: str, path: str) -> bool:
        if f"{component}/{path}" in other:
            return False
        rows.append({"check": f"run: {component}/{path} missing in {other_store}", "ok": False})
        return True

    voxel_um = 1.0
    for path in _paths(ref, "recon_ct"):
        if missing("recon_ct", path):
            continue
        a, b = ref[f"recon_ct/{path}"], other[f"recon_ct/{path}"]
        voxel_um = a.attrs["bonemet"]["provenance"].get("voxel_size_um", voxel_um)
        if "attenuation" in a and "attenuation" in b:
            fa, fb = _common(np.asarray(a["attenuation"][...]), np.asarray(b["attenuation"][...]))
            rows.append(run_check("recon float max rel diff", rel_diff(fa, fb), scan=path))
        ga, gb = _common(np.asarray(a["0"][...]), np.asarray(b["0"][...]))
        grey = np.abs(ga.astype(np.int16) - gb.astype(np.int16))
        rows.append(run_check("recon grey max abs diff", float(grey.max()), scan=path))
        rows[-1]["mean_abs_diff"] = float(grey.mean())
        rows.append(run_check("recon grey correlation", _correlation(ga, gb), scan=path))
    shapes = {p: ref[f"recon_ct/{p}"]["0"].shape for p in _paths(ref, "recon_ct")}
    for path in _paths(ref, "seg_ct"):
        if missing("seg_ct", path):
            continue
        a, b = ref[f"seg_ct/{path}"], other[f"seg_ct/{path}"]
        box_a, box_b = a.attrs["bonemet"]["crop_box"], b.attrs["bonemet"]["crop_box"]
        shift = max(abs(x - y) for key in ("lo", "hi")
                    for x, y in zip(box_a[key], box_b[key], strict=True))  # fmt: skip
        rows.append(run_check("seg crop box max shift", float(shift), scan=path))
        mouse, _, week = path.split("/")
        frame = shapes.get(f"{mouse}/both/{week}")
        ma, mb = np.asarray(mask_array(a)[...]) > 0, np.asarray(mask_array(b)[...]) > 0
        if frame is not None:  # both masks in the reconstruction's frame
            placed = []
            for mask, box in ((ma, box_a), (mb, box_b)):
                full = np.zeros(frame, bool)
                lo = box["lo"]
                full[tuple(slice(o, o + n) for o, n in zip(lo, mask.shape, strict=True))] = mask
                placed.append(full)
            ma, mb = placed
        else:
            ma, mb = _common(ma, mb)
        rows.append(run_check("seg mask Dice", _dice(ma, mb), scan=path))
    for path in _paths(ref, "regist_ct"):
        if missing("regist_ct", path):
            continue
        a, b = ref[f"regist_ct/{path}"], other[f"regist_ct/{path}"]
        ga, gb = _common(np.asarray(a["0"][...]), np.asarray(b["0"][...]))
        rows.append(run_check("regist bone Dice", _dice(ga >= 75, gb >= 75), scan=path))
        rows.append(run_check("regist grey correlation", _correlation(ga, gb), scan=path))
        ra = a.attrs["bonemet"].get("registration", {}).get("transform")
        rb = b.attrs["bonemet"].get("registration", {}).get("transform")
        if ra and rb:
            angle, shift = _transform_diff(ra, rb, voxel_um)
            rows.append(run_check("regist rotation diff deg", angle, scan=path))
            rows.append(run_check("regist shift diff voxels", shift, scan=path))
    for path in _paths(ref, "roi_ct"):
        if missing("roi_ct", path):
            continue
        ja = ref[f"roi_ct/{path}"].attrs["bonemet"].get("junction_slice")
        jb = other[f"roi_ct/{path}"].attrs["bonemet"].get("junction_slice")
        if ja is not None and jb is not None:
            rows.append(run_check("junction slice diff", float(abs(ja - jb)), scan=path))
    return rows


def compare_metrics(ref, other) -> list[dict]:
    """Per-scan metrics of two runs' tables against :data:`METRIC_LIMITS`, one row per value.

    A scan in one table and not the other fails.
    """
    key = ["mouse", "side", "week"]
    if ref is None or other is None or len(ref) == 0:
        return [{"check": "run: metrics tables (none from a run)", "ok": False}]
    a, b = ref.set_index(key), other.set_index(key)
    rows = []
    for scan in a.index.union(b.index):
        label = "/".join(map(str, scan))
        if scan not in a.index or scan not in b.index:
            rows.append({"check": f"run: metrics of {label} in one run only", "ok": False})
            continue
        base = float(a.loc[scan, "baseline_bone_volume_mm3"])
        for metric, (rtol, atol) in METRIC_LIMITS.items():
            x, y = float(a.loc[scan, metric]), float(b.loc[scan, metric])
            if metric.endswith(("formed_volume_mm3", "resorbed_volume_mm3")):
                atol = atol * (base if np.isfinite(base) else 0.0)
            both_nan = np.isnan(x) and np.isnan(y)
            diff = 0.0 if both_nan else abs(x - y)
            scale = max(abs(x), abs(y)) if not both_nan else 0.0
            limit = atol + rtol * scale
            ok = both_nan or bool(diff <= limit)
            rows.append({"check": f"run: metric {metric} {label}", "metric": metric,
                         "scan": label, "numpy": x, "other": y,
                         "rel_diff": 0.0 if diff == 0 else diff / scale, "abs_diff": diff,
                         "limit": limit, "ok": ok})  # fmt: skip
    return rows


def _time_run(label: str, source: str, store: str, **kwargs) -> tuple[object, float]:
    import bonemet_dask as bm

    shutil.rmtree(store, ignore_errors=True)  # a fresh store: every output computed
    ends: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if done == total:  # one mouse: the stage's end
            ends[stage] = time.perf_counter()

    started = time.perf_counter()
    report = bm.run(source, store, until="composite", metrics_csv=None, progress=progress,
                    **kwargs)  # fmt: skip
    seconds = time.perf_counter() - started
    marks = [started, *ends.values()]
    stages = ", ".join(f"{n} {b - a:.1f}" for n, a, b in zip(ends, marks, marks[1:], strict=False))
    print(f"  {label}: {seconds:.1f} s (stages, s: {stages}); exit code {report.exit_code}",
          flush=True)  # fmt: skip
    for name, stage in report.stages.items():
        for outcome in stage.outcomes:
            if not outcome.done:
                print(f"    {name} {outcome.path}: {outcome.status}: {outcome.reason}")
    return report, seconds


def _gpu_client(args: argparse.Namespace) -> tuple[object, str]:
    """``bm.connect("gpu")`` (``"local"`` in the dry run), or a LocalCluster with GPU=1."""
    import bonemet_dask as bm

    # the workers are new processes: they import bonemet_dask from this checkout too
    root = str(Path(__file__).resolve().parents[1])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p != root]])
    if args.cpu_dry_run:
        client = bm.connect("local", n_workers=2, threads_per_worker=1,
                            dashboard_address="127.0.0.1:0")  # fmt: skip
        return client, "connect('local'), 2 workers x 1 thread (CPU dry run)"
    try:
        import dask_cuda
    except ImportError:
        from distributed import Client, LocalCluster

        print("  dask_cuda is MISSING: connect('gpu') needs it (pip install "
              "'bonemet-dask[gpu]'); falling back to a LocalCluster of one worker with "
              "resources GPU=1 built here (connect() has no such kind)", flush=True)  # fmt: skip
        cluster = LocalCluster(n_workers=1, threads_per_worker=args.run_threads, processes=True,
                               resources={"GPU": 1}, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0")  # fmt: skip
        return Client(cluster), f"LocalCluster(GPU=1) x {args.run_threads} threads: NO dask_cuda"
    client = bm.connect("gpu", threads_per_worker=args.run_threads, dashboard_address="127.0.0.1:0")
    return client, f"connect('gpu'): dask_cuda {dask_cuda.__version__}, {args.run_threads} threads"


def _close(client) -> None:
    """Close a client and the cluster ``connect`` started for it (its close leaves that up)."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _source(workdir: Path, config) -> str:
    """The synthetic tree of ``config`` under ``workdir`` (kept between runs of the script)."""
    from bonemet_dask.synth import generate

    source, stamp = workdir / "src", workdir / "src.json"
    wanted = json.dumps(repr(config))
    if not (stamp.exists() and stamp.read_text() == wanted):
        shutil.rmtree(source, ignore_errors=True)
        started = time.perf_counter()
        generate(str(source), config)
        stamp.write_text(wanted)
        print(f"  generated {config.mice} mouse x {config.weeks} weeks, {config.size}: "
              f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
    return str(source)


def end_to_end(args: argparse.Namespace) -> list[dict]:
    """``bm.run`` on one synthetic mouse with numpy, then with cupy under ``connect("gpu")``.

    From the raw projections (the FDK is the stage the backend changes) to the composites and
    metrics, into two stores; the reconstructions (float attenuation kept), segmentation masks,
    registered volumes and transforms, junctions and metrics are compared
    (:func:`compare_stores`, :func:`compare_metrics`).  The numpy run uses dask's threaded
    scheduler (no client).  With ``args.cpu_dry_run`` the second run is numpy under
    ``connect("local")``: the whole path without a GPU (differences 0 unless
    ``args.dry_run_perturb`` changes its settings).

    Returns
    -------
    list of dict
        Check rows (``ok`` False for each failure) and one row per run with its time.
    """
    import tempfile

    import dask

    from bonemet_dask.synth import SynthConfig

    if args.dry_run_perturb != "none" and not args.cpu_dry_run:
        raise SystemExit("--dry-run-perturb needs --cpu-dry-run")
    config = SynthConfig(mice=1, weeks=args.run_weeks, size=args.run_size, seed=args.run_seed,
                         components=("rotation_xray", "recon_ct"))  # fmt: skip
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check_run_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        source = _source(workdir, config)
        options = {"reconstruct": {"keep_float": True}}
        ref_store, other_store = str(workdir / "numpy.zarr"), str(workdir / "other.zarr")
        with dask.config.set(scheduler="threads"):
            ref, ref_s = _time_run("numpy, no client (threads)", source, ref_store,
                                   backend="numpy", options=options)  # fmt: skip
        other_options = {**options}
        for stage, settings in PERTURBATIONS[args.dry_run_perturb].items():
            other_options[stage] = {**other_options.get(stage, {}), **settings}
        started = time.perf_counter()
        client, how = _gpu_client(args)
        print(f"  cluster up in {time.perf_counter() - started:.1f} s: {how}", flush=True)
        try:
            backend = "numpy" if args.cpu_dry_run else "cupy"
            other, other_s = _time_run(f"{backend}, {how}", source, other_store,
                                       backend=backend, options=other_options,
                                       client=client)  # fmt: skip
        finally:
            _close(client)
        rows = [
            {"check": "run: numpy (threads)", "seconds": ref_s, "ok": None},
            {"check": f"run: {backend} ({how})", "seconds": other_s, "ok": None},
            run_check("outputs done, both runs", float(ref.exit_code == 0 == other.exit_code)),
        ]
        rows += compare_stores(ref_store, other_store)
        rows += compare_metrics(ref.table, other.table)
        return rows
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def run_markdown(rows: list[dict]) -> str:
    """The end-to-end rows as tables: the checks, then each metric's worst scan."""
    lines = ["| check | value | limit | ok |", "|---|---|---|---|"]
    worst: dict[str, tuple[tuple, dict]] = {}
    for r in rows:
        if "metric" in r:
            rank = (not r["ok"], r["abs_diff"] / r["limit"] if r["limit"] else r["abs_diff"])
            if r["metric"] not in worst or rank > worst[r["metric"]][0]:
                worst[r["metric"]] = (rank, r)
            continue
        if "seconds" in r:
            lines.append(f"| {r['check']} | {r['seconds']:.1f} s | | |")
            continue
        value = "" if "value" not in r else format(r["value"], ".4g")
        limit = "" if "limit" not in r else f"{r['op']} {r['limit']:g}"
        lines.append(f"| {r['check']} | {value} | {limit} | {'yes' if r['ok'] else 'NO'} |")
    lines += ["", "| metric (worst scan) | scan | numpy | other | abs diff | rel diff | limit "
              "(abs) | ok |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for metric, (_, r) in worst.items():
        lines.append(f"| {metric} | {r['scan']} | {r['numpy']:.5g} | {r['other']:.5g} "
                     f"| {r['abs_diff']:.3g} | {r['rel_diff']:.2e} | {r['limit']:.3g} | "
                     f"{'yes' if r['ok'] else 'NO'} |")  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def environment(gpu: bool = True) -> dict:
    env = {"numpy": np.__version__, "python": platform.python_version()}
    if not gpu:
        return {"gpu": None, **env}
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    return {"gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
            "cupy": cupy.__version__, **env,
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
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--no-run", action="store_true", help="skip the end-to-end bm.run check")
    part.add_argument("--run-only", action="store_true", help="only the end-to-end bm.run check")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="end-to-end check without a GPU: numpy on both sides, the second "
                        "under connect('local'); kernel checks skipped")  # fmt: skip
    parser.add_argument("--dry-run-perturb", choices=sorted(PERTURBATIONS), default="none",
                        help="--cpu-dry-run: change the second run (window: must pass; filter: "
                        "must fail)")  # fmt: skip
    parser.add_argument("--run-size", default="small", help="synthetic size (small, medium)")
    parser.add_argument("--run-weeks", type=int, default=2)
    parser.add_argument("--run-seed", type=int, default=0)
    parser.add_argument("--run-threads", type=int, default=4,
                        help="threads of the GPU worker (connect('gpu', "
                        "threads_per_worker=))")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the synthetic tree and both stores here (default: a temporary "
                        "folder, removed)")  # fmt: skip
    args = parser.parse_args()
    from bonemet_dask._backend import gpu_available

    gpu = not args.cpu_dry_run
    if gpu and not gpu_available():
        print("no working CUDA device: nothing to check (--cpu-dry-run runs the end-to-end "
              "check's path on numpy)", file=sys.stderr)  # fmt: skip
        return 2
    env = environment(gpu)
    print(json.dumps(env))
    rows: list[dict] = []
    if gpu and not args.run_only:
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
    elif not args.run_only:
        print("CPU dry run: kernel checks skipped (they need CuPy on a GPU)")
    if not args.no_run:
        name = "end to end: bm.run numpy vs " + ("numpy (dry run)" if args.cpu_dry_run else "cupy")
        print(f"{name} ...", flush=True)
        started = time.perf_counter()
        try:
            got = end_to_end(args)
        except Exception as err:
            traceback.print_exc()
            got = [{"check": name, "error": f"{type(err).__name__}: {err}", "ok": False}]
        print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)
        print(run_markdown(got))
        rows.extend(got)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    failed = [r["check"] for r in rows if r.get("ok") is False]
    if failed:
        print(f"FAILED ({len(failed)}): " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
