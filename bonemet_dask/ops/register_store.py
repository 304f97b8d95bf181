"""Register the Seg-CT tibiae of a store and write ``regist_ct`` groups, one shard per task.

Week 0 of every selected tibia first (sample registration to the vertical reference), then its
later weeks against the registered week 0 read back from the output store (time registration).
The searches of one phase run in parallel, one task each; each registered volume is resampled
with output chunks equal to the store's shards, and the task that computes a shard writes it and
its slice digests (one writer per shard, as ``convert`` and ``reconstruct_store`` do).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from bonemet_dask import __version__
from bonemet_dask.io.store import (
    ImageLayout,
    create_image_group,
    get_bonemet_attrs,
    open_zarr_store,
    scan_group_path,
    set_status,
    write_shard,
)
from bonemet_dask.io.xr import open_store
from bonemet_dask.kernels.slab import slab_digests
from bonemet_dask.ops.register import finish, plan_registration
from bonemet_dask.ops.resample import resample

__all__ = ["RegisterReport", "register_store"]

logger = logging.getLogger(__name__)


@dataclass
class RegisterReport:
    """What :func:`register_store` wrote, skipped and flagged."""

    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    poor: list[tuple[str, float]] = field(default_factory=list)
    """Scans whose quality flag failed: (group path, final NCC)."""
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _write_slab(block, store, storage_options, path, block_info=None):
    """Task: write one resampled slab (exactly one shard) and its slice digests."""
    start = block_info[0]["array-location"][0][0]
    group = zarr.open_group(open_zarr_store(store, storage_options=storage_options), mode="r+")
    scan = group[path]
    write_shard(scan["0"], start // scan["0"].shards[0], block)
    scan["slice_hash"][start : start + block.shape[0]] = slab_digests(block)
    return np.ones((1, 1, 1), np.uint8)


def _compute(graphs: list, client: Any) -> list:
    if not graphs:
        return []
    if client is None:
        with dask.config.set(scheduler="threads"):
            return list(dask.compute(*graphs))
    return list(client.gather(client.compute(graphs)))


def register_store(
    store: Any,
    out: Any = None,
    *,
    mice: Sequence[str] | None = None,
    weeks: Sequence[int] | None = None,
    sides: Sequence[str] | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
    client: Any = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> RegisterReport:
    """Register every selected ``seg_ct`` tibia into ``regist_ct`` groups.

    Parameters
    ----------
    store : str or zarr Store
        Store holding ``seg_ct/{mouse}/{side}/week{k}`` groups.
    out : str or zarr Store, optional
        Where to write (default ``store``).
    mice, weeks, sides : optional
        Selection.  A later week whose tibia's baseline (its earliest Seg-CT week) is not
        selected is registered against the baseline's ``regist_ct`` group already in ``out``.
    overwrite : bool
        Replace existing ``regist_ct`` groups (converted from the published Regist-CT or written
        by an earlier run); without it they are skipped and reported.
    storage_options : dict, optional
        fsspec options for the stores.
    client : distributed.Client, optional
        Cluster to compute on (default: the local threaded scheduler).
    progress : callable, optional
        ``progress(done, total)`` after each written scan.
    **options
        Passed to :func:`bonemet_dask.register` (``threshold``, ``levels_um``, ``reference``,
        ``roll_starts``, ``min_metric``...).

    Returns
    -------
    RegisterReport
        Written and skipped groups and the scans whose quality flag failed.  Each written group
        holds the transform, metric and flag under ``bonemet.registration`` and in its provenance.
    """
    started = time.perf_counter()
    out = store if out is None else out
    tree = open_store(store, storage_options=storage_options)
    root = zarr.open_group(open_zarr_store(out, storage_options=storage_options), mode="a")
    report = RegisterReport()
    mouse_set = None if mice is None else {str(m) for m in mice}
    tibiae: dict[tuple[str, str], dict[int, Any]] = {}
    if "seg_ct" in tree.children:
        for node in tree["seg_ct"].subtree:
            if "image" not in node.dataset:
                continue
            image = node.dataset["image"]
            mouse, side = str(image["mouse"].item()), str(image["side"].item())
            key = (node.path.split("/")[2], side)  # sanitised mouse segment, side
            if mouse_set is not None and mouse not in mouse_set and key[0] not in mouse_set:
                continue
            if sides is not None and side not in sides:
                continue
            tibiae.setdefault(key, {})[int(image["week"])] = image
    todo: list[tuple[tuple[str, str], int]] = []
    for key, scans in sorted(tibiae.items()):
        for week in sorted(scans):
            if weeks is not None and week not in set(weeks):
                continue
            path = scan_group_path("regist_ct", key[0], key[1], week)
            existing = root.get(path)
            if existing is not None and not overwrite:
                stage = get_bonemet_attrs(existing).get("provenance", {}).get("stage", "convert")
                report.skipped.append((path, f"exists (written by {stage}); pass overwrite=True"))
                continue
            todo.append((key, week))
    total = len(todo)
    baselines = {key: min(scans) for key, scans in tibiae.items()}
    first = [(key, week) for key, week in todo if week == baselines[key]]
    later = [(key, week) for key, week in todo if week != baselines[key]]
    for phase in (first, later):
        plans = []
        for key, week in phase:
            fixed = None
            if week != baselines[key]:
                fixed = _registered_baseline(out, storage_options, key, baselines[key])
                if fixed is None:
                    path = scan_group_path("regist_ct", key[0], key[1], week)
                    report.skipped.append(
                        (path, f"no registered baseline week{baselines[key]}; register it first")
                    )
                    continue
            plan = plan_registration(tibiae[key][week], fixed, **options)
            plans.append((key, week, plan))
        searches = _compute([plan.search for _, _, plan in plans], client)
        for (key, week, plan), search in zip(plans, searches, strict=True):
            result = finish(plan, search)
            fixed_path = scan_group_path("regist_ct", key[0], key[1], baselines[key])
            path = _write_registered(root, out, storage_options, key, week, tibiae[key][week],
                                     result, options, client, fixed_path)  # fmt: skip
            report.written.append(path)
            report.metrics[path] = result.metric
            if not result.passed:
                report.poor.append((path, result.metric))
                logger.warning(
                    "%s: registration quality is poor (NCC %.3f < %.3f)",
                    path, result.metric, result.min_metric,
                )  # fmt: skip
            if progress:
                progress(len(report.written), total)
    report.seconds = time.perf_counter() - started
    return report


def _registered_baseline(out, storage_options, key, week):
    path = scan_group_path("regist_ct", key[0], key[1], week)
    tree = open_store(out, storage_options=storage_options)
    try:
        node = tree[path]
    except KeyError:
        return None
    if node.dataset.attrs.get("status") != "complete":
        return None
    image = node.dataset["image"]
    spacing = node.dataset.attrs.get("registration", {}).get("output_spacing_um")
    return image.assign_attrs(voxel_size_um=spacing) if spacing else image


def _write_registered(
    root, out, storage_options, key, week, moving, result, options, client, fixed_path
):
    path = scan_group_path("regist_ct", key[0], key[1], week)
    layout = ImageLayout.default_for(
        "ct", result.shape, "uint8", voxel_size_um=list(result.spacing_um)
    )
    record = result.to_dict()
    parameters = {k: v for k, v in options.items() if k != "reference"}
    if "reference" in options:
        parameters["reference"] = "user-supplied"
    source = scan_group_path("seg_ct", key[0], key[1], week)
    attrs = {
        "component": "regist_ct",
        "mouse": str(moving["mouse"].item()),
        "side": key[1],
        "week": week,
        "registration": record,
        "provenance": {
            "package": "bonemet-dask",
            "version": __version__,
            "stage": "register",
            "input": source,
            "fixed": fixed_path if result.kind == "time" else "reference tibia",
            "parameters": parameters,
            "transform": record["transform"],
            "metric": record["metric"],
        },
    }
    group = create_image_group(root, path, layout, attrs=attrs, overwrite=True)
    group["slice_index"][:] = np.arange(layout.shape[0])
    registered = resample(
        moving,
        result.transform,
        shape=result.shape,
        spacing=result.spacing_um,
        chunks=(layout.slices_per_shard, *layout.shape[1:]),
    )
    writes = registered.data.map_blocks(
        _write_slab,
        out,
        storage_options,
        path,
        dtype=np.uint8,
        chunks=tuple((1,) * len(c) for c in registered.data.chunks),
        meta=np.empty((0, 0, 0), np.uint8),
    )
    _compute([da.sum(writes)], client)
    set_status(group, "complete")
    return path
