"""Per-core throughput of every stage of ``run``: the rates of ``bonemet-dask plan --profile full``.

Generates a synthetic tree (one mouse, two weeks, raw projections and the Recon-CT whose ``.log``
gives NRecon's window), then runs the chain one stage at a time (``run --until STAGE``, so each
call computes that stage only) on a LocalCluster of one-thread workers with numba pinned to one
thread, recording the task stream.  Core-seconds are the summed compute time of the stage's
tasks (idle and scheduling left out); each stage's work comes from the store it wrote (voxels,
tibia-weeks) and :func:`bonemet_dask.ops.plan_chain.work_units`.  The result is a rates file
(``--out``) with the ``cpu:`` block measured here and the other blocks copied from the packaged
file::

    .venv/bin/python benchmarks/bench_stages.py --size medium --workdir /tmp/bench-stages \\
        --out benchmarks/results/stage-rates.yaml

Copy the file over ``bonemet_dask/stage-rates.yaml`` to make it the package's default.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import time
from pathlib import Path

import yaml


def _stage_seconds(stream: list[dict]) -> dict[str, float]:
    """Core-seconds of computing: all tasks, and those of the parts rated on their own.

    ``backproject``: the FDK backprojection; ``pixels``: reading and filtering projections;
    ``search``: registration searches.
    """
    spent = dict.fromkeys(("total", "backproject", "pixels", "search"), 0.0)
    for task in stream:
        key = str(task["key"])
        seconds = sum(
            s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute"
        )
        spent["total"] += seconds
        if "backproject" in key:
            spent["backproject"] += seconds
        elif "search" in key:
            spent["search"] += seconds
        elif "projections" in key or "filter" in key:
            spent["pixels"] += seconds
    return spent


def _groups(store: str, component: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(path, shape)`` of every complete group of a component in the store."""
    import zarr

    from bonemet_dask.io.store import get_bonemet_attrs

    root = zarr.open_group(store, mode="r", use_consolidated=False)
    found = []
    if component not in root:
        return found
    for mouse, g_mouse in root[component].groups():
        for side, g_side in g_mouse.groups():
            for week, group in g_side.groups():
                if get_bonemet_attrs(group).get("status") == "complete":
                    found.append((f"{component}/{mouse}/{side}/{week}", group["0"].shape))
    return found


def measure(size: str, workdir: Path, workers: int) -> dict:
    """Run the chain stage by stage; return the ``cpu:`` rates and a per-stage table."""
    os.environ["NUMBA_NUM_THREADS"] = "1"  # before the workers start: they inherit it
    import numpy as np
    from distributed import Client, LocalCluster, get_task_stream

    import bonemet_dask as bm
    from bonemet_dask.ops.plan_chain import ScanSizes, work_units
    from bonemet_dask.synth import SynthConfig, generate

    src, store = workdir / "src", str(workdir / "out.zarr")
    if not (src / "Imagery_Dataset").exists():
        started = time.perf_counter()
        generate(str(src), SynthConfig(mice=1, weeks=2, size=size, seed=3,
                                       components=("rotation_xray", "recon_ct")))  # fmt: skip
        print(f"generated {size} tree in {time.perf_counter() - started:.0f} s")
    shutil.rmtree(store, ignore_errors=True)  # every stage computes: nothing is up to date
    sizes = ScanSizes.synthetic(size)
    rows, rates = [], {}
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        for stage in ("convert", "reconstruct", "segment", "register", "composite"):
            started = time.perf_counter()
            with get_task_stream(client=client) as stream:
                report = bm.run(str(src), store, until=stage, client=client, overwrite=True,
                                metrics_csv=str(workdir / "metrics.csv"))  # fmt: skip
            wall = time.perf_counter() - started
            part = report.stages[stage]
            if part.failed:
                raise SystemExit(f"{stage} failed: {part.failed}")
            spent = _stage_seconds(stream.data)
            core_s, bp_s, search_s = spent["total"], spent["backproject"], spent["search"]
            if stage == "reconstruct":
                scans = _groups(store, "recon_ct")
                work = work_units("reconstruct", sizes)
                rates["fdk_gups"] = len(scans) * work["updates"] / bp_s / 1e9
                pixels = spent["pixels"]
                rates["fdk_pixel_core_s_per_mpix"] = pixels / (len(scans) * work["mpix"])
                rates["fdk_voxel_core_s_per_mvox"] = (core_s - bp_s - pixels) / (
                    len(scans) * work["mvox_out"]
                )
                units = f"{len(scans)} scans (read + filter {pixels:.1f} core-s)"
            elif stage == "segment":
                scans = _groups(store, "recon_ct")
                mvox = sum(float(np.prod(shape)) for _, shape in scans) / 1e6
                rates["segment_core_s_per_mvox"] = core_s / mvox
                units = f"{len(scans)} scans, {mvox:.0f} Mvox read"
            elif stage == "register":
                tibiae = _groups(store, "regist_ct")
                mvox = sum(float(np.prod(shape)) for _, shape in tibiae) / 1e6
                levels = len(tibiae) * work_units("register", sizes)["levels"]
                rates["register_search_core_s_per_level"] = search_s / levels
                rates["register_other_core_s_per_mvox"] = (core_s - search_s) / mvox
                units = f"{len(tibiae)} tibia-weeks, {levels:.0f} levels, {mvox:.0f} Mvox out"
            elif stage == "composite":
                tibiae = _groups(store, "regist_ct")
                mvox = 2 * sum(float(np.prod(shape)) for _, shape in tibiae) / 1e6
                rates["composite_core_s_per_mvox"] = core_s / mvox
                units = f"{len(_groups(store, 'roi_ct'))} RoIs, {mvox:.0f} Mvox read"
            else:
                units = f"{len(_groups(store, 'rotation_xray'))} scans"
            rows.append((stage, units, wall, core_s, bp_s, search_s))
    return {"rates": rates, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    """Measure, print the table, write the rates file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="medium", choices=("tiny", "small", "medium"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-stages"))
    parser.add_argument("--workers", type=int, default=2, help="one-thread workers")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stage-rates.yaml"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    result = measure(args.size, args.workdir, args.workers)
    print("\n| stage | work | wall s | core-s | of which backprojection / search |")
    print("|---|---|---:|---:|---:|")
    for stage, units, wall, core_s, bp_s, search_s in result["rows"]:
        extra = f"{bp_s:.1f}" if bp_s else (f"{search_s:.1f}" if search_s else "")
        print(f"| {stage} | {units} | {wall:.1f} | {core_s:.1f} | {extra} |")
    from bonemet_dask.ops.plan_chain import CPU_RATE_KEYS, RATES_FILE

    with open(RATES_FILE, encoding="utf-8") as handle:
        text = handle.read()
    packaged = yaml.safe_load(text)
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    packaged["measured"]["cpu"] = (
        f"benchmarks/bench_stages.py --size {args.size} --workers {args.workers} "
        f"({datetime.date.today()}, {os.cpu_count()} cores, {platform.machine()}; one mouse x 2 "
        "weeks, core-seconds = summed task compute time)"
    )
    packaged["cpu"] = {key: float(f"{result['rates'][key]:.4g}") for key in CPU_RATE_KEYS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + yaml.safe_dump(packaged, sort_keys=False), encoding="utf-8")
    print(f"\nrates: {packaged['cpu']}\nwritten to {args.out}")


if __name__ == "__main__":
    main()
