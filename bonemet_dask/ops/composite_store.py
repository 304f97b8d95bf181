"""Stage 5 on a store: composites and RoIs of every registered tibia, written as ``roi_ct``.

For each selected ``regist_ct/{mouse}/{side}`` with a week 0 scan: the junction is found on week
0; for each selected week k (week 0 included) the composite of week 0 against week k is cropped to
the RoI (fibula removed) and written to ``roi_ct/{mouse}/{side}/week{k}`` as array ``0``, beside
the registered greyscale RoI of week k (array ``greyscale``, fibula kept), one shard per array
written by one task.  Week 0 against itself holds only 180 and 0: it is written, as the
published RoI-CT has week-0 folders, and gives the baseline row of the metrics (formed and
resorbed 0).  Per-scan metrics go into the group's attributes and a CSV joined with MiceMediRec.
"""

from __future__ import annotations

import hashlib
import json
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
from bonemet_dask.ops.composite import COMPOSITE_LEGEND, composite, voxel_size_um
from bonemet_dask.ops.convert import default_slices_per_shard
from bonemet_dask.ops.metrics import SCAN_METRICS, bone_metrics, write_metrics_csv
from bonemet_dask.ops.roi import crop_roi, find_tf_junction

__all__ = ["GREYSCALE_ARRAY", "CompositeReport", "composite_store"]

logger = logging.getLogger(__name__)

GREYSCALE_ARRAY = "greyscale"
"""Name of the registered greyscale RoI array beside the composite ``0`` in a roi_ct group."""
STAGE = "composite"


@dataclass
class CompositeReport:
    """What :func:`composite_store` wrote, skipped and measured."""

    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    junctions: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: Any = None  # pandas.DataFrame, one row per written or up-to-date scan
    csv: str | None = None
    seconds: float = 0.0


def _write_roi_shard(comp, grey, store, storage_options, path, block_info=None):
    """Task: write one shard of the composite and of the greyscale RoI, then its digests."""
    start = block_info[0]["array-location"][0][0]
    root = zarr.open_group(open_zarr_store(store, storage_options=storage_options), mode="r+")
    group = root[path]
    shard = start // group["0"].shards[0]
    write_shard(group[GREYSCALE_ARRAY], shard, np.asarray(grey))
    write_shard(group["0"], shard, np.asarray(comp))
    group["slice_hash"][start : start + comp.shape[0]] = slab_digests(np.asarray(comp))
    return np.ones((1, 1, 1), np.uint8)


def _fingerprint(inputs: Sequence[str], fingerprints: Sequence[Any], params: dict) -> str:
    text = json.dumps({"inputs": list(inputs), "fp": list(fingerprints), "params": params,
                       "stage": STAGE}, sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def composite_store(
    store: Any,
    out: Any = None,
    *,
    mice: Sequence[str] | None = None,
    weeks: Sequence[int] | None = None,
    sides: Sequence[str] | None = None,
    threshold: float = 75,
    offset: int = 0,
    count: int = 300,
    remove_fibula: bool = True,
    overwrite: bool = False,
    metrics_csv: str | None = None,
    storage_options: dict | None = None,
    client: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompositeReport:
    """Composite, RoI and metrics of every selected registered tibia, written as ``roi_ct``.

    Parameters
    ----------
    store : str or zarr Store
        Store holding ``regist_ct`` groups (week 0 needed per tibia) and optionally ``/medirec``.
    out : str or zarr Store, optional
        Where to write (default ``store``).
    mice, weeks, sides : optional
        Selection (weeks of the follow-ups; week 0 is always read as the baseline).
    threshold : float, optional
        Bone threshold of both scans.
    offset, count : int, optional
        RoI start relative to the junction and its length in slices (BoneMet: 0, 300).
    remove_fibula : bool, optional
        Remove the fibula from the composite (the greyscale RoI keeps it).
    overwrite : bool, optional
        Replace ``roi_ct`` groups that another stage wrote (the published RoI-CT converted
        from PNGs) or that this stage wrote with other settings.  Groups this stage wrote
        with the same inputs and settings are skipped as up to date.
    metrics_csv : str, optional
        Also write the per-scan metrics here, joined with the store's MiceMediRec records.
    storage_options : dict, optional
        fsspec options of the stores.
    client : distributed.Client, optional
        Cluster to compute on (default: the local threaded scheduler).
    progress : callable, optional
        ``progress(done, total)`` after each scan.

    Returns
    -------
    CompositeReport
    """
    started = time.perf_counter()
    out = store if out is None else out
    tree = open_store(store, storage_options=storage_options)
    root = zarr.open_group(open_zarr_store(out, storage_options=storage_options), mode="a")
    report = CompositeReport()
    tibiae: dict[tuple[str, str], dict[int, Any]] = {}
    if "regist_ct" in tree.children:
        for node in tree["regist_ct"].subtree:
            if "image" not in node.dataset.data_vars:
                continue
            image = node.dataset["image"]
            mouse, side, week = str(image.mouse.item()), str(image.side.item()), int(image.week)
            if mice is not None and mouse not in {str(m) for m in mice}:
                continue
            if sides is not None and side not in set(sides):
                continue
            tibiae.setdefault((mouse, side), {})[week] = node
    jobs = []
    for (mouse, side), scans in sorted(tibiae.items()):
        selected = [w for w in sorted(scans) if weeks is None or w in set(weeks)]
        if 0 not in scans:
            for week in selected:
                path = scan_group_path("roi_ct", mouse, side, week)
                report.skipped.append((path, "no regist_ct week0 baseline for this tibia"))
            continue
        jobs.extend((mouse, side, week, scans) for week in selected)
    params = {"threshold": threshold, "offset": offset, "count": count,
              "remove_fibula": remove_fibula}  # fmt: skip
    junctions: dict[tuple[str, str], Any] = {}
    tables = []
    for done, (mouse, side, week, scans) in enumerate(jobs, start=1):
        base_node, follow_node = scans[0], scans[week]
        path = scan_group_path("roi_ct", mouse, side, week)
        inputs = [base_node.path.lstrip("/"), follow_node.path.lstrip("/")]
        fingerprint = _fingerprint(
            inputs,
            [
                base_node.dataset.attrs.get("fingerprint"),
                follow_node.dataset.attrs.get("fingerprint"),
            ],
            params,
        )
        existing = root.get(path)
        if existing is not None:
            attrs = get_bonemet_attrs(existing)
            stage = attrs.get("provenance", {}).get("stage", "?")
            current = attrs.get("fingerprint") == fingerprint and attrs.get("status") == "complete"
            if stage == STAGE and current and not overwrite:
                report.skipped.append((path, "up to date"))
                tables.append(_attrs_row(attrs))
                continue
            if stage != STAGE and not overwrite:
                report.skipped.append(
                    (path, f"exists (written by {stage}); pass overwrite=True to replace it")
                )
                continue
        baseline = base_node.dataset["image"]
        followup = follow_node.dataset["image"]
        if (mouse, side) not in junctions:
            junctions[(mouse, side)] = find_tf_junction(baseline, threshold)
            report.junctions[f"{mouse}/{side}"] = junctions[(mouse, side)].to_dict()
        junction = junctions[(mouse, side)]
        n = min(count, baseline.shape[0])
        comp = crop_roi(
            composite(baseline, followup, threshold), junction, offset=offset, count=n,
            remove_fibula=remove_fibula, kind="composite",
        )  # fmt: skip
        first = comp.attrs["roi"]["first_slice"]
        grey = followup.isel(slice=slice(first, first + n))
        dz, dy, dx = voxel_size_um(baseline)
        sps = default_slices_per_shard("ct", comp.shape, "uint8")
        layout = ImageLayout.default_for(
            "ct", comp.shape, "uint8", voxel_size_um=(dz, dy, dx), slices_per_shard=sps
        )
        layout = ImageLayout(**{**layout.__dict__, "codec": "blosc-zstd", "level": 1})
        metrics = bone_metrics(comp, kind="composite", voxel_size=(dz, dy, dx))
        provenance = {
            "package": "bonemet-dask",
            "version": __version__,
            "stage": STAGE,
            "inputs": {"baseline": inputs[0], "followup": inputs[1]},
            "parameters": params,
        }
        scan_attrs = {
            "component": "roi_ct",
            "mouse": str(follow_node.dataset.attrs.get("mouse", mouse)),
            "side": side,
            "week": week,
            "kind": "composite",
            "legend": dict(COMPOSITE_LEGEND),
            "baseline_week": 0,
            "junction": junction.to_dict(),
            "junction_slice": junction.slice,
            "junction_confidence": junction.confidence,
            "junction_ambiguous": junction.ambiguous,
            "roi": {"offset": offset, "count": n, "first_regist_slice": first},
            "arrays": {"0": "composite", GREYSCALE_ARRAY: "registered greyscale, fibula kept"},
            "fingerprint": fingerprint,
            "provenance": provenance,
        }
        group = create_image_group(root, path, layout, attrs=scan_attrs, overwrite=True)
        group["slice_index"][:] = np.asarray(comp[comp.dims[0]].values, dtype=np.int64)
        group.create_array(
            GREYSCALE_ARRAY, shape=layout.shape, dtype="uint8", chunks=layout.chunks,
            shards=layout.shards, compressors=layout.compressors(),
            dimension_names=layout.dims, fill_value=0,
        )  # fmt: skip
        comp_data = comp.data.rechunk({0: layout.slices_per_shard, 1: -1, 2: -1})
        grey_data = grey.data.rechunk(comp_data.chunks)
        writes = da.map_blocks(
            _write_roi_shard, comp_data, grey_data, out, storage_options, path,
            dtype=np.uint8, chunks=tuple((1,) * len(c) for c in comp_data.chunks),
            meta=np.empty((0, 0, 0), np.uint8),
        )  # fmt: skip
        # dask arrays, not the Dataset: one graph shares the composite between writes and metrics
        targets = [writes.sum(), *(metrics[name].data for name in SCAN_METRICS)]
        if client is None:
            with dask.config.set(scheduler="threads"):
                _, *values = dask.compute(*targets)
        else:
            _, *values = client.compute(targets, sync=True)
        row = {
            name: _plain(np.asarray(v).item()) for name, v in zip(SCAN_METRICS, values, strict=True)
        }
        group.attrs.update({"bonemet": {**get_bonemet_attrs(group), "metrics": row}})
        set_status(group, "complete")
        report.written.append(path)
        tables.append({"mouse": scan_attrs["mouse"], "side": side, "week": week, **row})
        if progress:
            progress(done, len(jobs))
    if tables:
        import pandas as pd

        report.metrics = metrics_table_from_rows(pd.DataFrame(tables))
        if metrics_csv is not None:
            write_metrics_csv(
                report.metrics, metrics_csv, store=store, storage_options=storage_options
            )
            report.csv = str(metrics_csv)
    report.seconds = time.perf_counter() - started
    return report


def _plain(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _attrs_row(attrs: dict[str, Any]) -> dict[str, Any]:
    row = {"mouse": str(attrs.get("mouse")), "side": attrs.get("side"), "week": attrs.get("week")}
    row.update(attrs.get("metrics", {}))
    return row


def metrics_table_from_rows(frame: Any) -> Any:
    """Rows of per-scan metrics dicts in :func:`~bonemet_dask.ops.metrics.metrics_table` form."""
    frame = frame.astype({name: float for name in SCAN_METRICS if name in frame.columns})
    frame["mouse"] = frame["mouse"].astype(str)
    frame["week"] = frame["week"].astype("Int64")
    cols = ["mouse", "side", "week", *SCAN_METRICS]
    return (
        frame[[c for c in cols if c in frame.columns]]
        .sort_values(["mouse", "side", "week"], kind="stable")
        .reset_index(drop=True)
    )
