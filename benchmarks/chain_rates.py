"""Per-core rates of the stages of ``run``, from a stage's task stream and the store it wrote.

Shared by ``benchmarks/bench_stages.py`` (the packaged ``stage-rates.yaml``) and the ``chain``
stage of ``bonemet-dask bench`` (whose JSON ``plan --profile full --rates`` reads).  Core-seconds
are the summed compute time of a stage's tasks (idle and scheduling left out); each stage's work
comes from the store it wrote (voxels, tibia-weeks) and
:func:`bonemet_dask.ops.plan_chain.work_units`.

Per-worker peak memory is the kernel's own high-water mark of each worker process (``VmHWM``),
reset before a stage by writing ``5`` to ``/proc/self/clear_refs`` (Linux), so each stage's peak
is exact rather than sampled; where the reset is refused the peak is the process's lifetime
maximum (``ru_maxrss``) and says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def stage_seconds(stream: list[dict]) -> dict[str, float]:
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


def complete_groups(store: str, component: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(path, shape)`` of every complete group of a component in the store."""
    import zarr

    from bonemet_dask.io.store import get_bonemet_attrs

    root = zarr.open_group(store, mode="r")
    found = []
    if component not in root:
        return found
    for mouse, g_mouse in root[component].groups():
        for side, g_side in g_mouse.groups():
            for week, group in g_side.groups():
                if get_bonemet_attrs(group).get("status") == "complete":
                    found.append((f"{component}/{mouse}/{side}/{week}", group["0"].shape))
    return found


def stage_rates(stage: str, spent: dict[str, float], store: str, sizes: Any) -> tuple[dict, str]:
    """The ``cpu:`` rates one stage gives (possibly none), and a line saying what its work was.

    ``sizes`` is the :class:`bonemet_dask.ops.plan_chain.ScanSizes` of the synthetic tree.
    """
    import numpy as np

    from bonemet_dask.ops.plan_chain import work_units

    core_s, bp_s, search_s = spent["total"], spent["backproject"], spent["search"]
    rates: dict[str, float] = {}
    if stage == "reconstruct":
        scans = complete_groups(store, "recon_ct")
        work = work_units("reconstruct", sizes)
        pixels = spent["pixels"]
        if bp_s:
            rates["fdk_gups"] = len(scans) * work["updates"] / bp_s / 1e9
            rates["fdk_pixel_core_s_per_mpix"] = pixels / (len(scans) * work["mpix"])
            rates["fdk_voxel_core_s_per_mvox"] = (core_s - bp_s - pixels) / (
                len(scans) * work["mvox_out"]
            )
        return rates, f"{len(scans)} scans (read + filter {pixels:.1f} core-s)"
    if stage == "segment":
        scans = complete_groups(store, "recon_ct")
        mvox = sum(float(np.prod(shape)) for _, shape in scans) / 1e6
        if mvox:
            rates["segment_core_s_per_mvox"] = core_s / mvox
        return rates, f"{len(scans)} scans, {mvox:.0f} Mvox read"
    if stage == "register":
        tibiae = complete_groups(store, "regist_ct")
        mvox = sum(float(np.prod(shape)) for _, shape in tibiae) / 1e6
        levels = len(tibiae) * work_units("register", sizes)["levels"]
        if levels and mvox:
            rates["register_search_core_s_per_level"] = search_s / levels
            rates["register_other_core_s_per_mvox"] = (core_s - search_s) / mvox
        return rates, f"{len(tibiae)} tibia-weeks, {levels:.0f} levels, {mvox:.0f} Mvox out"
    if stage == "composite":
        tibiae = complete_groups(store, "regist_ct")
        mvox = 2 * sum(float(np.prod(shape)) for _, shape in tibiae) / 1e6
        if mvox:
            rates["composite_core_s_per_mvox"] = core_s / mvox
        return rates, f"{len(complete_groups(store, 'roi_ct'))} RoIs, {mvox:.0f} Mvox read"
    return rates, f"{len(complete_groups(store, 'rotation_xray'))} scans"


def _reset_peak() -> str:
    """In a worker: reset this process's peak RSS; say how its next peak will be read."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return "lifetime"
    return "stage"


def _read_peak() -> int:
    """In a worker: this process's peak resident memory in bytes since the last reset."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def worker_peaks(client: Any) -> Iterator[dict[str, Any]]:
    """Peak resident memory of each worker process during the ``with`` block.

    Yields a dict that, on exit, holds ``per_worker_bytes`` (worker address -> bytes), ``max``
    and ``scope`` (``"stage"``: reset at entry; ``"lifetime"``: the reset was refused).
    """
    found: dict[str, Any] = {}
    scopes = set(client.run(_reset_peak).values())
    yield found
    peaks = client.run(_read_peak)
    found["per_worker_bytes"] = peaks
    found["max"] = max(peaks.values()) if peaks else None
    found["scope"] = "stage" if scopes == {"stage"} else "lifetime"
