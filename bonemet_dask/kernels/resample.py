"""Affine resampling of one output block from the input box it needs; block-mean binning.

Pure functions on in-memory blocks, Dask-free.  Index conventions are those of
``scipy.ndimage.affine_transform``: an output voxel at (global) index ``o`` samples the input at
``matrix @ o + offset`` (input indices, ``(slice, y, x)``), ``mode="constant"``: a sample outside
``[0, n - 1]`` along any axis is ``cval``.  :func:`affine_block` reproduces scipy's result on the
whole array for orders 0 and 1 (a numba kernel on numpy blocks; the same namespace call as scipy
on CuPy blocks); higher orders go through ``ndimage.affine_transform`` on the box, whose spline
prefilter then sees the box edges (as dask-image does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba as nb
import numpy as np

from bonemet_dask._backend import array_namespace, ndimage_namespace

__all__ = ["affine_block", "bin_mean", "input_box"]


def input_box(
    matrix: np.ndarray,
    offset: np.ndarray,
    out_start: Sequence[int],
    out_stop: Sequence[int],
    in_shape: Sequence[int],
    *,
    order: int = 1,
) -> tuple[tuple[int, int], ...] | None:
    """The input index box ``[lo, hi)`` per axis that output voxels ``out_start..out_stop`` read.

    Parameters
    ----------
    matrix, offset : numpy.ndarray
        Output index to input index map, ``(3, 3)`` and ``(3,)``.
    out_start, out_stop : sequence of int
        The output block, ``[start, stop)`` per axis (global indices).
    in_shape : sequence of int
        Shape of the whole input.
    order : int
        Interpolation order (sets the margin: 1 voxel for orders 0 and 1, ``order + 2`` above).

    Returns
    -------
    tuple of (int, int) or None
        The box clipped to the input, or None when no output voxel can see the input (the block
        is all ``cval``).
    """
    corners = np.array(
        [
            [a, b, c]
            for a in (out_start[0], out_stop[0] - 1)
            for b in (out_start[1], out_stop[1] - 1)
            for c in (out_start[2], out_stop[2] - 1)
        ],
        dtype=np.float64,
    )
    coords = corners @ np.asarray(matrix, np.float64).T + np.asarray(offset, np.float64)
    margin = 1 if order <= 1 else order + 2
    lo = np.floor(coords.min(axis=0)).astype(np.int64) - margin
    hi = np.floor(coords.max(axis=0)).astype(np.int64) + margin + 2
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(in_shape, np.int64))
    if np.any(hi <= lo):
        return None
    return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))


@nb.njit(cache=True, nogil=True, inline="always")
def _store(out, k, i, j, value, round_out, out_lo, out_hi):  # pragma: no cover - numba
    if round_out:
        # scipy's integer output: round half up, clip to the type's range
        value = np.floor(value + 0.5) if value > 0.0 else 0.0
        if value > out_hi:
            value = out_hi
        if value < out_lo:
            value = out_lo
    out[k, i, j] = value


@nb.njit(cache=True, nogil=True, inline="always")
def _sample(box, b0, b1, b2, m0, m1, m2, c0, c1, c2, order, cval):  # pragma: no cover - numba
    """One sample with scipy's ``constant``-mode edge rules (the slow, checked path)."""
    if c0 < 0.0 or c0 > m0 - 1.0 or c1 < 0.0 or c1 > m1 - 1.0 or c2 < 0.0 or c2 > m2 - 1.0:
        return cval
    if order == 0:
        return float(
            box[
                int(np.floor(c0 + 0.5)) - b0,
                int(np.floor(c1 + 0.5)) - b1,
                int(np.floor(c2 + 0.5)) - b2,
            ]
        )
    f0, f1, f2 = np.floor(c0), np.floor(c1), np.floor(c2)
    i0, i1, i2 = int(f0), int(f1), int(f2)
    w0, w1, w2 = c0 - f0, c1 - f1, c2 - f2
    # a sample exactly on the last plane takes the pair below it with weight 1
    d0 = 1 if m0 > 1 else 0
    d1 = 1 if m1 > 1 else 0
    d2 = 1 if m2 > 1 else 0
    if i0 >= m0 - 1:
        i0, w0 = m0 - 1 - d0, float(d0)
    if i1 >= m1 - 1:
        i1, w1 = m1 - 1 - d1, float(d1)
    if i2 >= m2 - 1:
        i2, w2 = m2 - 1 - d2, float(d2)
    a0, a1, a2 = i0 - b0, i1 - b1, i2 - b2
    v00 = box[a0, a1, a2] + w2 * (box[a0, a1, a2 + d2] - float(box[a0, a1, a2]))
    v01 = box[a0, a1 + d1, a2] + w2 * (box[a0, a1 + d1, a2 + d2] - float(box[a0, a1 + d1, a2]))
    v10 = box[a0 + d0, a1, a2] + w2 * (box[a0 + d0, a1, a2 + d2] - float(box[a0 + d0, a1, a2]))
    v11 = box[a0 + d0, a1 + d1, a2] + w2 * (
        box[a0 + d0, a1 + d1, a2 + d2] - float(box[a0 + d0, a1 + d1, a2])
    )
    v0 = v00 + w1 * (v01 - v00)
    v1 = v10 + w1 * (v11 - v10)
    return v0 + w0 * (v1 - v0)


@nb.njit(cache=True, nogil=True, inline="always")
def _span(r, s, lim, n):  # pragma: no cover - numba
    """Conservative ``[lo, hi)`` of ``j`` in ``0..n`` with ``0 <= r + s * j < lim`` (or empty)."""
    if s == 0.0:
        if 0.0 <= r < lim:
            return 0, n
        return 0, 0
    a = (0.0 - r) / s
    b = (lim - r) / s
    if s < 0.0:
        a, b = b, a
    lo = np.ceil(a) + 1.0
    hi = np.floor(b) - 1.0
    lo = max(lo, 0.0)
    hi = min(hi + 1.0, float(n))
    if hi <= lo:
        return 0, 0
    return int(lo), int(hi)


@nb.njit(cache=True, nogil=True, fastmath=True)
def _affine_kernel(
    box, box_lo, in_shape, matrix, offset, out_start, out, order, cval, round_out, out_lo, out_hi
):  # pragma: no cover - numba
    """Trilinear (order 1) or nearest (order 0) affine resampling of ``box`` into ``out``.

    Coordinates are summed in scipy's order (``offset + m[., 0] k + m[., 1] i + m[., 2] j``) so
    that inside/outside decisions and weights match ``scipy.ndimage.affine_transform`` exactly.
    Each output row is split into the span whose samples lie safely inside the input (no edge
    tests, the hot loop) and the few voxels around it (full checks).
    """
    n0, n1, n2 = out.shape
    m0, m1, m2 = in_shape[0], in_shape[1], in_shape[2]
    b0, b1, b2 = box_lo[0], box_lo[1], box_lo[2]
    s0, s1, s2 = matrix[0, 2], matrix[1, 2], matrix[2, 2]
    for k in range(n0):
        gk = float(out_start[0] + k)
        for i in range(n1):
            gi = float(out_start[1] + i)
            r0 = offset[0] + matrix[0, 0] * gk + matrix[0, 1] * gi
            r1 = offset[1] + matrix[1, 0] * gk + matrix[1, 1] * gi
            r2 = offset[2] + matrix[2, 0] * gk + matrix[2, 1] * gi
            j0 = float(out_start[2])
            lo0, hi0 = _span(r0 + s0 * j0, s0, m0 - 1.0, n2)
            lo1, hi1 = _span(r1 + s1 * j0, s1, m1 - 1.0, n2)
            lo2, hi2 = _span(r2 + s2 * j0, s2, m2 - 1.0, n2)
            lo = max(lo0, max(lo1, lo2))
            hi = min(hi0, min(hi1, hi2))
            if order != 1 or hi <= lo:
                lo, hi = n2, n2
            for j in range(lo):
                gj = float(out_start[2] + j)
                value = _sample(
                    box, b0, b1, b2, m0, m1, m2,
                    r0 + s0 * gj, r1 + s1 * gj, r2 + s2 * gj, order, cval,
                )  # fmt: skip
                _store(out, k, i, j, value, round_out, out_lo, out_hi)
            for j in range(lo, hi):
                gj = float(out_start[2] + j)
                c0 = r0 + s0 * gj
                c1 = r1 + s1 * gj
                c2 = r2 + s2 * gj
                # inside the span every coordinate is >= 0: truncation is the floor
                t0, t1, t2 = int(c0), int(c1), int(c2)
                w0, w1, w2 = c0 - t0, c1 - t1, c2 - t2
                a0, a1, a2 = t0 - b0, t1 - b1, t2 - b2
                v000 = float(box[a0, a1, a2])
                v001 = float(box[a0, a1, a2 + 1])
                v010 = float(box[a0, a1 + 1, a2])
                v011 = float(box[a0, a1 + 1, a2 + 1])
                v100 = float(box[a0 + 1, a1, a2])
                v101 = float(box[a0 + 1, a1, a2 + 1])
                v110 = float(box[a0 + 1, a1 + 1, a2])
                v111 = float(box[a0 + 1, a1 + 1, a2 + 1])
                v00 = v000 + w2 * (v001 - v000)
                v01 = v010 + w2 * (v011 - v010)
                v10 = v100 + w2 * (v101 - v100)
                v11 = v110 + w2 * (v111 - v110)
                v0 = v00 + w1 * (v01 - v00)
                v1 = v10 + w1 * (v11 - v10)
                _store(out, k, i, j, v0 + w0 * (v1 - v0), round_out, out_lo, out_hi)
            for j in range(max(hi, lo), n2):
                gj = float(out_start[2] + j)
                value = _sample(
                    box, b0, b1, b2, m0, m1, m2,
                    r0 + s0 * gj, r1 + s1 * gj, r2 + s2 * gj, order, cval,
                )  # fmt: skip
                _store(out, k, i, j, value, round_out, out_lo, out_hi)


def affine_block(
    box: Any,
    *,
    matrix: np.ndarray,
    offset: np.ndarray,
    box_lo: Sequence[int],
    in_shape: Sequence[int],
    out_start: Sequence[int],
    out_shape: Sequence[int],
    order: int = 1,
    cval: float = 0.0,
    dtype: Any = None,
) -> Any:
    """One output block ``(slice, y, x)`` of an affine resampling, from the input box it needs.

    Parameters
    ----------
    box : numpy.ndarray or cupy.ndarray
        The input voxels ``box_lo <= index < box_lo + box.shape`` (see :func:`input_box`); any
        array when the block sees no input (then only ``cval`` is written).
    matrix, offset : numpy.ndarray
        Global output index to global input index, ``(3, 3)`` and ``(3,)``.
    box_lo : sequence of int
        Global input index of ``box[0, 0, 0]``.
    in_shape : sequence of int
        Shape of the whole input (samples outside it are ``cval``, as scipy's ``constant`` mode).
    out_start, out_shape : sequence of int
        Global index of the block's first voxel, and its shape.
    order : int
        Spline order: 0 nearest, 1 trilinear (exactly scipy's), 2-5 via ``ndimage``.
    cval : float
        Value outside the input.
    dtype : numpy dtype, optional
        Output dtype (default the input's); integer outputs are rounded half up and clipped.

    Returns
    -------
    array
        ``out_shape``, same namespace as ``box``.
    """
    xp = array_namespace(box)
    dtype = np.dtype(box.dtype if dtype is None else dtype)
    matrix = np.asarray(matrix, np.float64)
    offset = np.asarray(offset, np.float64)
    if xp is np and order in (0, 1):
        out = np.empty(tuple(int(n) for n in out_shape), dtype=dtype)
        integer = np.issubdtype(dtype, np.integer)
        info = np.iinfo(dtype) if integer else None
        _affine_kernel(
            np.ascontiguousarray(box),
            np.asarray(box_lo, np.int64),
            np.asarray(in_shape, np.int64),
            matrix,
            offset,
            np.asarray(out_start, np.int64),
            out,
            int(order),
            float(cval),
            integer,
            float(info.min) if integer else 0.0,
            float(info.max) if integer else 0.0,
        )
        return out
    ndi = ndimage_namespace(box)
    # block-local output index -> box-local input index
    local_offset = offset + matrix @ np.asarray(out_start, np.float64) - np.asarray(box_lo)
    return ndi.affine_transform(
        box,
        xp.asarray(matrix),
        offset=tuple(float(v) for v in local_offset),
        output_shape=tuple(int(n) for n in out_shape),
        output=dtype,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=order > 1,
    )


def bin_mean(block: Any, factors: Sequence[int]) -> Any:
    """Block-mean binning of a ``(slice, y, x)`` block by integer ``factors``, float32 out.

    Output voxel ``m`` averages input voxels ``m * f .. m * f + f - 1`` along each axis, so its
    centre sits at input index ``m * f + (f - 1) / 2``.

    Raises
    ------
    ValueError
        If a block length is not a multiple of its factor (crop the array first).
    """
    xp = array_namespace(block)
    factors = tuple(int(f) for f in factors)
    if len(factors) != block.ndim or min(factors) < 1:
        raise ValueError(f"factors={factors} must be {block.ndim} positive ints")
    if any(n % f for n, f in zip(block.shape, factors, strict=True)):
        raise ValueError(
            f"block shape {block.shape} is not a multiple of factors={factors}; crop the array "
            "to whole bins (and chunk it in multiples of the factors) before binning"
        )
    shape = []
    for n, f in zip(block.shape, factors, strict=True):
        shape += [n // f, f]
    binned = block.astype(xp.float32, copy=False).reshape(shape)
    return binned.mean(axis=tuple(range(1, 2 * block.ndim, 2)), dtype=xp.float32)
