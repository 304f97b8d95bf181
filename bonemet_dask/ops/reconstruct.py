"""Cone-beam FDK as a chunked Dask graph: filter blockwise, backproject z-slabs from row windows.

Graph shape (DESIGN.md section 3.2):

1. projections ``(angle, row, col)`` are rechunked to row bands (the explicit re-slice
   intermediate) and filtered blockwise: every row band of every angle block is independent;
2. the volume is tiled in z slabs; a slab needs only the detector rows its cone can reach
   (:func:`bonemet_dask.kernels.fdk.row_window`), so its tasks depend on those row bands only;
3. per slab, one backprojection task per angle block, summed by a pairwise tree reduction.

No pixel arithmetic happens here: the kernels do it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from bonemet_dask import __version__, _backend, config
from bonemet_dask.geometry import ConeGeometry, ParallelGeometry, VolumeGrid
from bonemet_dask.kernels import fdk, intensity, parallel

logger = logging.getLogger(__name__)

WINDOWS = fdk.WINDOWS


# Task bodies.  ``backend`` ("auto", "numpy", "cupy") is resolved inside each task, on the worker
# that runs it: a GPU worker keeps a scan's blocks on its device from the filter to the slab sum,
# and only the finished slab comes back to the host.


def _on(backend: str, array: Any) -> Any:
    """``array`` on the device ``backend`` resolves to on this worker."""
    xp = _backend.namespace_for(backend)
    if _backend.array_namespace(array) is xp:
        return array
    return _backend.to_device(_backend.to_host(array), backend)


def _filter_block(block, geometry, window, short_scan, backend, block_info=None):
    (a0, a1), (r0, _), _ = block_info[0]["array-location"]
    return fdk.preweight_and_filter(
        _on(backend, block), geometry, np.arange(a0, a1), window=window, short_scan=short_scan,
        row_offset=r0,
    )  # fmt: skip


def _backproject(rows, geometry, angles, grid, row_offset, backend):
    xp = _backend.namespace_for(backend)
    window = xp.concatenate([_on(backend, r) for r in rows], axis=1)
    return fdk.backproject(window, geometry, angles, grid, row_offset=row_offset)


def _add(a, b):
    if _backend.array_namespace(a) is not _backend.array_namespace(b):
        a, b = _backend.to_host(a), _backend.to_host(b)
    return a + b


def _tree_sum(parts: list) -> Any:
    while len(parts) > 1:
        pairs = [dask.delayed(_add)(a, b) for a, b in zip(parts[::2], parts[1::2], strict=False)]
        parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
    return dask.delayed(_backend.to_host)(parts[0])


def default_grid(geometry: ConeGeometry) -> VolumeGrid:
    """NRecon's default volume: detector rows x columns x columns at the object-plane pixel."""
    return VolumeGrid((geometry.n_rows, geometry.n_cols, geometry.n_cols), geometry.voxel_size)


def slab_slices_for(grid: VolumeGrid, geometry: ConeGeometry, angle_block: int) -> int:
    """Slices per slab so that a task (slab + filtered row window) fits a quarter of the budget."""
    budget = config.memory_budget_bytes() // 4
    per_slice = 4 * grid.shape[1] * grid.shape[2]
    rows_per_slice = geometry.magnification * 1.2  # cone spread of the window, conservative
    per_slice += int(4 * angle_block * geometry.n_cols * rows_per_slice)
    return max(1, min(grid.shape[0], 64, budget // per_slice))


def reconstruct(
    projections: xr.DataArray,
    geometry: ConeGeometry | ParallelGeometry | None = None,
    *,
    filter: str = "hamming",
    grid: VolumeGrid | None = None,
    slab_slices: int | None = None,
    angle_block: int = 26,
    row_band: int = 32,
    short_scan: bool = True,
    air: float | None = None,
    backend: str = "auto",
) -> xr.DataArray:
    """Lazy cone-beam FDK reconstruction of one scan.

    Parameters
    ----------
    projections : xarray.DataArray
        ``(angle, row, col)``: raw intensities (bright air), or line integrals when
        ``attrs["kind"] == "line_integral"``.
    geometry : ConeGeometry or ParallelGeometry, optional
        The scan; default read from the projections' ``.log`` (``attrs["bonemet"]``).  A
        :class:`~bonemet_dask.geometry.ParallelGeometry` runs slice-by-slice parallel FBP.
    filter : {"ramlak", "shepp-logan", "cosine", "hamming", "hann"}
        Ramp window (NRecon's default is Hamming 0.54).
    grid : VolumeGrid, optional
        Voxels to reconstruct (default :func:`default_grid`).
    slab_slices : int, optional
        Slices per output z-slab (default: from the ``bonemet.memory-budget``).
    angle_block, row_band : int
        Projections per filtering/backprojection task, detector rows per filtered chunk.
    short_scan : bool
        Parker-weight scans shorter than a full turn (default).
    air : float, optional
        Unattenuated intensity; default estimated from the brightest pixels.
    backend : {"auto", "numpy", "cupy"}
        Where the filter and backprojection tasks run: ``"auto"`` uses CuPy on workers with a
        working GPU and numpy elsewhere (decided per task), ``"cupy"`` requires a GPU.  Results
        agree within float tolerance (``benchmarks/gpu_check.py``).

    Returns
    -------
    xarray.DataArray
        float32 ``(slice, y, x)`` attenuation in 1/mm, dask-backed; coordinates in micrometres.
    """
    if filter not in WINDOWS:
        raise ValueError(f"filter={filter!r} is not one of {', '.join(map(repr, WINDOWS))}")
    if backend not in _backend.BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(_backend.BACKENDS)}")
    if projections.dims != ("angle", "row", "col"):
        raise ValueError(
            f"projections.dims={projections.dims} must be ('angle', 'row', 'col'); transpose first"
        )
    geometry = geometry or geometry_from_attrs(projections.attrs)
    if isinstance(geometry, ParallelGeometry):
        return _reconstruct_parallel(projections, geometry, filter=filter, row_band=row_band)
    if projections.shape != (geometry.angles_deg.size, geometry.n_rows, geometry.n_cols):
        raise ValueError(
            f"projections.shape={projections.shape} does not match the geometry "
            f"({geometry.angles_deg.size}, {geometry.n_rows}, {geometry.n_cols})"
        )
    grid = grid or default_grid(geometry)
    data = da.asarray(projections.data).rechunk((angle_block, row_band, -1))
    if projections.attrs.get("kind") != "line_integral":
        if air is None:  # a small eager sample: 8 whole projections spread over the scan
            sample = data[:: max(1, data.shape[0] // 8)]
            air = intensity.air_level(np.asarray(sample))
        data = data.map_blocks(intensity.line_integrals, air, dtype=np.float32)
    filtered = data.map_blocks(
        _filter_block,
        geometry,
        filter,
        short_scan,
        backend,
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )
    slab_slices = slab_slices or slab_slices_for(grid, geometry, angle_block)
    row_edges = np.cumsum((0, *filtered.chunks[1]))
    angle_edges = np.cumsum((0, *filtered.chunks[0]))
    blocks = filtered.to_delayed()
    # the largest task: a filter block (input, output, padded complex spectrum) or a slab task
    # (slab, its row window of one angle block, and the partial sum it is added to)
    pad = 2 ** math.ceil(math.log2(2 * geometry.n_cols))
    largest = angle_block * row_band * (2 * geometry.n_cols + 2 * pad) * 4
    slabs = []
    for start in range(0, grid.shape[0], slab_slices):
        stop = min(grid.shape[0], start + slab_slices)
        sub = grid.slab(start, stop)
        r0, r1 = fdk.row_window(geometry, sub)
        if r1 <= r0:
            slabs.append(da.zeros(sub.shape, dtype=np.float32, chunks=sub.shape))
            continue
        first = int(np.searchsorted(row_edges, r0, side="right") - 1)
        last = int(np.searchsorted(row_edges, r1, side="left"))
        offset = int(row_edges[first])
        window_rows = int(row_edges[last] - row_edges[first])
        slab_bytes = 4 * int(np.prod(sub.shape))
        largest = max(largest, 2 * slab_bytes + 4 * angle_block * window_rows * geometry.n_cols)
        parts = []
        for b in range(len(angle_edges) - 1):
            rows = [blocks[b, j, 0] for j in range(first, last)]
            angles = np.arange(angle_edges[b], angle_edges[b + 1])
            parts.append(dask.delayed(_backproject)(rows, geometry, angles, sub, offset, backend))
        slabs.append(da.from_delayed(_tree_sum(parts), shape=sub.shape, dtype=np.float32))
    volume = da.concatenate(slabs, axis=0)
    result = _labelled(
        volume, grid, geometry, projections.attrs, filter=filter, short_scan=short_scan,
        backend=backend,
    )  # fmt: skip
    result.attrs["bonemet"]["provenance"]["largest_task_bytes"] = int(largest)
    return result


def _reconstruct_parallel(
    projections: xr.DataArray, geometry: ParallelGeometry, *, filter: str, row_band: int
) -> xr.DataArray:
    """Slice-by-slice parallel FBP: row bands of the sinogram stack, every angle per task."""
    if projections.shape != (geometry.angles_deg.size, geometry.n_rows, geometry.n_cols):
        raise ValueError(
            f"projections.shape={projections.shape} does not match the geometry "
            f"({geometry.angles_deg.size}, {geometry.n_rows}, {geometry.n_cols})"
        )
    data = da.asarray(projections.data).rechunk((-1, row_band, -1))
    if projections.attrs.get("kind") != "line_integral":
        air = intensity.air_level(np.asarray(data[:: max(1, data.shape[0] // 8)]))
        data = data.map_blocks(intensity.line_integrals, air, dtype=np.float32)
    n = geometry.n_cols
    sinograms = data.transpose(1, 0, 2)  # (row, angle, col): one sinogram per output slice
    volume = sinograms.map_blocks(
        parallel.fbp_parallel_rows,
        geometry.angles_deg,
        window=filter,
        center=geometry.centre_col,
        pixel_mm=geometry.pixel,
        chunks=(sinograms.chunks[0], (n,), (n,)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )
    grid = VolumeGrid((geometry.n_rows, n, n), geometry.pixel)
    result = _labelled(volume, grid, None, projections.attrs, filter=filter, short_scan=False)
    result.attrs["bonemet"]["provenance"]["algorithm"] = "parallel-beam FBP"
    return result


def geometry_from_attrs(attrs: dict[str, Any]) -> ConeGeometry:
    """The geometry of a converted projection stack, from the ``.log`` kept in its attributes."""
    from bonemet_dask.io.skyscan_log import format_skyscan_log, parse_skyscan_log

    log = (attrs.get("bonemet") or attrs).get("source", {}).get("log")
    if not log:
        raise ValueError(
            "the projections carry no SkyScan .log in attrs['bonemet']['source']['log']; pass "
            "geometry=ConeGeometry(...)"
        )
    return ConeGeometry.from_skyscan_log(parse_skyscan_log(format_skyscan_log(log)))


def _labelled(volume, grid, geometry, attrs, **parameters) -> xr.DataArray:
    h_um = grid.voxel_size * 1000
    corner = grid.origin * 1000
    coords = {
        "slice": np.arange(grid.shape[0]),
        "y": corner[1] + h_um * np.arange(grid.shape[1]),
        "x": corner[0] + h_um * np.arange(grid.shape[2]),
    }
    for name in ("mouse", "side", "week"):
        if name in attrs.get("bonemet", {}):
            coords[name] = attrs["bonemet"][name]
    provenance = {
        "package": "bonemet-dask",
        "version": __version__,
        "stage": "reconstruct",
        "algorithm": "FDK" + (", Parker short-scan weights" if parameters["short_scan"] else ""),
        "parameters": parameters,
        "geometry": {
            "source_to_object_mm": geometry.source_to_object,
            "source_to_detector_mm": geometry.source_to_detector,
            "detector_pixel_mm": geometry.detector_pixel,
            "n_projections": int(geometry.angles_deg.size),
        }
        if geometry is not None
        else {"kind": "parallel"},
        "voxel_size_um": h_um,
        "units": "1/mm",
    }
    return xr.DataArray(
        volume, dims=("slice", "y", "x"), coords=coords, name="attenuation",
        attrs={"bonemet": {"provenance": provenance}},
    )  # fmt: skip


def to_uint8(volume: xr.DataArray, window: tuple[float, float] | None = None) -> xr.DataArray:
    """NRecon-like linear map of attenuation to 0..255 (``window`` = attenuation at 0 and 255).

    Default window: the 0.1 and 99.9 percentiles of about 16 slices spread over the volume.
    """
    if window is None:
        sample = np.asarray(volume.data[:: max(1, volume.shape[0] // 16)])
        window = tuple(float(v) for v in np.percentile(sample, (0.1, 99.9)))
    lo, hi = window
    if not hi > lo:
        raise ValueError(f"window={window} must have maximum > minimum")
    data = volume.data.map_blocks(intensity.to_uint8, lo, hi, dtype=np.uint8)
    out = volume.copy(data=data).rename("grey")
    out.attrs = {"bonemet": {**volume.attrs.get("bonemet", {}), "window": [lo, hi]}}
    return out
