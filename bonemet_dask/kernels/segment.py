"""Segmentation kernels: threshold, binning, and finding the tibiae on a binned volume.

Every function is pure and Dask-free, written once against ``xp = array_namespace(block)`` and
``ndi = ndimage_namespace(block)``, so it runs on a numpy chunk or a CuPy chunk.  Volumes are
``(slice, y, x)`` with slice 0 the top (proximal) slice and x growing towards world ``+x`` (the
conventions of :mod:`bonemet_dask.geometry`); grey levels are uint8 as NRecon writes them.

The coarse-to-fine plan of DESIGN.md section 3.3 uses them in this order:

1. :func:`bin_bone_counts` on every chunk: bone voxels per ``f x f x f`` block (the binned copy);
2. :func:`binned_bone` then :func:`find_legs` on the whole binned copy: one box per leg,
   ordered by x;
3. :func:`knee_search_range` then :func:`area_profile` and :func:`knee_cut` (the deepest valley)
   on a full-resolution slab around the knee: the slice of the joint space (the cut);
4. :func:`tibia_region`: the tibia and fibula below the cut, on the binned copy;
5. :func:`threshold_in_region` on every chunk of the full-resolution crop: the mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bonemet_dask._backend import array_namespace, ndimage_namespace

__all__ = [
    "area_profile",
    "bin_bone_counts",
    "binned_bone",
    "counts_dtype",
    "deepest_valley",
    "find_legs",
    "knee_cut",
    "knee_search_range",
    "threshold",
    "threshold_in_region",
    "tibia_region",
]


def threshold(block: Any, *, level: int) -> Any:
    """Bone mask ``block >= level`` of a ``(slice, y, x)`` grey block (any shape, any namespace)."""
    return block >= level


def counts_dtype(factor: int) -> np.dtype:
    """The smallest unsigned dtype that holds ``factor**3`` (the count of a full bin)."""
    return np.dtype(np.uint8 if factor**3 <= np.iinfo(np.uint8).max else np.uint16)


def bin_bone_counts(block: Any, *, level: int, factor: int) -> Any:
    """Bone voxels (``>= level``) in each ``factor``-cubed bin of a ``(slice, y, x)`` block.

    Parameters
    ----------
    block : array
        Grey values, ``(slice, y, x)``.  Its first voxel must sit on a bin boundary; a trailing
        part shorter than ``factor`` makes a partial bin (counted over the voxels it has).
    level : int
        Bone threshold.
    factor : int
        Bin edge in voxels, the same along all three axes.

    Returns
    -------
    array
        ``ceil(shape / factor)``, dtype :func:`counts_dtype` of ``factor``.
    """
    xp = array_namespace(block)
    bone = threshold(block, level=level)
    pad = [(0, -n % factor) for n in bone.shape]
    if any(p for _, p in pad):
        bone = xp.pad(bone, pad)
    nz, ny, nx = (n // factor for n in bone.shape)
    bins = bone.reshape(nz, factor, ny, factor, nx, factor)
    return bins.sum(axis=(1, 3, 5), dtype=counts_dtype(factor))


def binned_bone(counts: Any, *, factor: int) -> Any:
    """Bins that are bone: at least ``max(1, factor**3 // 16)`` bone voxels (1/16 of a bin).

    A few voxels over the threshold in a bin of soft tissue are noise; 1/16 keeps a cortex or
    a fibula a voxel thick at any binning while dropping isolated noisy voxels.
    """
    return counts >= max(1, factor**3 // 16)


def _label(mask: Any) -> tuple[Any, int]:
    """26-connected components of a 3-D mask."""
    ndi = ndimage_namespace(mask)
    structure = np.ones((3, 3, 3), dtype=bool)
    if array_namespace(mask) is not np:
        structure = array_namespace(mask).asarray(structure)
    labels, n = ndi.label(mask, structure=structure)
    return labels, int(n)


def _component_sizes(labels: Any, n: int) -> np.ndarray:
    xp = array_namespace(labels)
    sizes = xp.bincount(labels.ravel(), minlength=n + 1)
    return np.asarray(sizes.get() if xp is not np else sizes)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def find_legs(
    bone: Any, *, min_fraction: float = 0.01
) -> list[tuple[tuple[int, int, int], tuple[int, int, int], int]]:
    """Boxes of the bone clusters of a binned hindlimb mask, separated along x, ordered by x.

    Components smaller than ``min_fraction`` of the largest (noise, specks) are dropped first;
    the remaining bone is split into the runs of x columns that hold bone. Each leg's bones
    (femur, patella, tibia, fibula) overlap along x, and the two legs of a hindlimb scan are
    apart, so a scan of two legs gives two clusters.

    Parameters
    ----------
    bone : array of bool
        Binned bone mask, ``(slice, y, x)``.
    min_fraction : float
        Smallest component kept, as a fraction of the largest component's voxels.

    Returns
    -------
    list of (lo, hi, voxels)
        One entry per cluster, ordered by x: the box ``lo <= index < hi`` of its bone and its
        number of bone voxels.  Empty when there is no bone.
    """
    xp = array_namespace(bone)
    labels, n = _label(bone)
    if n == 0:
        return []
    sizes = _component_sizes(labels, n)
    sizes[0] = 0
    keep = sizes >= max(1.0, min_fraction * sizes.max())
    kept = xp.asarray(keep)[labels]
    columns = np.asarray(_host(kept.any(axis=(0, 1))))
    out = []
    for x0, x1 in _runs(columns):
        part = kept[:, :, x0:x1]
        zs = np.flatnonzero(_host(part.any(axis=(1, 2))))
        ys = np.flatnonzero(_host(part.any(axis=(0, 2))))
        lo = (int(zs[0]), int(ys[0]), x0)
        hi = (int(zs[-1]) + 1, int(ys[-1]) + 1, x1)
        out.append((lo, hi, int(_host(part.sum()))))
    return out


def _host(array: Any) -> Any:
    return array.get() if hasattr(array, "get") and not isinstance(array, np.ndarray) else array


def knee_search_range(bone: Any, *, half_width: int) -> tuple[int, int]:
    """Slices ``(start, stop)`` around the widest bone cross-section of one leg's binned mask.

    The widest cross-section of a hindlimb is the femoral condyles or the tibial plateau; the
    joint space between them lies within a few millimetres of it.

    Parameters
    ----------
    bone : array of bool
        Binned bone mask of one leg, ``(slice, y, x)``.
    half_width : int
        Slices kept on each side of the widest one.
    """
    area = np.asarray(_host(area_profile(bone, level=True)))
    widest = int(np.argmax(area))
    return max(0, widest - half_width), min(area.size, widest + half_width + 1)


def area_profile(block: Any, *, level: Any) -> Any:
    """Bone voxels per slice (``int64``, one per slice) of a ``(slice, y, x)`` block.

    ``level`` is the grey threshold; ``level=True`` counts a boolean mask as it is.
    """
    bone = block if level is True else threshold(block, level=level)
    return bone.sum(axis=(1, 2), dtype=np.int64)


def deepest_valley(profile: np.ndarray) -> tuple[int, float]:
    """The deepest valley of a 1-D profile between two higher parts, and its depth.

    The depth at ``i`` is ``min(max(profile[:i+1]), max(profile[i:])) - profile[i]``: how far
    water would stand above ``i``.  For the bone area per slice through a knee, the joint space
    between the femoral condyles and the tibial plateau is by far the deepest valley.

    Parameters
    ----------
    profile : numpy.ndarray
        1-D profile, e.g. bone area per slice, proximal first.

    Returns
    -------
    (int, float)
        Index of the valley's bottom (the last index of a flat bottom, i.e. its distal end) and
        its depth (0.0 when the profile has no valley).
    """
    values = np.asarray(profile, dtype=np.float64)
    if values.size == 0:
        return 0, 0.0
    left = np.maximum.accumulate(values)
    right = np.maximum.accumulate(values[::-1])[::-1]
    depth = np.minimum(left, right) - values
    best = float(depth.max())
    first = int(np.argmax(depth))
    stop = first
    while stop + 1 < values.size and depth[stop + 1] == best and values[stop + 1] == values[first]:
        stop += 1
    return stop, best


def knee_cut(
    profile: np.ndarray,
    *,
    min_depth: float = 0.25,
    level: str = "bottom",
    smoothing: float = 0.0,
) -> int | None:
    """Index of the knee joint space in a bone-area profile through a knee, or None.

    Parameters
    ----------
    profile : numpy.ndarray
        Bone voxels per slice, proximal first (:func:`area_profile` of a slab around the knee).
    min_depth : float
        Smallest valley depth counted as a joint, as a fraction of the widest section; shallower
        valleys are dips within one bone (a fibular head, the end of the solid plateau).
    level : {"bottom", "edge"}
        ``"bottom"``: the valley's lowest slice.  ``"edge"``: the last slice before the profile
        has risen halfway from that bottom to the highest section below it, i.e. just above
        the tibial plateau's surface.  A reconstruction smears bone into the joint space and
        puts bright bands on horizontal surfaces (cone-beam FDK does at the knee), which moves
        the bottom by several slices but not the half-rise of the plateau.
    smoothing : float
        Gaussian sigma, slices, applied to the profile first (the bands are a few slices
        thick, the joint space wider).

    Returns
    -------
    int or None
        The last slice of the joint space (the tibia starts below it), or None when the
        profile has no valley that deep (no femur above the tibia in the slab).
    """
    if level not in ("bottom", "edge"):
        raise ValueError(f"level={level!r} is not 'bottom' or 'edge'")
    values = np.asarray(profile, dtype=np.float64)
    if values.size and smoothing > 0:
        from scipy import ndimage

        values = ndimage.gaussian_filter1d(values, float(smoothing), mode="nearest")
    index, depth = deepest_valley(values)
    if values.size == 0 or depth <= 0 or depth < min_depth * float(values.max()):
        return None
    if level == "edge":
        half = (values[index] + values[index:].max()) / 2
        while index + 1 < values.size and values[index + 1] < half:
            index += 1
    return index


def tibia_region(bone: Any, *, top: int) -> tuple[Any, tuple[int, ...], tuple[int, ...]]:
    """The tibia and fibula of one leg's binned mask below slice ``top``, and their box.

    The largest 26-connected component below ``top`` is the tibia (the fibula's head and its
    fused distal part join it); components separated from it by at most one empty bin are kept
    with it (a fibula shaft broken by binning).

    Parameters
    ----------
    bone : array of bool
        Binned bone mask of one leg, ``(slice, y, x)``.
    top : int
        First slice below the knee cut; slices above it are ignored.

    Returns
    -------
    region : array of bool
        Same shape as ``bone``: the kept bone dilated by one bin (where a full-resolution voxel
        may be bone of this tibia), False above ``top``.
    lo, hi : tuple of int
        Box ``lo <= index < hi`` of the kept bone itself (no dilation).  Both are ``(0, 0, 0)``
        when there is no bone below ``top``.
    """
    xp = array_namespace(bone)
    ndi = ndimage_namespace(bone)
    below = xp.zeros(bone.shape, dtype=bool)
    below[top:] = bone[top:]
    cube = xp.ones((3, 3, 3), dtype=bool)
    near = ndi.binary_dilation(below, structure=cube)
    labels, n = _label(near)
    if n == 0:
        return below, (0, 0, 0), (0, 0, 0)
    sizes = _component_sizes(labels * below, n)  # bone voxels, not dilated ones, decide
    sizes[0] = 0
    keep = labels == int(np.argmax(sizes))
    kept = keep & below
    region = ndi.binary_dilation(kept, structure=cube) & keep
    region[:top] = False
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        index = np.flatnonzero(_host(kept.any(axis=other)))
        lo.append(int(index[0]))
        hi.append(int(index[-1]) + 1)
    return region, tuple(lo), tuple(hi)


def threshold_in_region(
    block: Any, region: Any, *, level: int, factor: int, start: tuple[int, int, int]
) -> Any:
    """Bone mask of a full-resolution ``(slice, y, x)`` block, limited to a binned region.

    Parameters
    ----------
    block : array
        Grey values of one chunk.
    region : array of bool
        Binned region (bins of ``factor`` voxels; numpy, or the block's namespace: it is moved
        to the block's device); bin ``(i, j, k)`` covers voxels
        ``factor * (i, j, k)`` to ``factor * (i, j, k) + factor - 1`` of the region's frame.
    level : int
        Bone threshold.
    factor : int
        Bin edge in voxels.
    start : tuple of 3 int
        Index of the block's first voxel in the region's frame (voxels, not bins).

    Returns
    -------
    array of bool
        ``block >= level`` where the voxel's bin is in ``region``; False elsewhere, including
        voxels whose bin lies outside ``region``.
    """
    xp = array_namespace(block)
    region = xp.asarray(region)  # a small host array meets a device chunk: one copy
    inside = []
    for axis, (n, s) in enumerate(zip(block.shape, start, strict=True)):
        bins = (xp.arange(n) + s) // factor
        valid = (bins >= 0) & (bins < region.shape[axis])
        inside.append((xp.clip(bins, 0, max(region.shape[axis] - 1, 0)), valid))
    if min(region.shape) == 0:
        return xp.zeros(block.shape, dtype=bool)
    (iz, vz), (iy, vy), (ix, vx) = inside
    up = region[iz[:, None, None], iy[None, :, None], ix[None, None, :]]
    up &= vz[:, None, None] & vy[None, :, None] & vx[None, None, :]
    return threshold(block, level=level) & up
