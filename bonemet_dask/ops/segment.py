"""Segment the tibiae of hindlimb reconstructions: one greyscale crop and bone mask per leg.

DESIGN.md section 3.3: the bones are found on a binned copy (``binning``-cubed bins counting the
voxels at or above the threshold; 4x binning turns a 16.9 GB scan into 264 MB, read by one
task), the knee joint is located on a full-resolution slab around the widest cross-section, and
the crop is then cut and thresholded at full resolution chunk by chunk.  Pixel work lives in
:mod:`bonemet_dask.kernels.segment`; this module wires graphs and writes the store.

The store stage that writes ``seg_ct`` groups is :mod:`bonemet_dask.ops.segment_store`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from bonemet_dask import __version__
from bonemet_dask._backend import meta_like, to_host
from bonemet_dask.io.store import (
    ImageLayout,
)
from bonemet_dask.kernels import segment as kernels

__all__ = ["SIDES_BY_X", "SegmentationError", "segment_tibiae"]

logger = logging.getLogger(__name__)

SIDES_BY_X = ("left", "right")
"""Legs by increasing x index: the left leg lies at world ``-x`` (:mod:`bonemet_dask.geometry`)."""
MIN_LEG_FRACTION = 0.1
"""A second bone cluster smaller than this fraction of the largest is not counted as a leg."""
KNEE_SMOOTHING_UM = 60.0
"""Gaussian sigma (micrometres) of the bone-area profile's smoothing before the knee cut at
the ``"edge"`` level: wider than a reconstruction's bright bands at the plateau (a few 40 um
slices), narrower than the joint space."""


class SegmentationError(ValueError):
    """A scan cannot be segmented (no bone, one leg only, no tibia below the knee)."""


# --------------------------------------------------------------------------------------------
# One volume
# --------------------------------------------------------------------------------------------


def segment_tibiae(
    volume: xr.DataArray,
    threshold: int = 75,
    *,
    margin_um: float = 300.0,
    binning: int = 4,
    knee_search_um: float = 2000.0,
    knee_level: str = "edge",
    voxel_size_um: float | None = None,
) -> dict[str, xr.DataArray]:
    """Crop both tibiae (with their fibulae, below the knee) out of a hindlimb reconstruction.

    Parameters
    ----------
    volume : xarray.DataArray
        uint8 hindlimb reconstruction, dims ``(slice, y, x)``: slice 0 proximal (knee and femur
        up), x growing towards world ``+x`` so that the left leg has the lower x indices.  numpy-
        or dask-backed (e.g. a ``recon_ct`` scan of :func:`bonemet_dask.open_store`).
    threshold : int
        Global bone threshold, grey levels 1..255 (BoneMet: 75).
    margin_um : float
        Margin added around each tibia + fibula bounding box, micrometres; none above the cut.
    binning : int
        Bin edge (voxels) of the copy on which the bones are found.
    knee_search_um : float
        Half height of the full-resolution slab searched for the knee joint, micrometres,
        centred on the leg's widest cross-section (the condyles or the tibial plateau).
    knee_level : {"edge", "bottom"}
        Where in the joint space the cut goes: ``"edge"`` (default) just above the tibial
        plateau's surface, where the bone area has risen halfway from the joint's floor to the
        plateau (profile smoothed by :data:`KNEE_SMOOTHING_UM`); ``"bottom"`` the floor itself.
        The floor moves with a reconstruction's smear across the joint and its bright bands at
        the plateau (by -4 to +7 slices at 40 um, against 0 to 1 for the edge), see
        :func:`bonemet_dask.kernels.segment.knee_cut`.
    voxel_size_um : float, optional
        Voxel edge in micrometres; default the spacing of the ``x`` coordinate (micrometres).

    Returns
    -------
    dict of str to xarray.DataArray
        ``{"left": crop, "right": crop}``: uint8 greyscale crops named ``image`` (dims
        ``slice, y, x``, the source's coordinates over the crop, scalar coord ``side``) carrying
        the boolean bone mask as the coordinate ``mask`` (same dims).  Both are lazy (dask);
        finding the box reads the volume once (the binned copy) plus a slab per knee.
        ``attrs["bonemet"]`` holds ``crop_box`` (``lo``/``hi`` voxel indices in the source,
        ``lo <= index < hi``), ``threshold``, ``knee_slice`` and ``provenance``.

    Raises
    ------
    TypeError
        If ``volume`` is not a DataArray.
    ValueError
        For wrong dims or dtype, or an out-of-range option (the message names the fix).
    SegmentationError
        If the scan has no bone at the threshold, only one leg, or no tibia below a knee.

    Notes
    -----
    The knee cut is in the deepest valley of the bone area per slice between the femoral
    condyles and the tibial plateau (the joint space), found on full-resolution slices, at its
    ``knee_level``; the crop starts on the slice below it. Without a valley at least a quarter
    as deep as the widest section (no femur in the field of view) the crop starts at the leg's
    first bone slice. The tibia is the largest connected bone below the cut on the binned copy;
    the fibula, joined to it at the head and distally, comes with it. The mask is ``grey >=
    threshold`` within one bin of that bone, so other bones and noise in the box stay out of it.
    """
    scan = _describe(volume)
    factor, h_um = _check_volume(volume, threshold, binning, margin_um, knee_search_um)
    threshold, margin_um, knee_search_um = int(threshold), float(margin_um), float(knee_search_um)
    if knee_level not in ("edge", "bottom"):
        raise ValueError(f"knee_level={knee_level!r} is not 'edge' or 'bottom'")
    h_um = voxel_size_um or h_um
    if h_um is None or not h_um > 0:
        raise ValueError(
            f"{scan}: the voxel size is unknown (no micrometre 'x' coordinate); pass "
            "voxel_size_um=..."
        )
    data = _as_dask(volume.data)
    counts = _binned_counts(data, threshold, factor)
    bone = kernels.binned_bone(counts, factor=factor)
    legs = _two_legs(kernels.find_legs(bone), bone.shape, factor, h_um, threshold, scan)
    half = math.ceil(knee_search_um / h_um / factor)
    windows, profiles = [], []
    for lo, hi, _ in legs:
        z0, z1 = kernels.knee_search_range(bone[:, lo[1] : hi[1], lo[2] : hi[2]], half_width=half)
        slab = data[z0 * factor : z1 * factor, lo[1] * factor : hi[1] * factor,
                    lo[2] * factor : hi[2] * factor]  # fmt: skip
        windows.append(z0 * factor)
        profiles.append(_area_profile(slab, threshold))
    profiles = dask.compute(*profiles)
    margin = round(margin_um / h_um)
    out = {}
    for side, (lo, hi, _), start, profile in zip(SIDES_BY_X, legs, windows, profiles, strict=True):
        smoothing = KNEE_SMOOTHING_UM / h_um if knee_level == "edge" else 0.0
        valley = kernels.knee_cut(profile, level=knee_level, smoothing=smoothing)
        cut = lo[0] * factor if valley is None else start + valley + 1
        leg_bone = bone[:, lo[1] : hi[1], lo[2] : hi[2]]
        region, rlo, rhi = kernels.tibia_region(leg_bone, top=cut // factor)
        if rhi == (0, 0, 0):
            raise SegmentationError(
                f"{scan}: no bone below the knee cut at slice {cut} in the {side} leg; check "
                f"the threshold ({threshold}) and that slice 0 is the knee end of the scan"
            )
        origin = (0, lo[1] * factor, lo[2] * factor)  # the region's frame, in voxels
        box_lo = (cut, *(max(0, origin[a] + rlo[a] * factor - margin) for a in (1, 2)))
        box_hi = tuple(min(data.shape[a], origin[a] + rhi[a] * factor + margin) for a in range(3))
        out[side] = _crop(volume, data, region, origin, box_lo, box_hi, side, factor,
                          threshold=threshold, knee_slice=cut, margin_um=margin_um,
                          binning=factor, knee_search_um=knee_search_um,
                          knee_level=knee_level, scan=scan)  # fmt: skip
    return out


def _describe(volume: Any) -> str:
    """A name of the scan for messages, e.g. ``recon_ct/851/both/week0``."""
    if not isinstance(volume, xr.DataArray):
        raise TypeError(
            f"volume is a {type(volume).__name__}, not an xarray.DataArray; pass e.g. "
            "bm.open_store(store)['recon_ct/851/both/week0']['image']"
        )
    coords = {k: volume.coords[k].values.item() for k in ("mouse", "side", "week")
              if k in volume.coords and volume.coords[k].ndim == 0}  # fmt: skip
    if len(coords) == 3:
        return f"recon_ct/{coords['mouse']}/{coords['side']}/week{coords['week']}"
    return f"volume {volume.name!r}" if volume.name is not None else "volume"


def _check_volume(volume, threshold, binning, margin_um, knee_search_um):
    scan = _describe(volume)
    if volume.dims != ("slice", "y", "x"):
        raise ValueError(
            f"{scan}: volume.dims={volume.dims} must be ('slice', 'y', 'x'); transpose or "
            "rename first (slice 0 at the knee end)"
        )
    if volume.dtype != np.uint8:
        raise ValueError(
            f"{scan}: volume.dtype={volume.dtype} must be uint8 (NRecon-like grey); convert a "
            "float reconstruction with bm.to_uint8(volume) first"
        )
    if isinstance(threshold, bool) or not isinstance(threshold, int | np.integer):
        raise ValueError(f"threshold={threshold!r} must be an int grey level, e.g. 75")
    if not 1 <= threshold <= 255:
        raise ValueError(f"threshold={threshold} must be in 1..255 for uint8 volumes")
    if isinstance(binning, bool) or not isinstance(binning, int | np.integer) or binning < 1:
        raise ValueError(f"binning={binning!r} must be an int >= 1, e.g. 4")
    if not margin_um >= 0 or not knee_search_um > 0:
        raise ValueError(
            f"margin_um={margin_um!r} must be >= 0 and knee_search_um={knee_search_um!r} > 0"
        )
    h_um = None
    if "x" in volume.coords and volume.sizes["x"] > 1:
        x = np.asarray(volume.coords["x"].values, dtype=np.float64)
        if volume.coords["x"].attrs.get("units", "micrometer") in ("micrometer", "um", "µm"):
            h_um = float(np.median(np.diff(x)))
    return int(binning), h_um


def _as_dask(data: Any) -> da.Array:
    if isinstance(data, da.Array):
        return data
    chunks = ImageLayout.default_for("ct", data.shape, data.dtype, voxel_size_um=1.0).chunks
    return da.from_array(data, chunks=chunks)


def _aligned(chunks: tuple[int, ...], factor: int) -> tuple[int, ...]:
    """Chunks along one axis whose boundaries (but the end) are multiples of ``factor``."""
    total = sum(chunks)
    edges = sorted({min(total, math.ceil(e / factor) * factor) for e in np.cumsum(chunks)})
    return tuple(np.diff([0, *edges]).tolist())


def _binned_counts(data: da.Array, level: int, factor: int) -> np.ndarray:
    """The binned copy (bone voxels per bin), computed: one block per input chunk."""
    aligned = data.rechunk(tuple(_aligned(c, factor) for c in data.chunks))
    counts = aligned.map_blocks(
        kernels.bin_bone_counts,
        level=level,
        factor=factor,
        chunks=tuple(tuple(math.ceil(n / factor) for n in c) for c in aligned.chunks),
        dtype=kernels.counts_dtype(factor),
        meta=meta_like(aligned, kernels.counts_dtype(factor)),
        name="segment-bin-" + tokenize(aligned.name, level, factor),
    )
    return to_host(counts.compute())


def _two_legs(clusters, shape, factor, h_um, threshold, scan):
    if not clusters:
        raise SegmentationError(
            f"{scan}: no bone found (no voxel >= threshold={threshold}); is it a uint8 "
            "reconstruction windowed as NRecon does? Lower the threshold if the bone is dim"
        )
    largest = sorted(clusters, key=lambda c: c[2], reverse=True)
    legs = [c for c in largest[:2] if c[2] >= MIN_LEG_FRACTION * largest[0][2]]
    if len(legs) < 2:
        lo, hi, _ = largest[0]
        x_um = (lo[2] * factor * h_um, hi[2] * factor * h_um)
        raise SegmentationError(
            f"{scan}: only one leg found: the bone lies in one cluster at x = {x_um[0]:.0f} to "
            f"{x_um[1]:.0f} um of {shape[2] * factor * h_um:.0f} um; segment_tibiae needs a "
            "hindlimb scan with both legs, apart along x"
        )
    if len(clusters) > 2:
        logger.info("%s: %d bone clusters along x; kept the two largest", scan, len(clusters))
    return sorted(legs, key=lambda c: c[0][2])


def _area_block(block: np.ndarray, level: int) -> np.ndarray:
    return kernels.area_profile(block, level=level)[:, None, None]


def _area_profile(slab: da.Array, level: int) -> da.Array:
    """Lazy bone voxels per slice of a slab: one partial profile per chunk, then summed."""
    parts = slab.map_blocks(
        _area_block,
        level,
        chunks=(slab.chunks[0], (1,) * len(slab.chunks[1]), (1,) * len(slab.chunks[2])),
        dtype=np.int64,
        meta=meta_like(slab, np.int64),
        name="segment-profile-" + tokenize(slab.name, level),
    )
    return parts.sum(axis=(1, 2))


def _mask_block(block, region, level, factor, offset, block_info=None):
    location = block_info[0]["array-location"]
    start = tuple(o + loc[0] for o, loc in zip(offset, location, strict=True))
    return kernels.threshold_in_region(block, region, level=level, factor=factor, start=start)


def _crop(volume, data, region, origin, box_lo, box_hi, side, factor, *, scan, **parameters):
    """The lazy greyscale crop with its mask coordinate and attributes."""
    window = tuple(slice(a, b) for a, b in zip(box_lo, box_hi, strict=True))
    bins = []  # the bins under the crop (clipped to the region): what every mask task needs
    for a, b, o, n in zip(box_lo, box_hi, origin, region.shape, strict=True):
        first = min(n, max(0, (a - o) // factor))
        bins.append(slice(first, max(first, min(n, math.ceil((b - o) / factor)))))
    region = region[tuple(bins)]
    offset = tuple((a - o) - s.start * factor for a, o, s in zip(box_lo, origin, bins, strict=True))
    grey = data[window]
    mask = grey.map_blocks(
        _mask_block,
        dask.delayed(region),
        parameters["threshold"],
        factor,
        offset,
        dtype=bool,
        meta=meta_like(grey, bool),
        name="segment-threshold-" + tokenize(grey.name, region, parameters["threshold"], offset),
    )
    crop = volume.isel(slice=window[0], y=window[1], x=window[2]).copy(data=grey)
    provenance = {
        "package": "bonemet-dask",
        "version": __version__,
        "stage": "segment",
        "operation": "segment_tibiae",
        "input": scan,
        "parameters": {k: parameters[k] for k in ("threshold", "margin_um", "binning",
                                                  "knee_search_um", "knee_level")},
    }  # fmt: skip
    bonemet = {
        "side": side,
        "crop_box": {"lo": [int(v) for v in box_lo], "hi": [int(v) for v in box_hi]},
        "threshold": int(parameters["threshold"]),
        "knee_slice": int(parameters["knee_slice"]),
        "provenance": provenance,
    }
    crop = crop.assign_coords(mask=(crop.dims, mask), side=side).rename("image")
    crop.attrs = {"bonemet": bonemet}
    return crop
