"""``bonemet-dask bench``: every stage against its peers and limits, measured in one process run.

Run: ``bonemet-dask bench [--stages convert,fdk,fbp,resample,composite]
[--size tiny|small|medium|full] [--repeat 3] [--out bench.json]`` (or ``python
benchmarks/suite.py`` with the same options).

Each stage is timed after a warm-up, ``--repeat`` times; the JSON keeps every sample, with its
median and spread (max - min). Throughputs are quoted as ratios against a peer or a limit
measured in the same run, never as absolute figures from another day. Peers that are not
installed (``pip install -e '.[bench]'``: itk-rtk, SimpleITK, astra-toolbox) are listed under
``skipped`` with the reason. What each stage measures:

``convert``
    CT-like 8-bit slices written as PNG (zlib level 6, as NRecon writes) in the published
    layout, then: a raw single-core ``imagecodecs.png_decode`` of every file (the limit),
    Pillow's decode (a peer), and ``bm.convert`` on an embedded LocalCluster of 1 and of 2
    one-thread worker processes (the path users run). The first conversion on a fresh cluster
    is reported apart (``cold``: worker start, imports, JIT cache loads); the ratio is the raw
    decode time over the warm conversion's wall time times its workers (per core, target
    >= 0.9). Peak memory per worker (``distributed``'s MemorySampler) is set against the
    worker's memory budget.
``fdk``
    Cone-beam backprojection of 260 projections (the BoneMet short scan) onto ``n^3`` voxels,
    on the narrow benchmark cone and on BoneMet's own wide geometry (``benchmarks/bench_fdk.py``),
    1 and 2 numba threads, in GUPS; RTK's FDK + Parker on the same geometry when it imports.
``fbp``
    One parallel-beam slice, one core: ours against scikit-image ``iradon`` and ASTRA's CPU FBP.
``resample``
    A 5-degree rigid resample (trilinear): ours on 1 and 2 threads against scipy's
    ``affine_transform`` (1 core) and SimpleITK's Resample (2 threads).
``composite``
    ``bm.composite`` of two Regist-CT-sized volumes on 1 and 2 threads against the fastest
    plain-numpy formulation.
``chain``
    ``bm.run`` of a synthetic tree (2 mice x 2 weeks, 1 mouse at tiny size; raw projections to
    metrics) on 1 and on 2
    one-thread workers, one stage at a time (``until=``, each call computing that stage only):
    every stage's 1 -> 2 scaling, and the whole pipeline in hindlimb scans per core-hour.
``register``
    Two synthetic tibia pairs with known poses on the Regist-CT grid at the size's voxel (a
    20-degree and a 150-degree roll, the later week's lesion grown): ``bm.register`` against
    SimpleITK's multi-resolution Euler3D registration (Mattes mutual information and mean
    squares, ``benchmarks/bench_register.py``), timed, with each one's pose error.

Every multi-core row also gives the 1 -> 2 scaling (target >= 1.8x). A figure
(``<out>.png``) shows each stage's ratio against its target and the scaling.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

logger = logging.getLogger("bonemet_dask.bench")

STAGES = ("convert", "fdk", "fbp", "resample", "composite", "register", "chain")

# per size: CT slices (count, side), FDK volume edge, FBP slice, resample and composite volumes
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"ct": (24, 256), "fdk": 32, "fbp": 127, "resample": (32, 64, 64),
             "composite": (32, 128, 128), "register_um": 160.0},
    "small": {"ct": (160, 1024), "fdk": 128, "fbp": 511, "resample": (128, 160, 160),
              "composite": (256, 539, 509), "register_um": 80.0},
    "medium": {"ct": (320, 1536), "fdk": 256, "fbp": 1023, "resample": (256, 320, 320),
               "composite": (512, 539, 509), "register_um": 40.0},
    "full": {"ct": (680, 2428), "fdk": 256, "fbp": 2047, "resample": (512, 539, 509),
             "composite": (1538, 539, 509), "register_um": 10.0,
             "register_peer": {"metrics": ("meansquares",), "cap_s": 900.0}},
}  # fmt: skip
"""Workloads by ``--size``; ``full`` converts 680 full-size slices (4.01 GB decoded) and
registers tibiae on the full-size Regist-CT grid (10 um voxels), where SimpleITK runs with its
faster metric (mean squares, 1.4x Mattes at 40 um) and is stopped after 15 minutes a pair."""

PACKAGES = ("bonemet-dask", "numpy", "dask", "distributed", "zarr", "numba", "imagecodecs",
            "scipy", "scikit-image", "pillow", "itk-rtk", "simpleitk", "astra-toolbox")  # fmt: skip


# ------------------------------------------------------------------------------ measuring


SHORT_REPEAT = 7
"""Samples of the sub-second stages (resample, composite): one page-fault or scheduling stall
moves a 0.1 s sample by 5x (a 1-thread composite sample of 0.74 s against 0.11 s), so their
median needs more samples than ``--repeat``'s default."""


def timed(fn: Callable[[], Any], repeat: int, *, warmup: bool = True) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``fn``, after one untimed call when ``warmup``."""
    if warmup:
        fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def row(name: str, samples: list[float], work: float, unit: str, **extra: Any) -> dict[str, Any]:
    """One measured line: samples, median, spread, and the rate ``work / median`` in ``unit``."""
    median = statistics.median(samples)
    return {
        "name": name,
        "samples_s": [round(s, 6) for s in samples],
        "median_s": round(median, 6),
        "spread_s": round(max(samples) - min(samples), 6),
        "rate": work / median,
        "unit": unit,
        **extra,
    }


def ratio(name: str, value: float | None, target: float | None, what: str) -> dict[str, Any]:
    """A stage's headline ratio against its target (``met`` None when no target or no value)."""
    met = None if value is None or target is None else bool(value >= target)
    return {"name": name, "value": value, "target": target, "met": met, "what": what}


@contextlib.contextmanager
def numba_threads(n: int):
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


# ------------------------------------------------------------------------------ convert


def _ct_slices(count: int, side: int, folder: Path) -> list[Path]:
    """``count`` CT-like uint8 slices of ``side``^2 (a disc of noisy bone-like rings), as PNG."""
    import imagecodecs

    from bonemet_dask.io.skyscan_log import format_skyscan_log

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:side, :side] - (side - 1) / 2
    r = np.hypot(x, y) / (side / 2)
    base = np.where(r < 0.95, 60 + 120 * (np.sin(18 * r) > 0.3) * (r > 0.3), 0)
    paths = []
    for k in range(count):
        noise = rng.normal(0, 6, (side, side))
        image = np.clip(base * (1 + 0.1 * np.sin(k / 7)) + noise * (r < 0.95), 0, 255)
        path = folder / f"851_rec{k:08d}.png"
        path.write_bytes(imagecodecs.png_encode(image.astype(np.uint8), level=6))
        paths.append(path)
    log = {"Reconstruction": {"Image Pixel Size (um)": 10.0, "Sections Count": count}}
    (folder / "851_rec.log").write_bytes(format_skyscan_log(log))
    return paths


def stage_convert(size: str, repeat: int, workdir: Path) -> dict[str, Any]:
    import dask
    import imagecodecs
    from distributed.diagnostics import MemorySampler

    import bonemet_dask as bm
    from bonemet_dask import config

    count, side = SIZES[size]["ct"]
    src = workdir / "src"
    paths = _ct_slices(count, side, src / "Imagery_Dataset" / "2. Recon-CT" / "851" / "week 0")
    decoded = count * side * side
    blobs = [p.read_bytes() for p in paths]
    rows, skipped = [], {}
    raw = timed(lambda: [imagecodecs.png_decode(b) for b in blobs], repeat)
    rows.append(row("imagecodecs png_decode, 1 core (limit)", raw, decoded / 1e6, "MB/s"))
    try:
        import io

        from PIL import Image

        pillow = timed(lambda: [np.asarray(Image.open(io.BytesIO(b))) for b in blobs], repeat)
        rows.append(row("Pillow decode, 1 core", pillow, decoded / 1e6, "MB/s"))
    except ImportError as err:
        skipped["Pillow"] = str(err)
    shard = max(1, count // 8)  # 8 shard tasks: both workers busy, a slab small enough to spread
    runs: dict[int, dict[str, Any]] = {}
    for workers in (1, 2):
        # the path users run: bm.connect's LocalCluster (its worker environment included)
        with (
            dask.config.set({"bonemet.cluster.dashboard-address": "127.0.0.1:0"}),
            bm.connect("local", n_workers=workers, threads_per_worker=1) as client,
        ):
            stores = iter(workdir / f"out-{workers}-{i}.zarr" for i in range(repeat + 1))

            def convert(stores=stores, client=client) -> None:
                bm.convert(src, next(stores), client=client, slices_per_shard=shard,
                           progress=False)  # fmt: skip

            sampler = MemorySampler()
            started = time.perf_counter()
            with sampler.sample("convert", client=client, interval=0.05):
                convert()
            cold = time.perf_counter() - started
            warm = timed(convert, repeat, warmup=False)
            samples = sampler.samples["convert"]
            peak = max(v for _, v in samples) / workers if samples else None
        runs[workers] = {"cold": cold, "warm": warm, "peak": peak}
        name = f"bm.convert on a LocalCluster, {workers} worker(s) x 1 thread"
        rows.append(row(name, warm, decoded / 1e6, "MB/s", cold_s=round(cold, 3),
                        peak_worker_memory_bytes=peak))  # fmt: skip
    raw_median = statistics.median(raw)
    per_core = {w: raw_median / (statistics.median(r["warm"]) * w) for w, r in runs.items()}
    speedup = statistics.median(runs[1]["warm"]) / statistics.median(runs[2]["warm"])
    budget = config.memory_budget_bytes()
    peak = runs[2]["peak"]
    png_bytes = sum(len(b) for b in blobs)
    return {
        "workload": f"{count} CT slices of {side}x{side}, {decoded / 1e9:.2f} GB decoded, "
        f"{png_bytes / 1e6:.1f} MB of PNG, shards of {shard} slices",
        "rows": rows,
        # what `plan --profile full --rates` reads: PNG megabytes converted per core-second
        "png_mb_per_core_s": png_bytes / 1e6 / (statistics.median(runs[2]["warm"]) * 2),
        "ratios": [
            ratio(
                "convert per core / raw decode, 2 workers",
                per_core[2],
                0.9,
                "PNG -> sharded Zarr per core on a LocalCluster vs a raw imagecodecs decode",
            ),
            ratio("the same, 1 worker", per_core[1], 0.9, "one worker process"),
            ratio(
                "cold / warm, 2 workers",
                runs[2]["cold"] / statistics.median(runs[2]["warm"]),
                None,
                "the first conversion on a fresh cluster against the next ones",
            ),
        ],
        "scaling": {"1_to_2": speedup, "target": 1.8, "met": speedup >= 1.8},
        "memory": {
            "peak_per_worker_bytes": peak,
            "budget_bytes": budget,
            "met": None if peak is None else peak <= budget,
        },
        "skipped": skipped,
    }


# ------------------------------------------------------------------------------ FDK


def stage_fdk(size: str, repeat: int, workdir: Path) -> dict[str, Any]:
    from bench_fdk import make_geometry, time_rtk

    from bonemet_dask.geometry import VolumeGrid
    from bonemet_dask.kernels.fdk import backproject

    n = SIZES[size]["fdk"]
    rows, ratios, skipped, scaling = [], [], {}, {}
    rng = np.random.default_rng(0)
    for label, wide in (("narrow cone", False), ("BoneMet geometry", True)):
        geo = make_geometry(wide)
        idx = np.arange(geo.angles_deg.size)
        filtered = rng.standard_normal((idx.size, geo.n_rows, geo.n_cols)).astype(np.float32)
        grid = VolumeGrid((n, n, n), geo.voxel_size * 256 / n)
        out = np.zeros(grid.shape, np.float32)
        updates = idx.size * n**3 / 1e9
        medians = {}
        for threads in (1, 2):
            with numba_threads(threads):
                samples = timed(lambda: backproject(filtered, geo, idx, grid, out=out), repeat)  # noqa: B023
            rows.append(row(f"ours, {label}, {threads} thread(s)", samples, updates, "GUPS"))
            medians[threads] = statistics.median(samples)
        scaling[label] = medians[1] / medians[2]
        rtk = time_rtk(geo, n, 2, repeat)
        if rtk is None:
            skipped[f"RTK ({label})"] = "itk-rtk not installed (pip install -e '.[bench]')"
        else:
            rows.append(row(f"RTK FDK + Parker, {label}, 2 threads", [rtk], updates, "GUPS"))
            ratios.append(ratio(f"ours / RTK, {label}, 2 threads", rtk / medians[2],
                                4.0 if not wide else None, "backprojection speed"))  # fmt: skip
        if wide:
            per_core = updates / medians[2] / 2
            ratios.append(ratio("GUPS per core, BoneMet geometry", per_core, 1.0,
                                "backprojection on BoneMet's own geometry, 2 threads"))  # fmt: skip
    worst = min(scaling.values())
    return {
        "workload": f"260 projections of 256x384 onto {n}^3 voxels",
        "rows": rows,
        "ratios": ratios,
        "scaling": {"1_to_2": worst, "by_geometry": scaling, "target": 1.8, "met": worst >= 1.8},
        "skipped": skipped,
    }


# ------------------------------------------------------------------------------ FBP


def _import_bench_parallel():
    """``bench_parallel`` pins every library to one thread at import: undone for the others."""
    saved = dict(os.environ)
    import bench_parallel

    os.environ.clear()
    os.environ.update(saved)
    return bench_parallel


def stage_fbp(size: str, repeat: int, workdir: Path) -> dict[str, Any]:
    phantom_sinogram = _import_bench_parallel().phantom_sinogram

    from bonemet_dask.kernels.fdk import fbp_parallel_slice

    n = SIZES[size]["fbp"]
    angles = np.arange(round(n * np.pi / 2)) * 180 / round(n * np.pi / 2)
    sinogram = phantom_sinogram(n, angles)
    rows, ratios, skipped = [], [], {}
    with numba_threads(1):
        ours = timed(lambda: fbp_parallel_slice(sinogram, angles, window="ramlak"), repeat)
    rows.append(row("ours, 1 core", ours, 1, "slices/s"))
    try:
        from skimage.transform import iradon

        peer = timed(lambda: iradon(sinogram.T, theta=-angles, filter_name="ramp",
                                    interpolation="linear", circle=True),
                     1 if n > 1000 else repeat)  # fmt: skip
        rows.append(row("scikit-image iradon, 1 core", peer, 1, "slices/s"))
        ratios.append(ratio("ours / iradon", statistics.median(peer) / statistics.median(ours),
                            None, "one slice, one core"))  # fmt: skip
    except ImportError as err:
        skipped["iradon"] = str(err)
    try:
        astra_fbp = _import_bench_parallel().AstraFBP(n, angles)  # imports astra
        peer = timed(lambda: astra_fbp(sinogram), repeat)
        astra_fbp.close()
        rows.append(row("ASTRA CPU FBP, 1 core", peer, 1, "slices/s"))
        ratios.append(ratio("ours / ASTRA", statistics.median(peer) / statistics.median(ours),
                            2.0, "one slice, one core"))  # fmt: skip
    except ImportError as err:
        skipped["ASTRA"] = f"{err} (pip install -e '.[bench]')"
    return {"workload": f"one {n}x{n} slice, {angles.size} angles", "rows": rows,
            "ratios": ratios, "skipped": skipped}  # fmt: skip


# ------------------------------------------------------------------------------ resample


def stage_resample(size: str, repeat: int, workdir: Path) -> dict[str, Any]:
    import dask
    import dask.array as da
    import scipy.ndimage as ndi
    from bench_register import resample_workload, sitk_resampler

    from bonemet_dask.ops.resample import affine_resample

    shape = SIZES[size]["resample"]
    repeat = max(repeat, SHORT_REPEAT)
    volume, transform, matrix, offset = resample_workload(shape)
    voxels = volume.size / 1e6
    rows, ratios, skipped, medians = [], [], {}, {}
    scipy_s = timed(lambda: ndi.affine_transform(volume, matrix, offset, order=1), repeat)
    rows.append(row("scipy.ndimage.affine_transform, 1 core", scipy_s, voxels, "Mvox/s"))
    chunks = (max(1, shape[0] // 8), *shape[1:])
    source = da.from_array(volume, chunks=chunks)
    for threads in (1, 2):

        def ours(threads=threads):
            graph = affine_resample(source, matrix, offset, output_shape=shape, chunks=chunks)
            with dask.config.set(scheduler="threads", num_workers=threads):
                return graph.compute()

        samples = timed(ours, repeat)
        medians[threads] = statistics.median(samples)
        rows.append(row(f"ours, {threads} thread(s)", samples, voxels, "Mvox/s"))
    versus_scipy = statistics.median(scipy_s) / medians[2]
    ratios.append(ratio("ours / scipy, 2 threads vs 1 core", versus_scipy, None, "resample"))
    try:
        peer = timed(sitk_resampler(volume, transform), repeat)
        rows.append(row("SimpleITK Resample, 2 threads", peer, voxels, "Mvox/s"))
        ratios.append(ratio("ours / SimpleITK, 2 threads", statistics.median(peer) / medians[2],
                            1.0, "rigid resample"))  # fmt: skip
    except ImportError as err:
        skipped["SimpleITK"] = f"{err} (pip install -e '.[bench]')"
    speedup = medians[1] / medians[2]
    return {"workload": f"{shape} uint8, 5-degree rigid, trilinear", "rows": rows,
            "ratios": ratios, "skipped": skipped,
            "scaling": {"1_to_2": speedup, "target": 1.8, "met": speedup >= 1.8}}  # fmt: skip


# ------------------------------------------------------------------------------ composite


def stage_composite(size: str, repeat: int, workdir: Path) -> dict[str, Any]:
    import dask
    import dask.array as da
    import xarray as xr

    import bonemet_dask as bm

    shape = SIZES[size]["composite"]
    repeat = max(repeat, SHORT_REPEAT)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = rng.integers(0, 256, shape, dtype=np.uint8)
    mb = 2 * a.size / 1e6

    def numpy_arithmetic():
        ba, fa = (a >= 75).astype(np.uint8), (b >= 75).astype(np.uint8)
        return 60 * ba + 240 * fa - 120 * ba * fa

    rows, medians = [], {}
    peer = timed(numpy_arithmetic, repeat)
    rows.append(row("numpy, arithmetic, 1 core", peer, mb, "MB/s"))
    chunks = (max(1, shape[0] // 8), *shape[1:])
    dims = ("slice", "y", "x")
    base = xr.DataArray(da.from_array(a, chunks=chunks), dims=dims)
    follow = xr.DataArray(da.from_array(b, chunks=chunks), dims=dims)
    for threads in (1, 2):

        def ours(threads=threads):
            with dask.config.set(scheduler="threads", num_workers=threads):
                return bm.composite(base, follow, threshold=75).compute()

        samples = timed(ours, repeat)
        medians[threads] = statistics.median(samples)
        rows.append(row(f"bm.composite, {threads} thread(s)", samples, mb, "MB/s"))
    speedup = medians[1] / medians[2]
    return {
        "workload": f"two {shape} uint8 volumes",
        "rows": rows,
        "ratios": [
            ratio(
                "ours / numpy, 2 threads vs 1 core",
                statistics.median(peer) / medians[2],
                1.0,
                "composite",
            )
        ],
        "scaling": {"1_to_2": speedup, "target": 1.8, "met": speedup >= 1.8},
        "skipped": {},
    }


# ------------------------------------------------------------------------------ the chain

CHAIN_SIZES = {"tiny": "tiny", "small": "small", "medium": "small", "full": "medium"}
"""The synthetic tree each ``--size`` runs the chain on (medium and full cost minutes a scan)."""


def stage_chain(size: str, repeat: int, workdir: Path) -> dict[str, Any]:
    import dask
    from chain_rates import stage_rates, stage_seconds, worker_peaks
    from distributed import get_task_stream

    import bonemet_dask as bm
    from bonemet_dask import config
    from bonemet_dask.ops.plan_chain import CPU_RATE_KEYS, ScanSizes
    from bonemet_dask.ops.run import STAGES as CHAIN
    from bonemet_dask.synth import SynthConfig, generate

    tree = CHAIN_SIZES[size]
    synth = SynthConfig(mice=1 if size == "tiny" else 2, weeks=2, size=tree, seed=0)
    source = workdir / "source"
    generate(str(source), synth)
    scans = synth.mice * synth.weeks
    sizes = ScanSizes.synthetic(tree)
    times: dict[int, dict[str, float]] = {}
    core: dict[int, dict[str, float]] = {}
    client_cpu: dict[int, dict[str, float]] = {}  # the client's process: run's threads, scheduler
    peaks: dict[int, dict[str, Any]] = {}
    rates: dict[str, float] = {}
    work: dict[str, str] = {}
    outcomes: dict[str, int] = {}  # exit codes: at tiny size a scan's junction may not be found
    for workers in (1, 2):
        with (
            dask.config.set({"bonemet.cluster.dashboard-address": "127.0.0.1:0"}),
            bm.connect("local", n_workers=workers, threads_per_worker=1) as client,
        ):
            store = str(workdir / f"chain-{workers}.zarr")
            times[workers], core[workers], peaks[workers] = {}, {}, {}
            client_cpu[workers] = {}
            for stage in CHAIN:
                with get_task_stream(client=client) as stream, worker_peaks(client) as peak:
                    started, cpu = time.perf_counter(), time.process_time()
                    report = bm.run(source, store, until=stage, client=client, progress=None)
                    times[workers][stage] = time.perf_counter() - started
                    client_cpu[workers][stage] = time.process_time() - cpu
                outcomes[f"{stage}, {workers} worker(s)"] = report.exit_code
                spent = stage_seconds(stream.data)
                core[workers][stage] = spent["total"]
                peaks[workers][stage] = peak
                if workers == 2:
                    found, work[stage] = stage_rates(stage, spent, store, sizes)
                    rates.update(found)
    rows = []
    for workers, by_stage in times.items():
        for stage, seconds in by_stage.items():
            rows.append(row(f"{stage}, {workers} worker(s)", [seconds], scans, "scans/s",
                            core_s=round(core[workers][stage], 3),
                            busy=round(core[workers][stage] / (seconds * workers), 3),
                            client_cpu_s=round(client_cpu[workers][stage], 3),
                            peak_worker_memory_bytes=peaks[workers][stage]["max"]))  # fmt: skip
    scaling = {stage: times[1][stage] / times[2][stage] for stage in CHAIN}
    worst = min(scaling.values())
    core_hours = sum(times[2].values()) * 2 / 3600
    budget = config.memory_budget_bytes()
    peak = max(p["max"] for p in peaks[2].values())
    missing = [key for key in CPU_RATE_KEYS if key not in rates]
    return {
        "workload": f"run from raw projections, {synth.mice} mice x {synth.weeks} weeks at "
        f"{tree} size ({scans} hindlimb scans)",
        "rows": rows,
        "ratios": [],
        "scans_per_core_hour": {
            "1 worker": scans / (sum(times[1].values()) / 3600),
            "2 workers": scans / core_hours,
        },
        "scaling": {"1_to_2": worst, "by_stage": scaling, "target": 1.8, "met": worst >= 1.8},
        "memory": {
            "peak_per_worker_bytes": peak,
            "budget_bytes": budget,
            "met": peak <= budget,
            "by_stage": {stage: p["max"] for stage, p in peaks[2].items()},
            "scope": peaks[2][CHAIN[0]]["scope"],
        },
        "rates": {
            "cpu": rates,
            "synthetic_size": tree,
            "work": work,
            "missing": missing,
            "measured": f"bonemet-dask bench --stages chain --size {size}, 2 one-thread workers",
        },
        "exit_codes": outcomes,
        "skipped": {},
    }


# ------------------------------------------------------------------------------ registration


def stage_register(size: str, repeat: int, workdir: Path) -> dict[str, Any]:
    import bench_register

    voxel_um = SIZES[size]["register_um"]
    try:
        import SimpleITK  # noqa: F401

        use_sitk, skipped = True, {}
    except ImportError as err:
        use_sitk, skipped = False, {"SimpleITK": f"{err} (pip install -e '.[bench]')"}
    peer = SIZES[size].get("register_peer", {})
    results = bench_register.bench_registration(
        voxel_um, use_sitk, sitk_metrics=peer.get("metrics", ("mattes", "meansquares")),
        sitk_cap_s=peer.get("cap_s"),
    )  # fmt: skip
    rows, worst = [], {}
    for pair, method, angle, shift, seconds in results:
        stopped = bool(np.isnan(angle))  # a peer stopped at its cap: no pose, time a lower bound
        if stopped:
            errors = {"stopped_at_cap_s": peer["cap_s"]}
        else:
            errors = {"angle_error_deg": round(angle, 4), "shift_error_voxels": round(shift, 4)}
        rows.append(row(f"{method}, {pair}", [seconds], 1, "pairs/s", **errors))
        time_, angle_, shift_ = worst.get(method, (0.0, 0.0, 0.0))
        angle, shift = (np.inf, np.inf) if stopped else (angle, shift)
        worst[method] = (time_ + seconds, max(angle_, angle), max(shift_, shift))
    ours = worst.pop("bonemet_dask.register")
    ratios = []
    if worst:
        best_name, best = min(worst.items(), key=lambda item: item[1][0])
        speed = best[0] / ours[0]  # a lower bound when the peer was stopped at its cap
        as_good = ours[1] <= max(best[1], 0.1) and ours[2] <= max(best[2], 0.5)
        ratios.append(ratio(f"ours / {best_name}, time of both pairs", speed, 1.0,
                            "registration speed; met only with a pose error as good"))  # fmt: skip
        ratios[-1]["met"] = bool(speed >= 1.0 and as_good)
        ratios[-1]["pose_error_as_good"] = as_good
    shape = bench_register.reference_grid("left", voxel_um).shape
    return {
        "workload": f"2 tibia pairs on a {shape} grid of {voxel_um:g} um voxels",
        "rows": rows,
        "ratios": ratios,
        "worst": {
            name: {
                "seconds": t,
                "angle_deg": a if np.isfinite(a) else None,
                "shift_voxels": v if np.isfinite(v) else None,
            }
            for name, (t, a, v) in {"ours": ours, **worst}.items()
        },
        "skipped": skipped,
    }


RUNNERS: dict[str, Callable[[str, int, Path], dict[str, Any]]] = {
    "convert": stage_convert,
    "fdk": stage_fdk,
    "fbp": stage_fbp,
    "resample": stage_resample,
    "composite": stage_composite,
    "register": stage_register,
    "chain": stage_chain,
}


# ------------------------------------------------------------------------------ the suite


def machine(packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, versions, thread settings."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS",
                                               "RAYON_NUM_THREADS", "BLOSC_NTHREADS")}  # fmt: skip
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": memory,
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions, "thread_settings": threads}  # fmt: skip


def run_suite(
    stages: list[str], size: str, repeat: int, out: Path, *, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run ``stages`` at ``size``; write ``out`` (JSON) and ``out`` with ``.png`` (the figure)."""
    unknown = sorted(set(stages) - set(RUNNERS))
    if unknown:
        raise ValueError(f"stages={unknown} are unknown; choose from {', '.join(STAGES)}")
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not one of {', '.join(SIZES)}")
    results: dict[str, Any] = {
        "suite": "bonemet-dask bench",
        "size": size,
        "repeat": repeat,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "stages": {},
    }
    for name in stages:
        progress(f"bench {name} ({size})")
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            results["stages"][name] = RUNNERS[name](size, repeat, Path(tmp))
        results["stages"][name]["seconds"] = round(time.perf_counter() - started, 2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    figure(results, out.with_suffix(".png"))
    return results


def figure(results: dict[str, Any], path: Path) -> Path:
    """Each stage's headline ratios against their targets, and the 1 -> 2 worker scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{stage}: {r['name']}", r["value"], r["target"])
            for stage, record in results["stages"].items()
            for r in record.get("ratios", []) if r["value"] is not None]  # fmt: skip
    scaling = [(stage, record["scaling"]["1_to_2"])
               for stage, record in results["stages"].items() if "scaling" in record]  # fmt: skip
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.45 * max(len(bars), 4) + 1.5),
                                      gridspec_kw={"width_ratios": [3, 1]})  # fmt: skip
    names = [b[0] for b in bars]
    values = [b[1] for b in bars]
    colours = ["tab:grey" if t is None else ("tab:green" if v >= t else "tab:red")
               for _, v, t in bars]  # fmt: skip
    left.barh(names, values, color=colours)
    for i, (_, _, target) in enumerate(bars):
        if target is not None:
            left.plot([target, target], [i - 0.4, i + 0.4], color="black", lw=2)
    left.set_xscale("log")
    left.invert_yaxis()
    left.set_xlabel("ratio (black: target; green met, red not, grey no target)")
    left.set_title(f"bonemet-dask bench, size {results['size']}")
    right.bar([s for s, _ in scaling], [v for _, v in scaling],
              color=["tab:green" if v >= 1.8 else "tab:red" for _, v in scaling])  # fmt: skip
    right.axhline(1.8, color="black", lw=2)
    right.set_ylim(0, max([2.1, *(v * 1.05 for _, v in scaling)]))
    right.set_ylabel("speed-up, 1 -> 2 workers or threads")
    right.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    results = run_suite(stages, args.size, args.repeat, args.out)
    for name, record in results["stages"].items():
        for r in record.get("ratios", []):
            print(f"{name:10s} {r['name']}: {r['value']}  (target {r['target']}, met {r['met']})")


if __name__ == "__main__":
    main()
