"""Reconstruct the projection scans of a store and write ``recon_ct`` groups, one shard per slab.

Each output slab is exactly one shard, written by the task that computes it (then its slice
digests, as in ``convert``), so the write has one writer per shard and leaves verifiable groups.
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

from bonemet_dask.geometry import VolumeGrid
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
from bonemet_dask.kernels.intensity import to_uint8
from bonemet_dask.kernels.slab import slab_digests
from bonemet_dask.ops.reconstruct import default_grid, geometry_from_attrs, reconstruct

logger = logging.getLogger(__name__)


@dataclass
class ReconstructionReport:
    """What :func:`reconstruct_store` wrote or skipped."""

    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _write_slab(block, store, storage_options, path, lo, hi, keep_float, block_info=None):
    """Task: window one reconstructed slab to uint8, write its shard(s) and digests."""
    start = block_info[0]["array-location"][0][0]
    group = zarr.open_group(open_zarr_store(store, storage_options=storage_options), mode="r+")
    scan = group[path]
    grey = to_uint8(block, lo, hi)
    shard = start // scan["0"].shards[0]
    write_shard(scan["0"], shard, grey)
    if keep_float:
        write_shard(scan["attenuation"], shard, block.astype(np.float32))
    scan["slice_hash"][start : start + block.shape[0]] = slab_digests(grey)
    return np.ones((1, 1, 1), np.uint8)


def reconstruct_store(
    store: Any,
    out: Any = None,
    *,
    mice: Sequence[str] | None = None,
    weeks: Sequence[int] | None = None,
    filter: str = "hamming",
    window: tuple[float, float] | None = None,
    keep_float: bool = False,
    overwrite: bool = False,
    backend: str = "auto",
    storage_options: dict | None = None,
    client: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReconstructionReport:
    """FDK-reconstruct every selected ``rotation_xray`` scan into ``recon_ct`` groups.

    Parameters
    ----------
    store : str or zarr Store
        Store holding converted projections.
    out : str or zarr Store, optional
        Where to write (default ``store``).  A ``recon_ct`` group converted from the source (the
        published reconstruction) is never replaced unless ``overwrite``.
    mice, weeks : optional
        Selection.
    filter : str
        Ramp window (see :func:`bonemet_dask.ops.reconstruct.reconstruct`).
    window : (float, float), optional
        Attenuation (1/mm) mapped to grey 0 and 255; default from the scan's NRecon ``.log``
        (``Minimum/Maximum for CS to Image Conversion``) when the store has one, else percentiles.
    keep_float : bool
        Also store the float32 attenuation as array ``attenuation``.
    backend : {"auto", "numpy", "cupy"}
        Where the filter and backprojection tasks run (see ``reconstruct``): ``"auto"`` uses
        CuPy on workers with a working GPU.

    Notes
    -----
    The volume matches the shape of the same scan's converted Recon-CT when the store has one
    (centred on the rotation axis, as NRecon's default region), else
    :func:`~bonemet_dask.ops.reconstruct.default_grid`.
    overwrite : bool
        Replace existing ``recon_ct`` groups.
    storage_options : dict, optional
        fsspec options for the stores.
    client : distributed.Client, optional
        Cluster to compute on (default: the local threaded scheduler).
    progress : callable, optional
        ``progress(done, total)`` after each scan.
    """
    started = time.perf_counter()
    out = store if out is None else out
    tree = open_store(store, storage_options=storage_options)
    root = zarr.open_group(open_zarr_store(out, storage_options=storage_options), mode="a")
    report = ReconstructionReport()
    scans = [
        node
        for node in tree.subtree
        if node.path.startswith("/rotation_xray/") and "image" in node.dataset
    ]
    selected = [
        node
        for node in scans
        if (mice is None or str(node.dataset.attrs.get("mouse")) in {str(m) for m in mice})
        and (weeks is None or int(node.dataset.attrs.get("week", -1)) in set(weeks))
    ]
    for done, node in enumerate(selected, start=1):
        attrs = node.dataset.attrs
        path = scan_group_path("recon_ct", attrs["mouse"], "both", attrs["week"])
        existing = root.get(path)
        if existing is not None and not overwrite:
            stage = get_bonemet_attrs(existing).get("provenance", {}).get("stage", "?")
            report.skipped.append((path, f"exists (written by {stage}); pass overwrite=True"))
            continue
        projections = node.dataset["image"].assign_attrs(bonemet=dict(attrs))
        geometry = geometry_from_attrs(projections.attrs)
        grid = _grid_like_source(tree, attrs, geometry) or default_grid(geometry)
        layout = ImageLayout.default_for(
            "ct", grid.shape, "uint8", voxel_size_um=geometry.voxel_size * 1000
        )
        volume = reconstruct(
            projections, geometry, filter=filter, grid=grid, slab_slices=layout.slices_per_shard,
            backend=backend,
        )  # fmt: skip
        lo, hi = window or _window_from_store(tree, attrs) or _percentile_window(volume)
        provenance = volume.attrs["bonemet"]["provenance"] | {
            "input": node.path,
            "window_per_mm": [lo, hi],
        }
        scan_attrs = {
            "component": "recon_ct",
            "mouse": attrs["mouse"],
            "side": "both",
            "week": attrs["week"],
            "provenance": provenance,
        }
        group = create_image_group(root, path, layout, attrs=scan_attrs, overwrite=True)
        group["slice_index"][:] = np.arange(layout.shape[0])
        if keep_float:
            float_layout = ImageLayout(**{**layout.__dict__, "dtype": "float32"})
            group.create_array(
                "attenuation",
                shape=layout.shape,
                dtype="float32",
                chunks=layout.chunks,
                shards=layout.shards,
                compressors=float_layout.compressors(),
                dimension_names=layout.dims,
                fill_value=0.0,
            )
        writes = volume.data.map_blocks(
            _write_slab,
            out,
            storage_options,
            path,
            lo,
            hi,
            keep_float,
            dtype=np.uint8,
            chunks=tuple((1,) * len(c) for c in volume.data.chunks),
            meta=np.empty((0, 0, 0), np.uint8),
        )
        if client is None:
            with dask.config.set(scheduler="threads"):
                da.compute(writes.sum())
        else:
            client.compute(writes.sum()).result()
        set_status(group, "complete")
        report.written.append(path)
        if progress:
            progress(done, len(selected))
    report.seconds = time.perf_counter() - started
    return report


def _grid_like_source(tree, attrs, geometry) -> VolumeGrid | None:
    """The grid of the same scan's converted Recon-CT (its shape, centred on the axis), if any.

    NRecon reconstructs a region of interest (BoneMet: 2588 x 2428 of a 4032-wide detector);
    matching it makes the two comparable voxel for voxel.
    """
    path = scan_group_path("recon_ct", attrs["mouse"], "both", attrs["week"])
    try:
        shape = tree[path].dataset["image"].shape
    except KeyError:
        return None
    return VolumeGrid(shape, geometry.voxel_size)


def _window_from_store(tree, attrs) -> tuple[float, float] | None:
    """The NRecon CS-to-image window of the same scan's converted Recon-CT, when there is one."""
    path = scan_group_path("recon_ct", attrs["mouse"], "both", attrs["week"])
    try:
        log = tree[path].dataset.attrs["source"]["log"]
        section = {k.lower(): v for k, v in log.items()}.get("reconstruction", {})
        lo = float(section["Minimum for CS to Image Conversion"])
        hi = float(section["Maximum for CS to Image Conversion"])
    except (KeyError, TypeError, ValueError):
        return None
    return lo, hi


def _percentile_window(volume) -> tuple[float, float]:
    sample = np.asarray(volume.data[:: max(1, volume.shape[0] // 8)])
    lo, hi = np.percentile(sample, (0.1, 99.9))
    return float(lo), float(hi)
