"""Lazy, output-driven affine resampling: each output chunk reads only the input box it needs.

The pattern of dask-image's ``ndinterp.affine_transform`` (one task per output chunk over the input
box its corners map to), with output chunks sized from the memory budget instead of one chunk the
size of the whole image, and an exact trilinear numba kernel on CPU blocks
(:mod:`bonemet_dask.kernels.resample`).  No pixel arithmetic happens here.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from bonemet_dask._backend import meta_like
from bonemet_dask.config import memory_budget_bytes
from bonemet_dask.kernels.resample import affine_block, input_box
from bonemet_dask.transform import RigidTransform

if TYPE_CHECKING:
    from bonemet_dask.ops.register import RegistrationResult

__all__ = [
    "REGIST_SHAPE",
    "affine_resample",
    "default_chunks",
    "resample",
    "voxel_size_um",
]

logger = logging.getLogger(__name__)

REGIST_SHAPE: Final = (1538, 539, 509)
"""The published Regist-CT grid: 1538 slices of 509 x 539 (width x height), as (slice, y, x)."""
CHUNK_FRACTION: Final = 64
"""An output chunk holds at most ``memory budget / CHUNK_FRACTION`` bytes (64 MiB of 4 GiB): its
input box, the task's copy of it and the neighbours running beside it must all fit the budget."""
ORDERS: Final = (0, 1, 2, 3, 4, 5)


def default_chunks(
    shape: Sequence[int], dtype: Any, *, budget: int | None = None
) -> tuple[int, int, int]:
    """Output block shape of :func:`affine_resample`: whole ``(y, x)`` planes, slabs of slices.

    A block holds at most ``budget / CHUNK_FRACTION`` bytes; slabs deeper than 64 slices are a
    multiple of 64 (the store's shard depth).  A plane larger than that is split along ``y``
    (then ``x``).

    Parameters
    ----------
    shape : sequence of 3 int
        Output shape ``(slice, y, x)``.
    dtype : numpy dtype
        Output dtype.
    budget : int, optional
        Bytes per worker (default :func:`bonemet_dask.config.memory_budget_bytes`).
    """
    budget = memory_budget_bytes() if budget is None else int(budget)
    target = max(1, budget // CHUNK_FRACTION)
    itemsize = np.dtype(dtype).itemsize
    n0, n1, n2 = (int(n) for n in shape)
    plane = n1 * n2 * itemsize
    if plane <= target:
        depth = min(n0, max(1, target // plane))
        if depth >= 64:
            depth = depth // 64 * 64
        return depth, n1, n2
    row = n2 * itemsize
    if row <= target:
        return 1, min(n1, max(1, target // row)), n2
    return 1, 1, min(n2, max(1, target // itemsize))


def affine_resample(
    data: Any,
    matrix: Any,
    offset: Any,
    *,
    output_shape: Sequence[int],
    chunks: Sequence[int] | Sequence[Sequence[int]] | None = None,
    order: int = 1,
    cval: float = 0.0,
    dtype: Any = None,
) -> da.Array:
    """``scipy.ndimage.affine_transform`` as a chunked, output-driven Dask graph (index space).

    Output voxel ``o`` samples the input at ``matrix @ o + offset`` (input indices), constant mode.

    Parameters
    ----------
    data : dask.array.Array or array
        Input ``(slice, y, x)``; numpy or CuPy chunks.
    matrix : array_like, shape (3, 3)
        Output index to input index.
    offset : array_like, shape (3,)
        Added after ``matrix``.
    output_shape : sequence of 3 int
        Shape of the result.
    chunks : tuple, optional
        Output chunks (a block shape or explicit per-axis chunk sizes); default
        :func:`default_chunks` from the memory budget.
    order : int
        0 nearest, 1 trilinear (both exactly scipy's result), 2-5 splines (prefiltered within
        each input box, so close to but not exactly scipy's near box edges).
    cval : float
        Value outside the input.
    dtype : numpy dtype, optional
        Output dtype (default the input's; integer outputs are rounded half up and clipped).

    Returns
    -------
    dask.array.Array
        One task per output chunk, each depending only on the input chunks its box overlaps.

    Raises
    ------
    ValueError
        For a bad ``order``, matrix/offset/shape of the wrong size, or non-3-D input.
    """
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is not one of {', '.join(map(str, ORDERS))}")
    data = da.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"data must be 3-D (slice, y, x), got shape {data.shape}")
    matrix = np.asarray(matrix, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64).reshape(-1)
    if matrix.shape != (3, 3) or offset.shape != (3,):
        raise ValueError(
            f"matrix must be 3x3 and offset 3 values, got {matrix.shape} and {offset.shape}; "
            "for a RigidTransform use transform.index_affine(...)"
        )
    output_shape = tuple(int(n) for n in output_shape)
    if len(output_shape) != 3 or min(output_shape) < 1:
        raise ValueError(f"output_shape={output_shape} must be 3 positive sizes")
    dtype = np.dtype(data.dtype if dtype is None else dtype)
    if chunks is None:
        chunks = default_chunks(output_shape, dtype)
    out_chunks = da.core.normalize_chunks(chunks, output_shape, dtype=dtype)
    meta = meta_like(data, dtype)
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in out_chunks]
    blocks: np.ndarray = np.empty(tuple(len(c) for c in out_chunks), dtype=object)
    for index in itertools.product(*(range(len(c)) for c in out_chunks)):
        start = [int(starts[a][i]) for a, i in enumerate(index)]
        shape = [int(out_chunks[a][i]) for a, i in enumerate(index)]
        stop = [s + n for s, n in zip(start, shape, strict=True)]
        box = input_box(matrix, offset, start, stop, data.shape, order=order)
        if box is None:  # the block sees no input: one voxel stands in, only cval is written
            box = ((0, 1), (0, 1), (0, 1))
        piece = data[tuple(slice(lo, hi) for lo, hi in box)]
        piece = piece.rechunk(piece.shape)
        blocks[index] = da.map_blocks(
            affine_block,
            piece,
            matrix=matrix,
            offset=offset,
            box_lo=tuple(lo for lo, _ in box),
            in_shape=data.shape,
            out_start=tuple(start),
            out_shape=tuple(shape),
            order=order,
            cval=cval,
            dtype=dtype,
            chunks=tuple((n,) for n in shape),
            meta=meta,
            name=f"resample-{tokenize(piece.name, matrix, offset, start, shape, order, cval)}",
        )
    return da.block(blocks.tolist())


def voxel_size_um(volume: xr.DataArray) -> tuple[float, float, float]:
    """Voxel size ``(slice, y, x)`` of a volume, micrometres.

    Read from ``attrs["voxel_size_um"]`` (one number or three) when present; else from the
    spacing of the ``y`` and ``x`` coordinates (micrometres, as :func:`bonemet_dask.open_store`
    gives them), the slice spacing taken equal to ``y``'s (CT voxels are isotropic; the ``slice``
    coordinate is a file index, not a position).

    Raises
    ------
    ValueError
        If neither source gives a positive size.
    """
    value = volume.attrs.get("voxel_size_um")
    if value is not None:
        size = np.broadcast_to(np.asarray(value, dtype=np.float64), (3,))
    else:
        steps = []
        for dim in ("y", "x"):
            coord = volume.coords.get(dim)
            if coord is None or coord.size < 2:
                steps.append(np.nan)
                continue
            steps.append(float(coord.values[1] - coord.values[0]))
        size = np.array([steps[0], steps[0], steps[1]])
    if size.shape != (3,) or not np.all(np.isfinite(size)) or np.any(size <= 0):
        raise ValueError(
            f"cannot tell the voxel size of volume {volume.name!r}: give it attrs['voxel_size_um']"
            " or micrometre 'y'/'x' coordinates (as bonemet_dask.open_store does)"
        )
    return tuple(float(v) for v in size)  # type: ignore[return-value]


def origin_um(volume: xr.DataArray) -> tuple[float, float, float]:
    """Physical position of voxel ``(0, 0, 0)``: ``attrs["origin_um"]``, else the origin."""
    value = volume.attrs.get("origin_um", (0.0, 0.0, 0.0))
    origin = np.asarray(value, dtype=np.float64).reshape(-1)
    if origin.shape != (3,):
        raise ValueError(f"attrs['origin_um']={value!r} must be 3 numbers (slice, y, x)")
    return tuple(float(v) for v in origin)  # type: ignore[return-value]


def resample(
    volume: xr.DataArray,
    transform: RigidTransform | RegistrationResult,
    *,
    shape: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    order: int = 1,
    chunks: Sequence[int] | None = None,
    cval: float = 0.0,
) -> xr.DataArray:
    """Resample a volume onto a new grid through a rigid transform, lazily and chunk by chunk.

    ``out[p] = volume[transform(p)]`` for every output voxel position ``p`` (micrometres,
    ``(slice, y, x)``; :mod:`bonemet_dask.transform` states the conventions).

    Parameters
    ----------
    volume : xarray.DataArray
        ``(slice, y, x)`` input, e.g. a ``seg_ct`` image from :func:`bonemet_dask.open_store`;
        its voxel size comes from :func:`voxel_size_um`.
    transform : RigidTransform or RegistrationResult
        Output (fixed) micrometres to input (moving) micrometres.  A :func:`register` result
        gives its transform and the output grid it was found for (its ``shape`` and
        ``spacing_um``): ``resample(moving, register(moving))``.
    shape : sequence of 3 int, optional
        Output grid; default the registration result's, else the published Regist-CT grid
        ``(1538, 539, 509)``.
    spacing : float or sequence of 3 float, optional
        Output voxel size, micrometres; default the registration result's, else the input's.
    order : int
        Interpolation: 0 nearest, 1 trilinear (default), 2-5 spline.
    chunks : sequence of int, optional
        Output block shape; default from the memory budget (:func:`default_chunks`).
    cval : float
        Value outside the input.

    Returns
    -------
    xarray.DataArray
        Lazy, the input's dtype, dims ``(slice, y, x)``, coords ``slice`` (index) and ``y``/``x``
        (micrometres); attrs ``voxel_size_um`` and ``transform`` (:meth:`RigidTransform.to_dict`).
        Scalar coords (``mouse``, ``side``, ``week``) are kept.
    """
    from bonemet_dask.ops.register import RegistrationResult

    if isinstance(transform, RegistrationResult):
        shape = transform.shape if shape is None else shape
        spacing = transform.spacing_um if spacing is None else spacing
        transform = transform.transform
    if not isinstance(transform, RigidTransform):
        raise TypeError(
            f"transform must be a RigidTransform or a RegistrationResult, got "
            f"{type(transform).__name__}; build one with bm.RigidTransform.from_matrix(...) or "
            "pass what register(...) returns"
        )
    shape = REGIST_SHAPE if shape is None else shape
    if tuple(volume.dims) != ("slice", "y", "x"):
        raise ValueError(f"volume.dims={volume.dims} must be ('slice', 'y', 'x')")
    in_spacing = voxel_size_um(volume)
    out_spacing = (
        in_spacing
        if spacing is None
        else tuple(float(v) for v in np.broadcast_to(np.asarray(spacing, np.float64), (3,)))
    )
    matrix, offset = transform.index_affine(
        out_spacing, in_spacing, moving_origin=origin_um(volume)
    )
    data = affine_resample(
        volume.data, matrix, offset, output_shape=shape, chunks=chunks, order=order, cval=cval
    )
    micrometre = {"units": "micrometer"}
    coords: dict[str, Any] = {
        "slice": ("slice", np.arange(data.shape[0])),
        "y": ("y", np.arange(data.shape[1]) * out_spacing[1], micrometre),
        "x": ("x", np.arange(data.shape[2]) * out_spacing[2], micrometre),
    }
    for name, coord in volume.coords.items():
        if coord.ndim == 0:
            coords[name] = coord.variable
    attrs = {"voxel_size_um": list(out_spacing), "transform": transform.to_dict()}
    return xr.DataArray(
        data, dims=("slice", "y", "x"), coords=coords, name=volume.name, attrs=attrs
    )
