"""RoI graph builders: find the proximal tibia-fibula junction, crop the RoI, remove the fibula.

The pixel work lives in :mod:`bonemet_dask.kernels.junction` and :mod:`bonemet_dask.kernels.roi`;
these functions choose chunks and wire the kernels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Final

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from bonemet_dask._backend import meta_like
from bonemet_dask.kernels.junction import (
    bin_bone_mask,
    edge_level,
    grey_histogram,
    search_junction,
)
from bonemet_dask.kernels.roi import fibula_mask, outside_tibia, remove_voxels
from bonemet_dask.ops.composite import _as_dataarray, voxel_size_um

__all__ = ["Junction", "crop_roi", "find_tf_junction", "volume_kind"]

logger = logging.getLogger(__name__)

JUNCTION_BIN_UM: Final = 30.0
"""Automatic in-plane binning of the junction search: the largest factor whose binned pixel
stays within this size (3x at BoneMet's 10 um; none at 40 um and coarser)."""
KINDS: Final = ("auto", "composite", "greyscale")
ROI_LENGTH_UM: Final = 300 * 10.0
"""BoneMet's RoI: 300 slices of its 10 um Regist-CT, a 3 mm length below the junction."""


@dataclass(frozen=True)
class Junction:
    """The proximal tibia-fibula junction found by :func:`find_tf_junction`.

    Attributes
    ----------
    slice : int
        Position along the volume's ``slice`` axis (0-based) of the first slice where the
        fibula is separate from the tibia.
    coordinate : float or int
        The ``slice`` coordinate's value there (the source index for a store's volume).
    confidence : float
        In [0, 1]; 1 for a clean junction
        (:func:`~bonemet_dask.kernels.junction.search_junction`).
    ambiguous : bool
        True when the rule's checks failed; ``reasons`` says which.
    reasons : tuple of str
        Why it is ambiguous (empty otherwise).
    binning : int
        In-plane binning of the searched mask.
    threshold : float
        Grey level of the bone mask the fibula was tracked in (the edge level, or the bone
        threshold when the fibula was not found at the edge level).
    track_slices : int
        Slices in which the fibula was found separate.
    """

    slice: int
    coordinate: float | int
    confidence: float
    ambiguous: bool
    reasons: tuple[str, ...]
    binning: int
    threshold: float
    track_slices: int

    def __index__(self) -> int:
        return self.slice

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (stored in roi_ct groups' attributes)."""
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out


def _slab_chunks(array: da.Array) -> da.Array:
    """Whole ``y``/``x`` per block, the slice chunking kept: what per-slice kernels need."""
    if all(len(c) == 1 for c in array.chunks[1:]):
        return array
    return array.rechunk({0: array.chunks[0], 1: -1, 2: -1})


def find_tf_junction(
    volume: xr.DataArray,
    threshold: float = 75,
    *,
    level: float | str = "edge",
    binning: int | None = None,
    search_fraction: float = 0.5,
    min_area_mm2: float = 0.005,
    max_gap: int = 2,
) -> Junction:
    """The proximal tibia-fibula junction slice of a registered tibia (computes a small graph).

    Rule: going distally from the knee, the fibula's cross-section is first joined to the
    tibia's (the fibular head touches the tibia); the junction is the first slice below that
    where the fibula is a separate connected component (8-connected, per slice) and stays so.
    See :mod:`bonemet_dask.kernels.junction` for the tracking that implements it.

    Parameters
    ----------
    volume : xarray.DataArray
        Registered tibia (``regist_ct``), dims ``(slice, y, x)``, slice 0 proximal (at the knee),
        greyscale.
    threshold : float, optional
        Bone is ``grey >= threshold``.
    level : float or "edge", optional
        Grey level at which the fibula is seen to separate.  ``"edge"`` (default): halfway
        between soft tissue and cortical bone, estimated from the volume
        (:func:`~bonemet_dask.kernels.junction.edge_level`), where a reconstruction's blur does
        not move an edge: at ``threshold`` the blur keeps the fibula joined to the tibia for a
        few slices after they part (4-5 slices on the 160 um synthetic scans, 1-2 at the
        edge level).  Falls back to ``threshold`` when no fibula is found at the edge level.
        A number is used as given.
    binning : int, optional
        In-plane binning of the bone mask (majority vote); default: the largest factor keeping
        the binned pixel within 30 um (:data:`JUNCTION_BIN_UM`).  ``slice`` is never binned.
    search_fraction : float, optional
        The proximal fraction of the slices searched (the junction lies in the proximal third
        of a tibia; the fibula must be seen running apart below it).
    min_area_mm2 : float, optional
        Cross-sections smaller than this are ignored (a fibula is ~0.07 mm^2).
    max_gap : int, optional
        Slices the fibula may vanish from the mask and still be followed.

    Returns
    -------
    Junction
        Usable as an int (``volume[junction:]``).

    Raises
    ------
    ValueError
        If the volume is not 3-D or ``search_fraction`` is outside (0, 1], or no fibula is found.
    """
    volume = _as_dataarray(volume, "volume")
    if volume.ndim != 3:
        raise ValueError(f"volume.dims={volume.dims}: pass one (slice, y, x) scan")
    if not 0 < search_fraction <= 1:
        raise ValueError(f"search_fraction={search_fraction!r} must be in (0, 1], e.g. 0.5")
    dz, dy, dx = voxel_size_um(volume)
    factor = int(binning) if binning is not None else max(1, int(JUNCTION_BIN_UM // max(dy, dx)))
    if factor < 1:
        raise ValueError(f"binning={binning!r} must be an int >= 1")
    n = volume.shape[0]
    stop = min(n, max(8, math.ceil(n * search_fraction)))
    data = volume.data if isinstance(volume.data, da.Array) else da.from_array(volume.data)
    data = _slab_chunks(data[:stop])
    pixel_mm2 = (dy * factor) * (dx * factor) * 1e-6
    options = {"min_area": max(1, round(min_area_mm2 / pixel_mm2)), "max_gap": max_gap,
               "window": max(3, round(100.0 / dz))}  # score 0.1 mm above and below  # fmt: skip
    if level == "edge":
        used = _edge_level(data, threshold)
    elif isinstance(level, str):
        raise ValueError(f"level={level!r} is not 'edge' or a grey level")
    else:
        used = float(level)
    found = None
    if used is not None and used != threshold:
        try:
            found = _search(data, used, factor, options)
        except ValueError:  # no fibula at the edge level (a thin one, blurred): the threshold
            logger.info("no fibula at the edge level %.0f; searching at %s", used, threshold)
    if found is None:
        used = float(threshold)
        found = _search(data, used, factor, options)
    j = found["slice"]
    coord = volume.coords.get(volume.dims[0])
    value = coord.values[j].item() if coord is not None else j
    result = Junction(
        slice=j,
        coordinate=value,
        confidence=found["confidence"],
        ambiguous=found["ambiguous"],
        reasons=tuple(found["reasons"]),
        binning=factor,
        threshold=used,
        track_slices=found["track_slices"],
    )
    if result.ambiguous:
        logger.warning("tibia-fibula junction at slice %d is ambiguous: %s", j, result.reasons)
    return result


def _edge_level(data: da.Array, threshold: float) -> float | None:
    """The volume's edge level (computes its grey histogram, one small task per chunk)."""
    counts = data.map_blocks(
        grey_histogram, dtype=np.int64, chunks=((1,) * data.numblocks[0], (1,) * data.numblocks[1],
                                                (256,) * data.numblocks[2]),
        meta=np.empty((0, 0, 0), np.int64), name="junction-histogram-" + tokenize(data.name),
    )  # fmt: skip
    (hist,) = dask.compute(counts.reshape(-1, 256).sum(axis=0))
    return edge_level(hist, floor=threshold)


def _search(data: da.Array, level: float, factor: int, options: dict) -> dict:
    """The junction search on the bone mask at ``level`` (computes the binned mask)."""
    h, w = (math.ceil(s / factor) for s in data.shape[1:])
    binned = da.map_blocks(
        bin_bone_mask, data, level=level, factor=factor, dtype=bool,
        chunks=(data.chunks[0], (h,), (w,)), meta=meta_like(data, bool),
    )  # fmt: skip
    (found,) = dask.compute(dask.delayed(search_junction, pure=True)(binned, **options))
    return found


def volume_kind(volume: xr.DataArray, kind: str = "auto") -> str:
    """``"composite"`` or ``"greyscale"``: ``kind`` checked, or guessed when ``"auto"``.

    A composite is recognised by ``attrs["kind"] == "composite"`` (what :func:`composite`
    sets) or the name ``composite``; anything else is greyscale.  Published RoI-CT stacks
    converted from PNGs are composites without the attribute: pass ``kind="composite"``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(map(repr, KINDS))}")
    if kind != "auto":
        return kind
    return (
        "composite"
        if volume.attrs.get("kind") == "composite" or volume.name == "composite"
        else "greyscale"
    )


def roi_slices(length_um: float, offset_um: float, slice_um: float) -> tuple[int, int]:
    """A RoI's length and offset in slices of ``slice_um`` micrometres: ``(count, offset)``."""
    if not length_um > 0 or not slice_um > 0:
        raise ValueError(f"length_um={length_um!r} and the slice size {slice_um!r} must be > 0")
    return max(1, round(length_um / slice_um)), round(offset_um / slice_um)


def crop_roi(
    volume: xr.DataArray,
    junction: int | Junction,
    *,
    length_um: float = ROI_LENGTH_UM,
    offset_um: float = 0.0,
    remove_fibula: bool = True,
    threshold: float = 75,
    kind: str = "auto",
    fill: float = 0,
) -> xr.DataArray:
    """Crop the RoI below the tibia-fibula junction and remove the fibula (lazy).

    Parameters
    ----------
    volume : xarray.DataArray
        Registered greyscale tibia or a composite, dims ``(slice, y, x)``, slice 0 proximal.
    junction : int or Junction
        Junction slice position (:func:`find_tf_junction`).
    length_um : float, optional
        Length of the RoI along the slices, micrometres (BoneMet: 300 slices of 10 um), turned
        into slices at the volume's slice size.
    offset_um : float, optional
        Start of the RoI below the junction, micrometres (negative: above it).
    remove_fibula : bool, optional
        Set the fibula's voxels to ``fill``; see :mod:`bonemet_dask.kernels.roi` for the rule.
    threshold : float, optional
        Bone threshold of a greyscale volume.
    kind : {"auto", "composite", "greyscale"}, optional
        How to find bone: composite codes > 0, or ``grey >= threshold``; see :func:`volume_kind`.
    fill : float, optional
        Value of removed voxels.

    Returns
    -------
    xarray.DataArray
        The RoI with the input's chunks along ``slice`` (whole ``y``/``x``), its coordinates,
        and ``attrs["roi"]``: junction, offset, count, first slice, whether the fibula was
        removed.

    Raises
    ------
    ValueError
        If the RoI does not fit below the junction: the message gives the lengths in slices
        and micrometres (never a silent shift, which would move the RoI towards the knee).
    """
    volume = _as_dataarray(volume, "volume")
    kind = volume_kind(volume, kind)
    n = volume.shape[0]
    j = int(junction)
    slice_um = voxel_size_um(volume)[0]
    count, offset = roi_slices(length_um, offset_um, slice_um)
    start = j + offset
    if start < 0 or start + count > n:
        below = max(0, n - start) * slice_um
        raise ValueError(
            f"a RoI of length_um={length_um:g} ({count} slices of {slice_um:g} um) from slice "
            f"{start} (junction {j} + offset {offset}) does not fit in the volume's {n} slices: "
            f"{below:g} um lie below its start; pass a shorter length_um or offset_um, or "
            "check the junction"
        )
    roi = volume.isel({volume.dims[0]: slice(start, start + count)})
    data = roi.data if isinstance(roi.data, da.Array) else da.from_array(roi.data)
    data = _slab_chunks(data)
    if remove_fibula:
        outside = da.map_blocks(
            outside_tibia, data, kind=kind, level=threshold, dtype=bool, meta=meta_like(data, bool)
        )
        whole = outside.rechunk(-1)  # 3-D chains: one task over the RoI's (small) bool mask
        fibula = da.map_blocks(
            fibula_mask, whole, min_voxels=1, dtype=bool, meta=meta_like(whole, bool)
        ).rechunk(data.chunks)
        data = da.map_blocks(
            remove_voxels,
            data,
            fibula,
            fill=fill,
            dtype=data.dtype,
            meta=meta_like(data, data.dtype),
        )
    attrs = dict(volume.attrs)
    attrs["roi"] = {
        "junction_slice": j,
        "junction": junction.to_dict() if isinstance(junction, Junction) else None,
        "offset": int(offset),
        "count": int(count),
        "length_um": float(length_um),
        "offset_um": float(offset_um),
        "first_slice": int(start),
        "remove_fibula": bool(remove_fibula),
        "kind": kind,
    }
    return roi.copy(data=data).assign_attrs(attrs)
