"""Cone-beam FDK as a chunked Dask graph: filter blockwise, backproject z-slabs from row windows.

Graph shape (DESIGN.md section 3.2), one named stage per task (:data:`TASK_NAMES`, what
:func:`dask.utils.key_split` and the dashboard show):

1. ``fdk-filter``: line integrals (unless the input already holds them), cosine and Parker
   weights and the ramp filter of one angle block x row band.  A task reads the input chunks that
   cover its region directly (no rechunk): blocks are at most ``angle_block`` x ``row_band`` and
   never straddle an input chunk boundary, so a store-chunked input (8 or 5 angles x 128 rows)
   is cut, never merged.  Filtered blocks are the graph's one row-band intermediate;
2. the volume is tiled in z slabs; a slab needs only the detector rows its cone can reach
   (:func:`bonemet_dask.kernels.fdk.row_window`), so its ``fdk-backproject`` tasks (one per angle
   block) depend on those row bands only;
3. ``fdk-sum``: per slab, a pairwise tree sum of the partial slabs, whose last add
   (``fdk-slab``) brings the finished slab to the host; the slab tasks are the output's chunks.

Keys are ``(stage-<token>, ...)`` with a token of the input and parameters: deterministic, and
two reconstructions in one graph never collide.  No pixel arithmetic happens here: the kernels
do it.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from bonemet_dask import __version__, _backend, config
from bonemet_dask.geometry import ConeGeometry, ParallelGeometry, VolumeGrid
from bonemet_dask.kernels import fdk, intensity, parallel

logger = logging.getLogger(__name__)

WINDOWS = fdk.WINDOWS

ANGLE_BLOCK = 26
"""Projections per filter block and per backprojection task (260 views: 10 blocks)."""

TASK_NAMES = ("fdk-filter", "fdk-backproject", "fdk-sum", "fdk-slab", "fbp-parallel")
"""Every task :func:`reconstruct` adds is named one of these (``dask.utils.key_split``)."""


# Task bodies.  ``backend`` ("auto", "numpy", "cupy") is resolved inside each task, on the worker
# that runs it: a GPU worker keeps a scan's blocks on its device from the filter to the slab sum,
# and only the finished slab comes back to the host.


def _on(backend: str, array: Any) -> Any:
    """``array`` on the device ``backend`` resolves to on this worker."""
    xp = _backend.namespace_for(backend)
    if _backend.array_namespace(array) is xp:
        return array
    return _backend.to_device(_backend.to_host(array), backend)


def _cat(parts: list, axis: int) -> Any:
    """``parts`` joined along ``axis``; a single part is returned as it is (no copy)."""
    if len(parts) == 1:
        return parts[0]
    return _backend.array_namespace(*parts).concatenate(parts, axis)


def _region(chunks: list, angles: list[slice], rows: list[slice]) -> Any:
    """An input region from the chunks ``chunks[angle][row][col]`` that cover it, each cut first.

    Wiring, not arithmetic: what a rechunk would do, inside the task that needs the region.
    """
    planes = []
    for plane, a in zip(chunks, angles, strict=True):
        bands = [_cat([c[a, r] for c in band], 2) for band, r in zip(plane, rows, strict=True)]
        planes.append(_cat(bands, 1))
    return _cat(planes, 0)


def _filter(chunks, angles, rows, air, geometry, window, short_scan, backend, a0, a1, r0):
    block = _region(chunks, angles, rows)
    if air is not None:
        block = intensity.line_integrals(block, air)
    return fdk.preweight_and_filter(
        _on(backend, block), geometry, np.arange(a0, a1), window=window, short_scan=short_scan,
        row_offset=r0,
    )  # fmt: skip


def _backproject(rows, geometry, a0, a1, grid, row_offset, backend):
    window = _cat([_on(backend, r) for r in rows], 1)
    return fdk.backproject(window, geometry, np.arange(a0, a1), grid, row_offset=row_offset)


def _add(a, b):
    if _backend.array_namespace(a) is not _backend.array_namespace(b):
        a, b = _backend.to_host(a), _backend.to_host(b)
    return a + b


def _slab(*parts):
    """The last add of a slab's tree sum (or its only part), on the host."""
    return _backend.to_host(parts[0] if len(parts) == 1 else _add(*parts))


def _zeros(shape):
    return np.zeros(shape, np.float32)


def _fbp_rows(chunks, angles, rows, air, angles_deg, window, center, pixel_mm):
    block = _region(chunks, angles, rows)
    if air is not None:
        block = intensity.line_integrals(block, air)
    return parallel.fbp_parallel_rows(
        block.transpose(1, 0, 2), angles_deg, window=window, center=center, pixel_mm=pixel_mm
    )


# Graph wiring.


def _block_edges(chunks: tuple[int, ...], target: int) -> list[int]:
    """Edges of blocks of at most ``target`` along an axis chunked as ``chunks``.

    Whole chunks are grouped while they fit; a chunk larger than ``target`` is cut into
    near-equal pieces.  No block straddles a chunk boundary, so a task reads each chunk it needs
    whole or cuts it, and never merges pieces of chunks.
    """
    target, edges, pos = max(1, int(target)), [0], 0
    for size in chunks:
        if size > target:
            if edges[-1] != pos:
                edges.append(pos)
            n = -(-size // target)
            edges.extend(pos + size * k // n for k in range(1, n + 1))
        elif pos + size - edges[-1] > target:
            edges.append(pos)
        pos += size
    if edges[-1] != pos:
        edges.append(pos)
    return edges


def _cover(edges: np.ndarray, lo: int, hi: int) -> tuple[range, list[slice]]:
    """Chunks (between ``edges``) that overlap ``[lo, hi)`` and the cut of each."""
    first = int(np.searchsorted(edges, lo, side="right") - 1)
    last = int(np.searchsorted(edges, hi, side="left"))
    cuts = [
        slice(max(lo, int(edges[i])) - int(edges[i]), min(hi, int(edges[i + 1])) - int(edges[i]))
        for i in range(first, last)
    ]
    return range(first, last), cuts


def _region_args(data: da.Array, a: tuple[int, int], r: tuple[int, int]) -> tuple[list, ...]:
    """Keys of ``data``'s chunks covering angles ``a`` x rows ``r``, their cuts, their bytes."""
    a_ids, a_cuts = _cover(np.cumsum((0, *data.chunks[0])), *a)
    r_ids, r_cuts = _cover(np.cumsum((0, *data.chunks[1])), *r)
    cols = range(len(data.chunks[2]))
    keys = [[[(data.name, i, j, k) for k in cols] for j in r_ids] for i in a_ids]
    n_angles = sum(data.chunks[0][i] for i in a_ids)
    n_rows = sum(data.chunks[1][j] for j in r_ids)
    return keys, a_cuts, r_cuts, n_angles * n_rows * data.shape[2] * data.dtype.itemsize


def _air(data: da.Array, air: float | None, attrs: dict[str, Any]) -> float | None:
    """The air level of raw intensities (None for line integrals), unless given.

    The ``.log``'s ``Reference Intensity`` (the flat-field level of the saved projections) when
    the projections carry their log and it fits their dtype; else estimated from a small eager
    sample: 8 whole projections spread over the scan.
    """
    if attrs.get("kind") == "line_integral":
        return None
    if air is None:
        air = _logged_air(data.dtype, attrs)
    if air is None:
        air = intensity.air_level(np.asarray(data[:: max(1, data.shape[0] // 8)]))
    return air


def _logged_air(dtype: np.dtype, attrs: dict[str, Any]) -> float | None:
    """``Reference Intensity`` of the projections' ``.log``, when it can be their air level."""
    from bonemet_dask.io.skyscan_geometry import reference_intensity

    source = (attrs.get("bonemet") or attrs).get("source") or {}
    reference = reference_intensity(source.get("log")) if source.get("log") else None
    if reference is None:
        return None
    if np.issubdtype(dtype, np.integer) and reference > np.iinfo(dtype).max:
        logger.warning(
            "%s: the .log's Reference Intensity %g exceeds the %s projections' range (they were "
            "rescaled after acquisition); estimating the air level from the projections",
            source.get("path", "projections"), reference, np.dtype(dtype),
        )  # fmt: skip
        return None
    return float(reference)


def default_grid(geometry: ConeGeometry) -> VolumeGrid:
    """NRecon's default volume: detector rows x columns x columns at the object-plane pixel."""
    return VolumeGrid((geometry.n_rows, geometry.n_cols, geometry.n_cols), geometry.voxel_size)


def slab_slices_for(grid: VolumeGrid, geometry: ConeGeometry, angle_block: int) -> int:
    """Slices per slab (at most 64) whose largest task fits 60% of a worker's memory budget.

    The largest task is a slab's tree sum: two partial float32 slabs and their sum, three slabs
    at once (a backprojection holds one slab and its row window).  The rest of the budget is the
    worker's own memory and the data it holds meanwhile.  Measured at full size
    (``benchmarks/full_slab_memory.py``, 4 GiB workers): 64-slice slabs (4.8 GB a sum) get the
    workers killed, 32-slice slabs peak at 3.5 GiB.
    """
    budget = 0.6 * config.memory_budget_bytes()
    per_slice = 3 * 4 * grid.shape[1] * grid.shape[2]
    rows_per_slice = geometry.magnification * 1.2  # cone spread of the window, conservative
    per_slice += int(4 * angle_block * geometry.n_cols * rows_per_slice)
    return max(1, min(grid.shape[0], 64, int(budget // per_slice)))


def slab_slices_in_shard(shard_slices: int, grid: VolumeGrid, geometry: ConeGeometry) -> int:
    """Slices per slab of a reconstruction written in ``shard_slices``-slice shards.

    The whole shard where its slab fits a worker (:func:`slab_slices_for`), else the largest
    divisor of it that does (at full size: 32 of the 64), so that a shard is whole slabs and
    its writer joins them (the slabs' uint8 windows, 200 MB each at full size).
    """
    fits = slab_slices_for(grid, geometry, ANGLE_BLOCK)
    return max(d for d in range(1, shard_slices + 1) if shard_slices % d == 0 and d <= fits)


def reconstruct(
    projections: xr.DataArray | xr.Dataset | xr.DataTree,
    geometry: ConeGeometry | ParallelGeometry | None = None,
    *,
    filter: str = "hamming",
    grid: VolumeGrid | None = None,
    slab_slices: int | None = None,
    angle_block: int = ANGLE_BLOCK,
    row_band: int = 32,
    short_scan: bool = True,
    air: float | None = None,
    backend: str = "auto",
) -> xr.DataArray:
    """Lazy cone-beam FDK reconstruction of one scan.

    Parameters
    ----------
    projections : xarray.DataArray, xarray.Dataset or xarray.DataTree
        ``(angle, row, col)``: raw intensities (bright air), or line integrals when
        ``attrs["kind"] == "line_integral"``.  Any chunking: it is read as it is, never rechunked.
        What :func:`bonemet_dask.open_store` gives for a ``rotation_xray`` scan works as it is:
        the node (``tree["rotation_xray/851/both/week0"]``), its Dataset, or its ``image``
        (which carries the group's attributes, ``.log`` included, as ``attrs["bonemet"]``); a
        Dataset's or node's own attributes stand in when its ``image`` has none.
    geometry : ConeGeometry or ParallelGeometry, optional
        The scan; default read from the projections' ``.log`` (``attrs["bonemet"]``).  A
        :class:`~bonemet_dask.geometry.ParallelGeometry` runs slice-by-slice parallel FBP.
    filter : {"ramlak", "shepp-logan", "cosine", "hamming", "hann"}
        Ramp window (NRecon's default is Hamming 0.54).
    grid : VolumeGrid, optional
        Voxels to reconstruct; default the published Recon-CT's grid when the projections
        carry NRecon's reference (``attrs["bonemet"]["nrecon"]``, recorded by ``convert``),
        else :func:`default_grid`.
    slab_slices : int, optional
        Slices per output z-slab, i.e. per output chunk (default: from the
        ``bonemet.memory-budget``).
    angle_block, row_band : int
        At most this many projections per filtering/backprojection task and detector rows per
        filtered block.  Blocks follow the input's chunks: whole chunks are grouped while they
        fit and larger chunks cut into near-equal pieces (26 angles over chunks of 5 gives 25).
    short_scan : bool
        Parker-weight scans shorter than a full turn (default).
    air : float, optional
        Unattenuated intensity; default the ``.log``'s ``Reference Intensity`` (the flat-field
        level) when the projections carry their log, else estimated from the brightest pixels.
    backend : {"auto", "numpy", "cupy"}
        Where the filter and backprojection tasks run: ``"auto"`` uses CuPy on workers with a
        working GPU and numpy elsewhere (decided per task), ``"cupy"`` requires a GPU.  Results
        agree within float tolerance (``benchmarks/gpu_check.py``).

    Returns
    -------
    xarray.DataArray
        float32 ``(slice, y, x)`` attenuation in 1/mm, dask-backed with one chunk per slab (full
        y and x); coordinates in micrometres.  Its tasks are named as in :data:`TASK_NAMES`.
    """
    if filter not in WINDOWS:
        raise ValueError(f"filter={filter!r} is not one of {', '.join(map(repr, WINDOWS))}")
    projections = as_projections(projections)
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
    nrecon = (projections.attrs.get("bonemet") or {}).get("nrecon") or {}
    if grid is None and nrecon.get("shape"):
        grid = VolumeGrid(tuple(nrecon["shape"]), geometry.voxel_size)
    grid = grid or default_grid(geometry)
    data = da.asarray(projections.data)
    air = _air(data, air, projections.attrs)
    angle_edges = _block_edges(data.chunks[0], angle_block)
    row_edges = _block_edges(data.chunks[1], row_band)
    blocks = list(itertools.pairwise(angle_edges))
    bands = list(itertools.pairwise(row_edges))
    slab_slices = slab_slices or slab_slices_for(grid, geometry, max(b - a for a, b in blocks))
    token = tokenize(data.name, geometry, filter, short_scan, air, backend, angle_edges, row_edges)
    filtered = f"fdk-filter-{token}"
    token = tokenize(token, grid, slab_slices)
    bp, tree, out = f"fdk-backproject-{token}", f"fdk-sum-{token}", f"fdk-slab-{token}"
    layer: dict[tuple, tuple] = {}
    # the largest task: a filter block (the input chunks it cuts, the block, its padded complex
    # spectrum) or a slab task (slab, its row window of one angle block, the partial sum)
    pad = 2 ** math.ceil(math.log2(2 * geometry.n_cols))
    largest = 0
    for b, (a0, a1) in enumerate(blocks):
        for j, (r0, r1) in enumerate(bands):
            keys, a_cuts, r_cuts, read = _region_args(data, (a0, a1), (r0, r1))
            largest = max(
                largest, read + (a1 - a0) * (r1 - r0) * (2 * geometry.n_cols + 2 * pad) * 4
            )
            layer[(filtered, b, j)] = (
                _filter, keys, a_cuts, r_cuts, air, geometry, filter, short_scan, backend, a0, a1,
                r0,
            )  # fmt: skip
    slab_sizes = []
    for s, start in enumerate(range(0, grid.shape[0], slab_slices)):
        stop = min(grid.shape[0], start + slab_slices)
        sub = grid.slab(start, stop)
        slab_sizes.append(stop - start)
        r0, r1 = fdk.row_window(geometry, sub)
        if r1 <= r0:
            layer[(out, s, 0, 0)] = (_zeros, sub.shape)
            continue
        first = int(np.searchsorted(row_edges, r0, side="right") - 1)
        last = int(np.searchsorted(row_edges, r1, side="left"))
        offset = int(row_edges[first])
        window_rows = int(row_edges[last] - row_edges[first])
        slab_bytes = 4 * int(np.prod(sub.shape))
        for b, (a0, a1) in enumerate(blocks):
            rows = [(filtered, b, j) for j in range(first, last)]
            layer[(bp, s, b)] = (_backproject, rows, geometry, a0, a1, sub, offset, backend)
            largest = max(largest, 2 * slab_bytes + 4 * (a1 - a0) * window_rows * geometry.n_cols)
        if len(blocks) > 1:  # a tree sum: two partial slabs and their sum
            largest = max(largest, 3 * slab_bytes)
        parts, level = [(bp, s, b) for b in range(len(blocks))], 0
        while len(parts) > 2:  # pairwise tree sum; an odd part waits for the next level
            pairs = list(zip(parts[::2], parts[1::2], strict=False))
            for i, pair in enumerate(pairs):
                layer[(tree, s, level, i)] = (_add, *pair)
            parts = [(tree, s, level, i) for i in range(len(pairs))] + parts[2 * len(pairs) :]
            level += 1
        layer[(out, s, 0, 0)] = (_slab, *parts)
    graph = HighLevelGraph.from_collections(out, layer, dependencies=[data])
    chunks = (tuple(slab_sizes), (grid.shape[1],), (grid.shape[2],))
    volume = da.Array(graph, out, chunks=chunks, meta=np.empty((0, 0, 0), np.float32))
    result = _labelled(
        volume, grid, geometry, projections.attrs, filter=filter, short_scan=short_scan,
        backend=backend, air=air,
    )  # fmt: skip
    result.attrs["bonemet"]["provenance"]["largest_task_bytes"] = int(largest)
    if nrecon:
        result.attrs["bonemet"]["nrecon"] = dict(nrecon)
    return result


def _reconstruct_parallel(
    projections: xr.DataArray, geometry: ParallelGeometry, *, filter: str, row_band: int
) -> xr.DataArray:
    """Slice-by-slice parallel FBP: one ``fbp-parallel`` task per row band, every angle.

    Each task reads the input chunks that cover its band (no rechunk).
    """
    if projections.shape != (geometry.angles_deg.size, geometry.n_rows, geometry.n_cols):
        raise ValueError(
            f"projections.shape={projections.shape} does not match the geometry "
            f"({geometry.angles_deg.size}, {geometry.n_rows}, {geometry.n_cols})"
        )
    data = da.asarray(projections.data)
    air = _air(data, None, projections.attrs)
    n = geometry.n_cols
    row_edges = _block_edges(data.chunks[1], row_band)
    name = "fbp-parallel-" + tokenize(data.name, geometry, filter, air, row_edges)
    layer = {}
    for j, (r0, r1) in enumerate(itertools.pairwise(row_edges)):
        keys, a_cuts, r_cuts, _ = _region_args(data, (0, data.shape[0]), (r0, r1))
        layer[(name, j, 0, 0)] = (
            _fbp_rows, keys, a_cuts, r_cuts, air, geometry.angles_deg, filter, geometry.centre_col,
            geometry.pixel,
        )  # fmt: skip
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[data])
    chunks = (tuple(np.diff(row_edges).tolist()), (n,), (n,))
    volume = da.Array(graph, name, chunks=chunks, meta=np.empty((0, 0, 0), np.float32))
    grid = VolumeGrid((geometry.n_rows, n, n), geometry.pixel)
    result = _labelled(volume, grid, None, projections.attrs, filter=filter, short_scan=False)
    result.attrs["bonemet"]["provenance"]["algorithm"] = "parallel-beam FBP"
    return result


def as_projections(projections: xr.DataArray | xr.Dataset | xr.DataTree) -> xr.DataArray:
    """The ``image`` of a scan node or Dataset, with the node's attributes as ``bonemet``."""
    if isinstance(projections, xr.DataTree):
        projections = projections.to_dataset()
    if isinstance(projections, xr.Dataset):
        if "image" not in projections.data_vars:
            raise ValueError(
                f"projections is a Dataset without an 'image' variable (it holds "
                f"{sorted(map(str, projections.data_vars))}); pass a rotation_xray scan of "
                "bonemet_dask.open_store"
            )
        image = projections["image"]
        if "bonemet" not in image.attrs and projections.attrs:
            image = image.assign_attrs(bonemet=dict(projections.attrs))
        return image
    if not isinstance(projections, xr.DataArray):
        raise TypeError(
            f"projections must be an xarray DataArray, Dataset or DataTree node, got "
            f"{type(projections).__name__}; wrap a numpy/dask array in xr.DataArray(data, "
            "dims=('angle', 'row', 'col')) and pass geometry="
        )
    return projections


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
        "algorithm": _algorithm(geometry, parameters["short_scan"]),
        "parameters": parameters,
        "geometry": {
            "source_to_object_mm": geometry.source_to_object,
            "source_to_detector_mm": geometry.source_to_detector,
            "detector_pixel_mm": geometry.detector_pixel,
            "n_projections": int(geometry.angles_deg.size),
        }
        if geometry is not None
        else {"kind": "parallel"},
        **(
            {"scanner_log": dict(geometry.calibration)}
            if getattr(geometry, "calibration", None)
            else {}
        ),
        **(
            {"sparse_views": attrs["bonemet"]["sparse_views"]}
            if "sparse_views" in attrs.get("bonemet", {})
            else {}
        ),
        "voxel_size_um": h_um,
        "units": "1/mm",
    }
    return xr.DataArray(
        volume, dims=("slice", "y", "x"), coords=coords, name="attenuation",
        attrs={"bonemet": {"provenance": provenance}},
    )  # fmt: skip


def _algorithm(geometry: ConeGeometry | None, short_scan: bool) -> str:
    """How the views were weighted, in words (a full turn needs no Parker weights)."""
    if geometry is None or not short_scan:
        return "FDK"
    if fdk.is_full_scan(geometry.angles_deg):
        return "FDK, full-turn weights (0.5 per view)"
    return "FDK, Parker short-scan weights"


def to_uint8(volume: xr.DataArray, window: tuple[float, float] | None = None) -> xr.DataArray:
    """NRecon-like linear map of attenuation to 0..255 (``window`` = attenuation at 0 and 255).

    Default window: NRecon's for the scan (``Minimum/Maximum for CS to Image Conversion`` of
    its Recon-CT ``.log``, carried by :func:`reconstruct` from the projections' ``nrecon``
    attributes), so that grey 75 means what it means in the published volumes; else, with a
    warning, the 0.1 and 99.9 percentiles of about 16 slices spread over the volume.
    """
    nrecon = (volume.attrs.get("bonemet") or {}).get("nrecon") or {}
    if window is None and nrecon.get("window_per_mm"):
        window = tuple(float(v) for v in nrecon["window_per_mm"])
    if window is None:
        logger.warning(
            "to_uint8: no NRecon window known; grey levels come from the volume's 0.1 and 99.9 "
            "percentiles, so threshold 75 may not mean what it means in BoneMet"
        )
        sample = np.asarray(volume.data[:: max(1, volume.shape[0] // 16)])
        window = tuple(float(v) for v in np.percentile(sample, (0.1, 99.9)))
    lo, hi = window
    if not hi > lo:
        raise ValueError(f"window={window} must have maximum > minimum")
    data = volume.data.map_blocks(intensity.to_uint8, lo, hi, dtype=np.uint8)
    out = volume.copy(data=data).rename("grey")
    out.attrs = {"bonemet": {**volume.attrs.get("bonemet", {}), "window": [lo, hi]}}
    return out
